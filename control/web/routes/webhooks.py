"""Webhooks: the events a user wants POSTed to a URL, and the log of their deliveries.

A webhook belongs to the user who made it (or to the administrator); only they see or
change it (``access.webhook_access``), and it receives events only for tasks its owner may
see. The handlers parse, check access in ``control.registry.access`` and call
``control.farm.webhooks.service``; deliveries are sent by the API process's sender thread
(``control.farm.webhooks.delivery``), never by a request. docs/webhooks.md.
"""

from __future__ import annotations

from typing import Any

from control.core.models import iso
from control.core.schemas import Page
from control.farm import templates
from control.farm.webhooks import service
from control.farm.webhooks.models import DELIVERY_STATES, Webhook, WebhookDelivery
from control.farm.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut, WebhookUpdate
from control.registry.access import see_shared, webhook_access, webhook_holder, webhook_scope
from control.web.listing import page_query
from control.web.routing import Context, Query, Reply, route

TAG = "webhooks"


def webhook_fields(hook: Webhook) -> dict[str, Any]:
    return dict(id=hook.id, owner=hook.owner_id, url=hook.url, events=list(hook.events or []), scope=hook.scope,
                scope_id=hook.scope_id, description=hook.description, enabled=hook.enabled,
                secret_generation=hook.secret_generation, created_at=iso(hook.created_at),
                updated_at=iso(hook.updated_at))


def delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(id=d.id, webhook=d.webhook_id, event=d.event, status=d.status, attempts=d.attempts,
                       created_at=iso(d.created_at),
                       next_attempt_at=iso(d.next_attempt_at) if d.status == "pending" else None,
                       last_attempt_at=iso(d.last_attempt_at), last_status_code=d.last_status_code,
                       last_error=d.last_error or "", delivered_at=iso(d.delivered_at))


def _mine(ctx: Context, hook_id: int) -> Webhook:
    hook = service.get(hook_id)
    webhook_access(ctx.principal, hook.owner_id)
    return hook


def _check_scope(ctx: Context, scope: str, scope_id: int | None) -> None:
    """The scope's access rules; a template scope needs a template the caller sees (422 when none)."""
    webhook_scope(ctx.principal, scope, scope_id)
    if scope == "template" and scope_id is not None:
        template = templates.get(scope_id, "scope_id")
        see_shared(ctx.principal, template.owner, template.space_id, "template")


def _with_secret(ctx: Context, hook: Webhook) -> WebhookCreated:
    return WebhookCreated(**webhook_fields(hook), secret=service.secret(ctx.settings, hook))


@route("POST", "/webhooks", summary="Make a webhook; its signing secret is answered this once", tag=TAG,
       body=WebhookCreate, responses={201: WebhookCreated})
def create_webhook(ctx: Context) -> Reply:
    req: WebhookCreate = ctx.body
    owner = webhook_holder(ctx.principal)
    scope = req.scope or ("all" if ctx.principal.is_root else "own")
    _check_scope(ctx, scope, req.scope_id)
    hook = service.create(ctx.settings, owner, req.url, list(req.events), scope, req.scope_id, req.description,
                          req.enabled)
    return Reply(201, _with_secret(ctx, hook), {"Location": f"/api/v1/webhooks/{hook.id}"})


@route("GET", "/webhooks", summary="List webhooks (a user: its own; the administrator: all)", tag=TAG,
       query=page_query(), responses={200: Page[WebhookOut]})
def list_webhooks(ctx: Context) -> dict[str, Any]:
    owner = webhook_holder(ctx.principal)
    query = Webhook.select()
    if not ctx.principal.is_root:
        query = query.where(Webhook.owner == owner)
    total = query.count()
    rows = query.order_by(Webhook.id).limit(ctx.query["limit"]).offset(ctx.query["offset"])
    return {"items": [WebhookOut(**webhook_fields(h)) for h in rows], "total": total,
            "limit": ctx.query["limit"], "offset": ctx.query["offset"]}


@route("GET", "/webhooks/{id}", summary="Show a webhook (never its secret)", tag=TAG, responses={200: WebhookOut})
def show_webhook(ctx: Context, id: int) -> WebhookOut:
    return WebhookOut(**webhook_fields(_mine(ctx, id)))


@route("PATCH", "/webhooks/{id}", summary="Change a webhook's URL, events, scope, description or enabled",
       tag=TAG, body=WebhookUpdate, responses={200: WebhookOut})
def update_webhook(ctx: Context, id: int) -> WebhookOut:
    hook = _mine(ctx, id)
    changes = ctx.body.changes()
    if "scope" in changes or "scope_id" in changes:
        _check_scope(ctx, *service.scope_after(hook, changes))
    return WebhookOut(**webhook_fields(service.update(ctx.settings, hook, changes)))


@route("DELETE", "/webhooks/{id}", summary="Delete a webhook and its delivery log", tag=TAG, responses={204: None})
def delete_webhook(ctx: Context, id: int) -> None:
    _mine(ctx, id).delete_instance()


@route("POST", "/webhooks/{id}/secret", summary="Rotate a webhook's secret: the new one is answered this once, "
                                                 "the old one stops signing", tag=TAG,
       responses={200: WebhookCreated})
def rotate_webhook_secret(ctx: Context, id: int) -> WebhookCreated:
    return _with_secret(ctx, service.rotate(_mine(ctx, id)))


@route("POST", "/webhooks/{id}/test", summary="Queue a test delivery (event webhook.test); follow it in "
                                               "the delivery log", tag=TAG, responses={202: DeliveryOut})
def test_webhook(ctx: Context, id: int) -> Reply:
    delivery = service.test(_mine(ctx, id))
    return Reply(202, delivery_out(delivery),
                 {"Location": f"/api/v1/webhooks/{id}/deliveries?limit=1"})


DELIVERY_FILTERS = {**page_query(), "status": Query(str, None, "Deliveries in this status", enum=DELIVERY_STATES)}


@route("GET", "/webhooks/{id}/deliveries", summary="A webhook's delivery log, newest first: status, attempts, "
                                                    "last error", tag=TAG, query=DELIVERY_FILTERS,
       responses={200: Page[DeliveryOut]})
def list_deliveries(ctx: Context, id: int) -> dict[str, Any]:
    hook = _mine(ctx, id)
    query = WebhookDelivery.select().where(WebhookDelivery.webhook == hook.id)
    if ctx.query["status"]:
        query = query.where(WebhookDelivery.status == ctx.query["status"])
    total = query.count()
    rows = query.order_by(WebhookDelivery.id.desc()).limit(ctx.query["limit"]).offset(ctx.query["offset"])
    return {"items": [delivery_out(d) for d in rows], "total": total, "limit": ctx.query["limit"],
            "offset": ctx.query["offset"]}
