"""Queue statistics: how deep each queue is, what runs from it and which nodes serve it.

A queue exists as long as a node serves it or a task still waits in or runs from it, so
a queue nobody serves (tasks stuck behind it) shows up with zero nodes. Broadcast
parents are left out: they summarise their children, which are the tasks that run.
Two grouped queries over the ``(state, queue, ...)`` index and one over the nodes,
whatever the number of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peewee

from control.core.models import now
from control.farm.models import ACTIVE, BROADCAST_KINDS, Node, Task


@dataclass
class QueueStats:
    name: str
    queued: int = 0
    running: int = 0
    oldest_queued_at: float | None = None
    nodes: list[str] = field(default_factory=list)
    nodes_available: int = 0

    @property
    def oldest_queued_age(self) -> float | None:
        return None if self.oldest_queued_at is None else max(0.0, now() - self.oldest_queued_at)


def queue_stats() -> list[QueueStats]:
    """Every queue with waiting or running tasks or a node serving it, by name."""
    stats: dict[str, QueueStats] = {}

    def of(name: str) -> QueueStats:
        return stats.setdefault(name, QueueStats(name))

    rows = (Task.select(Task.queue, Task.state, peewee.fn.COUNT(Task.id).alias("n"),
                        peewee.fn.MIN(Task.created_at).alias("oldest"))
            .where(Task.state.in_(("queued", *ACTIVE)), Task.target_kind.not_in(BROADCAST_KINDS))
            .group_by(Task.queue, Task.state).tuples())
    for queue, state, count, oldest in rows:
        entry = of(queue)
        if state == "queued":
            entry.queued += count
            entry.oldest_queued_at = oldest
        else:
            entry.running += count
    for node in Node.select().where(Node.state != "deregistered").order_by(Node.name):
        for queue in node.queues or []:
            entry = of(queue)
            entry.nodes.append(node.name)
            if node.state == "online" and not node.cordoned:
                entry.nodes_available += 1
    return [stats[name] for name in sorted(stats)]
