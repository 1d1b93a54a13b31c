"""Dispatcher regions: which nodes a dispatcher claims for when several share a large site.

A round's Ansible job costs CPU on the controller for every host it touches (about 0.3 s
each), so one controller runs out of CPU as a site grows. Giving each dispatcher a set of
regions (the setting ``dispatch_regions``) splits the hosts between controllers:

* a dispatcher with regions announces them: one ``Housekeeping`` row per region,
  ``dispatch-region/<region>/<ident>``, whose ``last_run`` it renews every round (at most
  every third of ``dispatch_region_lease``);
* every dispatcher claims tasks for, and sends kills to, the nodes of its own regions and of
  every region that no *live* dispatcher announced (renewed within the lease). So a region
  nobody was given is served by all, and a region is left to the dispatchers that hold it;
* a dispatcher that stops withdraws its rows at once; one that dies loses them when the
  lease runs out, and the others take its regions over.

Correctness never depends on this: claims stay atomic across dispatchers (``claims``), so
two dispatchers that briefly disagree about a region (one starting, one dying) cannot run a
task twice; they only share that region's work for a moment. The reaper's database work
(lost nodes, expired leases) stays everyone's: it touches no host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import peewee

from control.core.db import write_transaction
from control.farm.models import Housekeeping, Node

PREFIX = "dispatch-region/"
FORGET_AFTER = 10  # leases after which a dead dispatcher's rows are deleted


def _name(region: str, ident: str) -> str:
    return f"{PREFIX}{region}/{ident}"


@dataclass(frozen=True)
class Scope:
    """The nodes one dispatcher serves: all but those of regions other live dispatchers hold."""

    mine: tuple[str, ...]
    others: frozenset[str]  # regions held by other live dispatchers and not by this one

    def clause(self) -> peewee.Expression | None:
        """A ``Node`` condition for the claim and the kills; None: every node."""
        return Node.region.not_in(sorted(self.others)) if self.others else None

    def serves(self, region: str) -> bool:
        return region not in self.others


def announce(ident: str, regions: Iterable[str], t: float, lease: float) -> None:
    """Renew this dispatcher's hold on ``regions`` (and forget long-dead dispatchers' rows)."""
    with write_transaction():
        for region in regions:
            (Housekeeping.insert(name=_name(region, ident), last_run=t)
             .on_conflict(conflict_target=[Housekeeping.name], update={Housekeeping.last_run: t})
             .execute())
        (Housekeeping.delete()
         .where(Housekeeping.name.startswith(PREFIX), Housekeeping.last_run < t - FORGET_AFTER * lease)
         .execute())


def withdraw(ident: str, regions: Iterable[str]) -> None:
    """A stopping dispatcher gives its regions back to the others at once."""
    names = [_name(region, ident) for region in regions]
    if names:
        with write_transaction():
            Housekeeping.delete().where(Housekeeping.name.in_(names)).execute()


def held(t: float, lease: float) -> dict[str, set[str]]:
    """Region -> the idents of the live dispatchers holding it."""
    out: dict[str, set[str]] = {}
    rows = (Housekeeping.select(Housekeeping.name)
            .where(Housekeeping.name.startswith(PREFIX), Housekeeping.last_run >= t - lease).tuples())
    for (name,) in rows:
        region, _, ident = name[len(PREFIX):].partition("/")
        out.setdefault(region, set()).add(ident)
    return out


def scope(ident: str, regions: Iterable[str], t: float, lease: float) -> Scope:
    """What this dispatcher serves now: its ``regions`` and every region no other live one holds."""
    mine = tuple(regions)
    others = {region for region, holders in held(t, lease).items() if holders - {ident}} - set(mine)
    return Scope(mine, frozenset(others))
