"""Space usage and quotas: what each provider's agent measures in each space it supports.

The provider agent (``control.provider.agent``) walks each supported space's directory on an
interval and reports bytes and files for all of them in one request
(``POST /providers/{id}/usage``, the provider's token). Each report is kept on the support
(one row per space and provider) with the zone's time of the report, and a support whose
``used`` exceeds its ``size`` is *over quota*: the dispatcher picks no upload target there
and the upload step refuses to start (``control.farm.dispatcher.inventory``).

The feed gets a ``usage`` change only when a support's numbers or its over-quota state
change, so an idle space costs no feed entry per interval. The change names the space and
no provider scope, so the space's members and every provider supporting it see it.
"""

from __future__ import annotations

from typing import Any

from control.core.models import iso, now
from control.registry import feed
from control.registry.models import Provider, Space, Support


def is_over(used: int | None, size: int) -> bool:
    """Over quota: more bytes used than the support grants (unknown usage is not over)."""
    return used is not None and used > size


def usage_data(support: Support) -> dict[str, Any]:
    """The feed payload of a usage change: enough for a reader to act without another request."""
    return {"space": support.space_id, "provider": support.provider_id, "size": support.size,
            "used": support.used, "files": support.files, "measured_at": iso(support.measured_at),
            "over_quota": support.over_quota}


def record_change(support: Support) -> None:
    feed.record("usage", support.id, "update", usage_data(support), space_id=support.space_id)


def report(provider: Provider, entries: list[tuple[int, int, int]]) -> tuple[int, list[int], list[int]]:
    """Store one agent report of ``(space id, bytes, files)``.

    Returns how many supports changed, the spaces over quota now and the spaces ignored
    (reported but not supported: a revocation raced the measurement; not an error).
    """
    supports = {s.space_id: s for s in Support.select(Support, Space).join(Space)
                .where(Support.provider == provider.id)}
    t = now()
    changed, over, ignored = 0, [], []
    for space_id, used, files in entries:
        support = supports.get(space_id)
        if support is None:
            ignored.append(space_id)
            continue
        state = is_over(used, support.size)
        if (support.used, support.files, support.over_quota) != (used, files, state):
            changed += 1
            support.used, support.files, support.over_quota = used, files, state
            support.measured_at = t
            support.save()
            record_change(support)
        else:
            Support.update(measured_at=t).where(Support.id == support.id).execute()
        if state:
            over.append(space_id)
    return changed, sorted(over), sorted(set(ignored))


def resized(support: Support) -> None:
    """A new size may put the space over or back under quota at once (before the next report)."""
    state = is_over(support.used, support.size)
    if state != support.over_quota:
        support.over_quota = state
        support.save()
        record_change(support)
