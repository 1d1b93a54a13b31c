"""Making, changing and removing webhooks; their secrets; a test delivery.

Access is checked by the routes (``control.registry.access``: ``webhook_holder``,
``webhook_access``, ``webhook_scope``); this module holds what is true of every webhook
whoever asks: a URL is http(s) to an address deliveries may reach (``control.core.egress``,
refused at once when the URL names an internal address literally, and again at send time
on the address a name resolves to), events are known ones, a scope names what it needs.

The secret is ``derive_key(root_secret, "webhook", id, generation)``: the one derivation
the nodes' keys use (``control.node.signing``). It is answered once, by the request that
makes (or rotates) it, and never stored or logged.
"""

from __future__ import annotations

from typing import Any

from control.core.config import Settings
from control.core.db import write_transaction
from control.core.egress import literal_refusal, parse_allow, split_url
from control.core.errors import conflict, invalid, not_found
from control.core.models import now
from control.farm.webhooks.models import TEST_EVENT, Webhook, WebhookDelivery
from control.node.signing import derive_key

MAX_PER_OWNER = 50


def secret(settings: Settings, hook: Webhook) -> str:
    """The webhook's signing secret (hex): derived, so the sender needs no stored copy."""
    return derive_key(settings.root_secret, "webhook", str(hook.id), hook.secret_generation)


def check_url(settings: Settings, url: str) -> str:
    """The URL, or a 422 naming what is wrong (the scheme, credentials, an internal address)."""
    try:
        _, host, _ = split_url(url)
    except ValueError as exc:
        raise invalid(f"url: {exc}") from None
    why = literal_refusal(parse_allow(settings.webhook_allow), host)
    if why is not None:
        raise invalid(f"url: {why}")
    return url


def check_scope(scope: str, scope_id: int | None) -> None:
    """``space`` and ``template`` name one (``scope_id``); ``own`` and ``all`` take none."""
    if scope in ("space", "template") and scope_id is None:
        raise invalid(f"scope_id: scope {scope} needs the id of the {scope}")
    if scope in ("own", "all") and scope_id is not None:
        raise invalid(f"scope_id: scope {scope} takes no id")


def scope_after(hook: Webhook, changes: dict[str, Any]) -> tuple[str, int | None]:
    """The scope (kind, id) an update leaves: a new kind given without an id drops the old id."""
    scope = changes.get("scope", hook.scope)
    return scope, changes.get("scope_id", hook.scope_id if "scope" not in changes else None)


def get(hook_id: int) -> Webhook:
    hook = Webhook.get_or_none(Webhook.id == hook_id)
    if hook is None:
        raise not_found("webhook", hook_id)
    return hook


def create(settings: Settings, owner: int | None, url: str, events: list[str], scope: str,
           scope_id: int | None, description: str, enabled: bool) -> Webhook:
    check_scope(scope, scope_id)
    mine = Webhook.owner.is_null() if owner is None else (Webhook.owner == owner)
    if Webhook.select().where(mine).count() >= MAX_PER_OWNER:
        raise conflict(f"at most {MAX_PER_OWNER} webhooks per user: delete one first (each event is "
                       "sent once per webhook)")
    return Webhook.create(owner=owner, url=check_url(settings, url), events=sorted(set(events)), scope=scope,
                          scope_id=scope_id, description=description, enabled=enabled)


def update(settings: Settings, hook: Webhook, changes: dict[str, Any]) -> Webhook:
    """Apply the fields given; the scope is checked as a whole (kind and id together)."""
    if "url" in changes:
        hook.url = check_url(settings, changes["url"])
    if "events" in changes:
        hook.events = sorted(set(changes["events"]))
    if "scope" in changes or "scope_id" in changes:
        hook.scope, hook.scope_id = scope_after(hook, changes)
        check_scope(hook.scope, hook.scope_id)
    for key in ("description", "enabled"):
        if key in changes:
            setattr(hook, key, changes[key])
    hook.updated_at = now()
    hook.save()
    return hook


def rotate(hook: Webhook) -> Webhook:
    """A new secret: the previous one stops signing at once (deliveries after this use the new one)."""
    Webhook.update(secret_generation=Webhook.secret_generation + 1, updated_at=now()).where(
        Webhook.id == hook.id).execute()
    return get(hook.id)


def test(hook: Webhook) -> WebhookDelivery:
    """Queue a ``webhook.test`` delivery now, whatever the webhook subscribes to."""
    if not hook.enabled:
        raise conflict(f"webhook {hook.id} is disabled; enable it first")
    t = now()
    return WebhookDelivery.create(webhook=hook.id, event=TEST_EVENT, created_at=t, next_attempt_at=t,
                                  payload={"test": True, "webhook": hook.id,
                                           "message": "a test delivery: the webhook works if it arrived"})


def prune_deliveries(cutoff: float, batch: int = 500) -> int:
    """Delete finished deliveries (delivered or failed) created before ``cutoff``; how many.

    Called by the pruner (``control.farm.retention``) with the finished tasks' retention: the
    delivery log lasts as long as the tasks it speaks of. Pending ones are never pruned.
    """
    total = 0
    while True:
        with write_transaction():
            ids = [r.id for r in WebhookDelivery.select(WebhookDelivery.id).where(
                WebhookDelivery.status != "pending", WebhookDelivery.created_at < cutoff).limit(batch)]
            if not ids:
                return total
            total += WebhookDelivery.delete().where(WebhookDelivery.id.in_(ids)).execute()
