"""Schedules: a template launched by itself, on a cron expression or an interval (``/api/v1/schedules``).

**Who fires them.** The dispatchers: every loop of ``control.farm.dispatcher.loop`` calls
``fire_due``. A due schedule is fired by the dispatcher whose guarded UPDATE moves its
``next_run`` on (compare-and-set: ``WHERE id = ? AND next_run = <the due time it read>``),
in the same transaction as the task it launches. On PostgreSQL a second dispatcher's
UPDATE waits for the first's row lock, then matches nothing; SQLite has one writer. So
each due time fires once however many dispatchers run, and a dispatcher killed halfway
rolls its firing back for another to make.

**Misfires.** The next due time is the first one after *now*, not after the one just
fired: after downtime (no dispatcher, or the schedule disabled) a schedule fires once, not
once per missed time. An interval schedule keeps its phase (due times stay
``first + k * interval``).

**What a firing does.** It launches the template's current version as the schedule's
owner (``control.farm.templates.launch``: the owner's grants, space and fair use, checked
now). With ``skip_if_running`` (the default: the same recipe never runs twice at once)
it skips while a task of the template is still queued or running. A firing that fails
(the owner lost a grant, the template became unlaunchable) is recorded on the schedule
(``last_outcome`` ``failed``, ``last_error``) and as a change-feed entry (entity
``schedule``, op ``update``, ``data.event`` ``schedule_failed``, with the error) that the
audit trail shows and the owner (or the template's space) reads, and as a ``schedule.failed``
webhook event (``control.farm.webhooks.events.schedule_failed``, in the same transaction).
"""

from __future__ import annotations

import logging
import math
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from croniter import CroniterError, croniter
from pydantic import BaseModel, Field, model_validator

from control.core.config import Settings
from control.core.db import database, write_transaction
from control.core.errors import ApiError, invalid, not_found
from control.core.models import iso, now
from control.core.schemas import MAX_ID, Input, exactly_one
from control.farm import templates
from control.farm.models import TERMINAL, Schedule, Task, Template
from control.farm.webhooks import events as webhook_events
from control.registry import access, feed
from control.registry.identity import Principal
from control.registry.models import User

log = logging.getLogger("zonefarm.schedules")
MAX_INTERVAL = 366 * 86400
FAILED_EVENT = "schedule_failed"  # the change-feed event of a firing that failed (data["event"])
FIRE_LIMIT = 100  # schedules fired per call at most; the rest wait for the next loop


class ScheduleCreate(Input):
    template: int = Field(ge=1, le=MAX_ID)
    cron: str | None = Field(default=None, min_length=1, max_length=200,
                             description="A cron expression (5 fields, e.g. '0 3 * * *'), in `timezone`")
    interval: int | None = Field(default=None, ge=1, le=MAX_INTERVAL, description="Or every this many seconds")
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name, e.g. Europe/Paris")
    enabled: bool = True
    skip_if_running: bool = Field(default=True, description=(
        "Skip a due time while a task of the template is still queued or running"))

    _one_timing = exactly_one("cron", "interval")


class ScheduleUpdate(Input):
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    interval: int | None = Field(default=None, ge=1, le=MAX_INTERVAL)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool | None = None
    skip_if_running: bool | None = None

    @model_validator(mode="after")
    def _at_most_one_timing(self) -> ScheduleUpdate:
        if self.cron is not None and self.interval is not None:
            raise ValueError('give at most one of "cron" and "interval"')
        return self


class ScheduleOut(BaseModel):
    id: int
    template: int
    owner: int | None = Field(description="Whom its tasks are submitted as (null: the administrator)")
    cron: str | None
    interval: int | None
    timezone: str
    enabled: bool
    skip_if_running: bool
    next_run: str | None = Field(description="The next due time (null while disabled)")
    last_run: str | None = Field(description="When it last fired")
    last_task: int | None = Field(description="The task its last launch made")
    last_outcome: str = Field(description="launched, skipped or failed (empty: never fired)")
    last_error: str
    created_at: str


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timing(cron: str | None, timezone: str) -> None:
    """422 naming the field for a cron expression croniter refuses or an unknown time zone."""
    if timezone not in _zones():
        raise invalid(f"timezone: unknown time zone {timezone!r} (an IANA name such as UTC or Europe/Paris)")
    if cron is None:
        return
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise invalid(f"cron: {cron!r} is not a cron expression of 5 fields (minute hour day month weekday)")
    try:
        croniter(cron, now()).get_next(float)
    except CroniterError:  # valid fields that never match, e.g. 30 February
        raise invalid(f"cron: {cron!r} never comes (no date matches it)") from None


def next_after(row: Schedule, t: float) -> float:
    """The first due time strictly after ``t`` (a misfire is not caught up: see the module's doc)."""
    if row.interval:
        base = row.next_run if row.next_run is not None else t
        steps = max(1, math.floor((t - base) / row.interval) + 1)
        return base + steps * row.interval
    tz = zoneinfo.ZoneInfo(row.timezone)
    return float(croniter(row.cron, datetime.fromtimestamp(t, tz)).get_next(float))


def get(schedule_id: int) -> Schedule:
    row = Schedule.select(Schedule, Template).join(Template).where(Schedule.id == schedule_id).first()
    if row is None:
        raise not_found("schedule", schedule_id)
    return row


def create(req: ScheduleCreate, template: Template, *, owner: int | None) -> Schedule:
    """A new schedule of ``template`` firing as ``owner``; its first due time after now."""
    check_timing(req.cron, req.timezone)
    row = Schedule(template=template, owner=owner, cron=req.cron, interval=req.interval, timezone=req.timezone,
                   enabled=req.enabled, skip_if_running=req.skip_if_running)
    row.next_run = next_after(row, now()) if req.enabled else None
    row.save()
    return row


