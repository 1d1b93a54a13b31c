"""Request and response models of ``/api/v1/webhooks``. The secret appears in one model only,
``WebhookCreated``, answered by the request that makes it (creation, rotation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from control.core.schemas import MAX_ID, Input
from control.farm.webhooks.models import DELIVERY_STATES, EVENTS, SCOPES

Event = Literal[EVENTS]  # type: ignore[valid-type]
Scope = Literal[SCOPES]  # type: ignore[valid-type]
DeliveryState = Literal[DELIVERY_STATES]  # type: ignore[valid-type]
# http(s), a host, no spaces or control characters; the rest (credentials, the address) is the service's
URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#\x00-\x1f\x7f]+([/?#][^\s\x00-\x1f\x7f]*)?$"
TEXT = r"^[^\x00-\x1f\x7f]*$"
URL_DOC = ("Where deliveries are POSTed: http or https, no user name or password; an internal address "
           "(loopback, private, link-local...) only if the setting webhook_allow lists it")
EVENTS_DOC = ("What to deliver: task.succeeded, task.failed, task.timed_out, task.cancelled (a task ended so), "
              "node.lost, schedule.failed")
SCOPE_DOC = ("Which tasks: own (the caller's), space (scope_id: a space the caller is a member of), template "
             "(scope_id: tasks launched from it), all (administrator only). Events come only for tasks the "
             "owner may see")


class WebhookCreate(Input):
    url: str = Field(min_length=8, max_length=2048, pattern=URL, description=URL_DOC)
    events: list[Event] = Field(min_length=1, max_length=len(EVENTS), description=EVENTS_DOC)
    scope: Scope | None = Field(default=None, description=SCOPE_DOC + "; default own, for the "
                                                                      "administrator all")
    scope_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    description: str = Field(default="", max_length=200, pattern=TEXT)
    enabled: bool = True


class WebhookUpdate(Input):
    url: str | None = Field(default=None, min_length=8, max_length=2048, pattern=URL, description=URL_DOC)
    events: list[Event] | None = Field(default=None, min_length=1, max_length=len(EVENTS), description=EVENTS_DOC)
    scope: Scope | None = Field(default=None, description=SCOPE_DOC)
    scope_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    description: str | None = Field(default=None, max_length=200, pattern=TEXT)
    enabled: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The fields given (``scope_id: null`` given explicitly counts)."""
        return {k: getattr(self, k) for k in self.model_fields_set
                if getattr(self, k) is not None or k == "scope_id"}


class WebhookOut(BaseModel):
    id: int
    owner: int | None = Field(description="The user it belongs to; null: the administrator's")
    url: str
    events: list[str]
    scope: str
    scope_id: int | None
    description: str
    enabled: bool
    secret_generation: int = Field(description="Bumped by each rotation of the secret")
    created_at: str
    updated_at: str


class WebhookCreated(WebhookOut):
    secret: str = Field(description="Signs every delivery (docs/webhooks.md). Shown this once: keep it")


class DeliveryOut(BaseModel):
    id: int
    webhook: int
    event: str
    status: DeliveryState
    attempts: int
    created_at: str
    next_attempt_at: str | None = Field(description="When a pending delivery is tried next")
    last_attempt_at: str | None
    last_status_code: int | None = Field(description="The receiver's last HTTP status (null: no answer)")
    last_error: str = Field(description="Why the last failed attempt failed; kept after a later success")
    delivered_at: str | None
