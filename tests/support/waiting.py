"""Bounded polling for tests of things that happen asynchronously (agents, dispatcher rounds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60, every: float = 0.5) -> Any:
    """Poll until `probe()` is truthy; fail naming `what` (and the last value) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(every)
