"""Who may submit what: grants, space write permission and fair use, in one check.

Submitting a task is a grant, not a given (AWX gives users the templates they are
granted, Zimfarm only lets editors schedule recipes). ``check_submission`` is the one
function every way of creating tasks calls (``POST /tasks`` today, template launches
later), so they cannot disagree. In order:

1. **Grant** (403). Root may do anything. A user needs a ``Grant`` (``control.farm.models``)
   held by itself or by a group it is an effective member of (nested groups count,
   ``control.registry.membership``) that names the task type (or ``*``), a queue the
   task may run on (or ``*``), and targets reaching far enough:

   * a task for any node of a queue runs on that queue (``default`` when none is given);
   * a task pinned to a node runs on that node whatever its queue, so the grant must name
     one of the queues the node serves (or ``*``; an unknown node is covered by ``*`` only);
   * a broadcast needs ``targets`` ``region`` (to a region) or ``all`` (to every node), on
     the queue it names; a broadcast naming no queue reaches every queue and needs ``*``.

   The refusal names the missing grant and the request root would make to create it.
2. **Space** (403). A task whose type writes into its space (``x-zonefarm-needs-space``:
   the pipeline's uploads) needs ``control.registry.access.WRITE_DATA`` there; any other
   task given a space needs to be a member (it is then visible to the space's members).
   The rule is the registry's (``access.submit_into_space``).
3. **Fair use** (429 with ``Retry-After``). A user may have at most ``user_max_queued``
   tasks waiting and submits nothing more while ``user_max_running`` of its tasks are
   assigned or running. One user's burst then cannot fill the queue for everyone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from control.core.config import Settings
from control.core.db import is_postgres
from control.core.errors import ApiError, forbidden
from control.farm import catalogue
from control.farm.models import ACTIVE, ANY, GRANT_TARGETS, Grant, Node, Task
from control.registry import access, membership
from control.registry.identity import Principal
from control.registry.models import User

GRANTS_PATH = "/api/v1/grants"
WAITING = ("queued", "lost")
RANK = {t: i for i, t in enumerate(GRANT_TARGETS)}


@dataclass(frozen=True)
class Submission:
    """What a caller asks to run, as far as permission goes."""

    task_type: str
    queue: str | None  # as submitted; None: "default", or every queue for a broadcast
    target_kind: str  # any | node | region | all
    target_value: str | None = None
    space: int | None = None
    count: int = 1  # tasks it queues: a broadcast queues one per node

    @property
    def needs(self) -> str:
        """The narrowest grant ``targets`` that covers this submission."""
        return self.target_kind if self.target_kind in ("region", "all") else "single"


def grants_for(user_id: int) -> list[Grant]:
    """Every grant that applies to the user: its own and its effective groups'."""
    groups = membership.user_groups(user_id)
    subject = Grant.user == user_id
    if groups:
        subject = subject | Grant.group.in_(sorted(groups))
    return list(Grant.select().where(subject).order_by(Grant.id))


def _queues(sub: Submission) -> tuple[list[str], str]:
    """The queues a grant may name to cover the submission, and how to say where it runs."""
    if sub.target_kind == "node":
        node = Node.get_or_none(Node.name == sub.target_value)
        if node is None:
            return [], f"on node {sub.target_value!r} (no such node: only a grant on every queue, '*', covers it)"
        queues = list(node.queues or [])
        return queues, f"on node {sub.target_value!r} (it serves queue(s) {', '.join(queues) or 'none'})"
    if sub.target_kind in ("region", "all") and sub.queue is None:
        return [], "on every queue (a broadcast naming no queue reaches them all)"
    queue = sub.queue or "default"
    return [queue], f"on queue {queue!r}"


def _refusal(user: User, sub: Submission, where: str, queues: list[str], best: str | None) -> ApiError:
    if sub.target_kind == "region":
        verb = f"broadcast task type {sub.task_type!r} to region {sub.target_value!r}"
    elif sub.target_kind == "all":
        verb = f"broadcast task type {sub.task_type!r} to every node"
    else:
        verb = f"run task type {sub.task_type!r}"
    suggestion = {"user": user.id, "task_type": sub.task_type, "queue": queues[0] if queues else ANY}
    if sub.needs != "single":
        suggestion["targets"] = sub.needs
    held = f"; the grants you hold for it allow {best!r} targets only" if best is not None else ""
    return forbidden(f"no grant to {verb} {where}{held} (ask root for POST {GRANTS_PATH} "
                     f"{json.dumps(suggestion)}, or to add you to a group holding such a grant)")