def update(row: Schedule, req: ScheduleUpdate) -> Schedule:
    """Change the timing or switches; a new timing (or enabling) starts from now."""
    given = req.model_dump(exclude_unset=True)
    timing = {"cron", "interval", "timezone"} & set(given) or (given.get("enabled") and not row.enabled)
    if "cron" in given and given["cron"] is not None:
        row.cron, row.interval = given["cron"], None
    if "interval" in given and given["interval"] is not None:
        row.interval, row.cron = given["interval"], None
    if given.get("timezone") is not None:
        row.timezone = given["timezone"]
    for key in ("enabled", "skip_if_running"):
        if given.get(key) is not None:
            setattr(row, key, given[key])
    check_timing(row.cron, row.timezone)
    if not row.enabled:
        row.next_run = None
    elif timing or row.next_run is None:
        row.next_run = None
        row.next_run = next_after(row, now())
    row.save()
    return get(row.id)


def schedule_out(row: Schedule) -> ScheduleOut:
    return ScheduleOut(id=row.id, template=row.template_id, owner=row.owner, cron=row.cron, interval=row.interval,
                       timezone=row.timezone, enabled=row.enabled, skip_if_running=row.skip_if_running,
                       next_run=iso(row.next_run), last_run=iso(row.last_run), last_task=row.last_task,
                       last_outcome=row.last_outcome, last_error=row.last_error, created_at=iso(row.created_at) or "")


# --- firing (the dispatchers) --------------------------------------------------------------


@dataclass(frozen=True)
class Fired:
    schedule: int
    due: float
    outcome: str  # launched | skipped | failed
    task: int | None = None
    error: str = ""


def _owner(row: Schedule) -> Principal:
    """Whom the schedule's tasks are submitted as, as it is now (403 when it is gone or inactive)."""
    if row.owner is None:
        return Principal("root")
    user = User.get_or_none(User.id == row.owner)
    if user is None or not user.active:
        raise ApiError(403, f"the schedule's owner, user {row.owner}, is gone or inactive")
    return Principal("user", user=user)


def _running(template_id: int) -> int | None:
    """A task of the template still queued, assigned, running or lost (a broadcast's parent counts)."""
    return (Task.select(Task.id).where(Task.template_id == template_id, Task.state.not_in(TERMINAL),
                                       Task.parent.is_null())
            .order_by(Task.id).limit(1).scalar())


def _fire(row: Schedule, due: float, t: float, settings: Settings) -> Fired:
    """Launch (or skip) for one due time this dispatcher has claimed, inside its transaction."""
    template = Template.get_by_id(row.template_id)
    if row.skip_if_running:
        busy = _running(template.id)
        if busy is not None:
            return Fired(row.id, due, "skipped", error=f"skipped: task {busy} of template {template.id} "
                                                       "is still queued or running")
    try:
        principal = _owner(row)
        access.see_shared(principal, template.owner, template.space_id, "template")
        with database.atomic():  # a refusal leaves nothing of the launch behind
            task_id = templates.launch(template, None, principal=principal, settings=settings,
                                       schedule_id=row.id, due=due)
    except ApiError as exc:
        feed.record("schedule", row.id, "update", {"event": FAILED_EVENT, "template": template.id, "due": iso(due),
                                                    "status": exc.status, "error": exc.message},
                    space_id=template.space_id, user_id=row.owner)
        webhook_events.schedule_failed(row.id, template.id, row.owner, template.space_id, exc.message)  # webhooks
        return Fired(row.id, due, "failed", error=exc.message)
    return Fired(row.id, due, "launched", task_id)


def fire_one(schedule_id: int, due: float, settings: Settings, t: float | None = None) -> Fired | None:
    """Fire one due time if nobody has: the compare-and-set on ``next_run``; None when another did."""
    t = now() if t is None else t
    with write_transaction():
        row = Schedule.get_or_none(Schedule.id == schedule_id)
        if row is None or not row.enabled or row.next_run != due:
            return None
        following = next_after(row, t)
        won = (Schedule.update(next_run=following, last_run=t)
               .where(Schedule.id == schedule_id, Schedule.next_run == due, Schedule.enabled == True)  # noqa: E712
               .execute())
        if not won:
            return None
        fired = _fire(row, due, t, settings)
        values: dict[Any, Any] = {Schedule.last_outcome: fired.outcome, Schedule.last_error: fired.error}
        if fired.task is not None:
            values[Schedule.last_task] = fired.task
        Schedule.update(values).where(Schedule.id == schedule_id).execute()
    return fired


def fire_due(settings: Settings, t: float | None = None) -> list[Fired]:
    """Fire every enabled schedule due at ``t`` (default now) that no other dispatcher fired first."""
    t = now() if t is None else t
    due = list(Schedule.select(Schedule.id, Schedule.next_run)
               .where(Schedule.enabled == True, Schedule.next_run <= t)  # noqa: E712
               .order_by(Schedule.next_run).limit(FIRE_LIMIT).tuples())
    fired = []
    for schedule_id, due_at in due:
        try:
            done = fire_one(schedule_id, due_at, settings, t)
        except Exception:  # its transaction rolled back; the others still fire, it is tried next loop
            log.exception("schedule %d (due %s) could not fire", schedule_id, iso(due_at))
            continue
        if done is not None:
            if done.outcome == "failed":
                log.warning("schedule %d (due %s) failed: %s", schedule_id, iso(due_at), done.error)
            fired.append(done)
    return fired
