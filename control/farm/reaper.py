"""The reaper: what time alone decides. Run by every dispatcher each round; safe to race.

* A node silent for longer than ``node_lease`` becomes ``lost``; its active tasks are
  lost and requeued (or failed when their attempts are spent).
* An active task whose lease ran out (no callback for ``task_lease`` seconds) is lost and
  requeued the same way: the runner died, or its node did.
* Tasks to kill are returned to the dispatcher, which runs ``zonefarm_kill`` on their
  node: those with a cancel request and those past their timeout. Each kill is handed
  out once per ``task_lease`` (guarded UPDATE of ``kill_sent_at``), so two dispatchers
  do not both send it, and one that died before sending it is replaced a lease later.
* A kill the worker never confirms ends the task when the lease runs out anyway:
  ``cancelled`` or ``timed_out``, never requeued.
"""

from __future__ import annotations

import logging

import peewee

from control.core.config import Settings
from control.core.db import connection, write_transaction
from control.core.models import now
from control.farm import nodes, states
from control.farm.models import ACTIVE, Node, Task
from control.farm.webhooks import events as webhook_events

log = logging.getLogger("zonefarm.reaper")


def lost_nodes(settings: Settings, t: float) -> list[str]:
    """Mark silent nodes lost and lose their active tasks; returns the node names."""
    cutoff = t - settings.node_lease
    names = []
    for node in nodes.silent(cutoff):
        with write_transaction():  # the node's state and its webhook deliveries commit together
            if not nodes.mark_lost(node, cutoff):
                continue
            webhook_events.node_lost(node.name, f"silent for more than {settings.node_lease}s")
        names.append(node.name)
        log.warning("node %s lost: silent for more than %ss", node.name, settings.node_lease)
        for task in Task.select(Task.id).where(Task.node == node.id, Task.state.in_(ACTIVE)):
            states.lose(task.id, f"node {node.name} lost: silent for more than {settings.node_lease}s")
    return names


def expired_leases(settings: Settings, t: float) -> list[int]:
    """Lose active tasks whose runner stopped calling back; returns their ids."""
    ids = []
    query = Task.select(Task.id).where(Task.state.in_(ACTIVE), Task.lease_expires_at < t)
    for task in query:
        if states.lose(task.id, f"lease expired: no callback for {settings.task_lease}s"):
            ids.append(task.id)
    # A crash between "lost" and the requeue leaves tasks in lost: finish the move.
    for task in Task.select(Task.id).where(Task.state == "lost"):
        states.requeue(task.id, "found lost")
    return ids


def kill_list(settings: Settings, t: float, scope: peewee.Expression | None = None) -> list[Task]:
    """Active tasks to kill now, each with ``.node`` and ``.kill_reason``; only on the nodes of ``scope`` (a ``Node``
    condition: the dispatcher's regions) when given, so a dispatcher reaches no other region's hosts."""
    resend = t - max(settings.task_lease, 5)
    overdue = Task.started_at.is_null(False) & ((Task.started_at + Task.timeout) < t)
    query = (Task.select(Task, Node).join(Node)
             .where(Task.state.in_(ACTIVE), Task.cancel_requested | overdue,
                    Task.kill_sent_at.is_null() | (Task.kill_sent_at < resend))
             .order_by(Task.id))
    if scope is not None:
        query = query.where(scope)
    out = []
    for task in query:
        kill_reason = "cancelled" if task.cancel_requested else "timed_out"
        if not states.send_kill(task, t, kill_reason):
            continue  # another dispatcher took this kill
        task.kill_sent_at = t
        task.kill_reason = kill_reason
        out.append(task)
    return out


def reap(settings: Settings, scope: peewee.Expression | None = None) -> list[Task]:
    """One reaper pass; returns the tasks the caller must kill on their nodes (those of ``scope``, if given)."""
    t = now()
    with connection():
        lost_nodes(settings, t)
        expired_leases(settings, t)
        return kill_list(settings, t, scope)
