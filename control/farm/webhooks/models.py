"""The webhooks and their deliveries (a durable outbox: one row per event per webhook).

A webhook's secret is not stored: it is derived, ``HMAC-SHA256(root_secret,
"webhook:<id>:<generation>")`` (``control.node.signing.derive_key``, the derivation of the
nodes' keys), so the sender can sign with it and a leaked database leaks no secret.
Rotating it bumps ``secret_generation``.
"""

from __future__ import annotations

import peewee

from control.core.models import BaseModel, JSONField, now
from control.registry.models import User

# task.succeeded is the "task finished"; every task event is a task's terminal state.
TASK_EVENTS = ("task.succeeded", "task.failed", "task.timed_out", "task.cancelled")
EVENTS = (*TASK_EVENTS, "node.lost", "schedule.failed")
TEST_EVENT = "webhook.test"
# own: the owner's tasks; space: the tasks of a space; template: tasks launched from a
# template; all: everything (root's webhooks only).
SCOPES = ("own", "space", "template", "all")
DELIVERY_STATES = ("pending", "delivered", "failed")


class Webhook(BaseModel):
    # The user it belongs to; NULL: the administrator's (root has no user row). Deleting the
    # user deletes its webhooks: a webhook must never outlive the one allowed to see its events.
    owner = peewee.ForeignKeyField(User, null=True, on_delete="CASCADE", backref="webhooks")
    url = peewee.CharField(max_length=2048)
    events = JSONField(default=list)
    scope = peewee.CharField(max_length=10, default="own")
    scope_id = peewee.BigIntegerField(null=True)
    description = peewee.CharField(max_length=200, default="")
    enabled = peewee.BooleanField(default=True)
    secret_generation = peewee.IntegerField(default=0)
    created_at = peewee.DoubleField(default=now)
    updated_at = peewee.DoubleField(default=now)


class WebhookDelivery(BaseModel):
    """One event for one webhook, sent until delivered or out of attempts.

    ``payload`` is the event's data as it was when the change committed; the body sent is
    built from this row alone, so every attempt sends the same bytes. A sender claims a due
    row with a guarded UPDATE of ``claimed_until`` (a lease): several API processes share
    the work, and a sender that died mid-attempt leaves a row that is due again later.
    """

    webhook = peewee.ForeignKeyField(Webhook, backref="deliveries", on_delete="CASCADE")
    event = peewee.CharField(max_length=40)
    payload = JSONField(default=dict)
    status = peewee.CharField(max_length=10, default="pending")
    attempts = peewee.IntegerField(default=0)
    created_at = peewee.DoubleField(default=now)
    next_attempt_at = peewee.DoubleField(default=now)
    claimed_by = peewee.CharField(max_length=200, null=True)
    claimed_until = peewee.DoubleField(null=True)
    last_attempt_at = peewee.DoubleField(null=True)
    last_status_code = peewee.IntegerField(null=True)
    last_error = peewee.TextField(default="")
    delivered_at = peewee.DoubleField(null=True)

    class Meta:
        table_name = "webhook_delivery"
        indexes = ((("status", "next_attempt_at"), False), (("webhook", "id"), False))


WEBHOOK_MODELS = [Webhook, WebhookDelivery]