def require_grant(principal: Principal, sub: Submission) -> None:
    """403 naming the missing grant unless the caller is root or holds one that covers ``sub``."""
    if principal.is_root:
        return
    user = principal.user
    if user is None:
        raise forbidden(f"a {principal.kind} token may not submit tasks")
    queues, where = _queues(sub)
    best: str | None = None
    for grant in grants_for(user.id):
        if grant.task_type not in (ANY, sub.task_type):
            continue
        if grant.queue != ANY and grant.queue not in queues:
            continue
        if RANK.get(grant.targets, -1) >= RANK[sub.needs]:
            return
        best = grant.targets if best is None or RANK[grant.targets] > RANK[best] else best
    raise _refusal(user, sub, where, queues, best)


def require_space(principal: Principal, sub: Submission) -> None:
    """422 for an unknown space; 403 unless the caller may put this task in it (``access.submit_into_space``)."""
    if sub.space is None:
        return
    writer = f"task type {sub.task_type!r}" if catalogue.needs_space(sub.task_type) else None
    access.submit_into_space(principal, sub.space, writer)


def _too_many(settings: Settings, message: str) -> ApiError:
    return ApiError(429, f"{message}; retry in {settings.user_limit_retry_after}s",
                    headers={"Retry-After": str(settings.user_limit_retry_after)})


def require_fair_use(principal: Principal, settings: Settings, sub: Submission) -> None:
    """429 with Retry-After when the user is over its queued or running limit (root has none)."""
    if principal.is_root or principal.user is None:
        return
    uid = principal.user.id
    if is_postgres():  # a user's submissions count and insert one at a time
        User.select(User.id).where(User.id == uid).for_update().execute()
    mine = Task.select().where(Task.owner == uid, Task.target_kind.in_(("any", "node")))
    if settings.user_max_running:
        running = mine.where(Task.state.in_(ACTIVE)).count()
        if running >= settings.user_max_running:
            raise _too_many(settings, f"you have {running} task(s) assigned or running, the most one user may "
                                      f"have before submitting more (user_max_running = "
                                      f"{settings.user_max_running}): wait for some to finish")
    if settings.user_max_queued:
        waiting = mine.where(Task.state.in_(WAITING)).count()
        if waiting + sub.count > settings.user_max_queued:
            adds = f" and this submission adds {sub.count}" if sub.count > 1 else ""
            raise _too_many(settings, f"you have {waiting} task(s) waiting{adds}: over the {settings.user_max_queued} "
                                      "one user may have queued (user_max_queued); wait for some to start")


def check_submission(principal: Principal, settings: Settings, sub: Submission) -> None:
    """Grant, then space, then fair use: the one permission check of every task submission."""
    require_grant(principal, sub)
    require_space(principal, sub)
    require_fair_use(principal, settings, sub)


def check_batch(principal: Principal, settings: Settings, subs: list[Submission]) -> dict[int, ApiError]:
    """``check_submission`` for a batch: each item's refusal by index ({} when all may go).

    The same rules in the same order, decided once per distinct kind of item (a batch of a
    thousand alike asks the grant and space question once); fair use counts the batch's
    total at once (429 for the batch, raised). Refused items leave fair use unasked.
    """
    refusals: dict[int, ApiError] = {}
    decided: dict[Submission, ApiError | None] = {}
    for index, sub in enumerate(subs):
        key = replace(sub, count=1)
        if key not in decided:
            try:
                require_grant(principal, key)
                require_space(principal, key)
                decided[key] = None
            except ApiError as exc:
                decided[key] = exc
        if decided[key] is not None:
            refusals[index] = decided[key]  # type: ignore[assignment]
    if not refusals and subs:
        require_fair_use(principal, settings, replace(subs[0], count=sum(s.count for s in subs)))
    return refusals
