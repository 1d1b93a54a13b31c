"""Caps on waiting long-polls (``GET /changes?timeout=``), per API process.

A waiting poll holds a worker thread: 40 of them from one user once made ``/healthz`` wait
11 s behind them, and node callbacks with it (tasks went lost while their runners were
alive). So a poll takes a slot before it waits: at most ``Settings.long_poll_slots`` wait at
once per process (never more than half of ``api_threads``: the other threads serve health
checks, node callbacks and every other request), and at most
``changes_max_polls_per_principal`` of them belong to one caller. A poll that would wait past
either cap is answered at once with 429 and Retry-After. A poll that finds changes, or asks
for no wait, needs no slot and is never refused.

The counts are per process (each gunicorn worker has its own), so one caller holds at most
``api_workers`` times its cap on one host.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from control.core.errors import too_many

RETRY_FULL = 2       # seconds: slots free up as other polls end
RETRY_PRINCIPAL = 5  # seconds: this caller's own polls are still waiting


class PollSlots:
    """Waiting long-polls of this process, in total and per caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._by_caller: dict[str, int] = {}

    @contextmanager
    def hold(self, caller: str, total: int, per_caller: int) -> Iterator[None]:
        with self._lock:
            mine = self._by_caller.get(caller, 0)
            if mine >= per_caller:
                raise too_many(f"{caller} already holds {mine} long-polls (the most one caller may); "
                               "wait for them or poll without timeout", RETRY_PRINCIPAL)
            if self._total >= total:
                raise too_many("the server is holding as many long-polls as it may; retry shortly",
                               RETRY_FULL)
            self._total += 1
            self._by_caller[caller] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                self._total -= 1
                left = self._by_caller[caller] - 1
                if left:
                    self._by_caller[caller] = left
                else:
                    del self._by_caller[caller]

    def held(self) -> int:
        with self._lock:
            return self._total


SLOTS = PollSlots()
