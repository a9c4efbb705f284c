"""Waiting for an event itself instead of sleeping a guessed time.

A fixed sleep fails on a loaded machine (too short) or passes without testing anything (the
event never came, and nobody looked). A poll with a deadline waits exactly as long as needed,
and its deadline is generous because it is only reached when something is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PATIENCE_SECONDS = 30.0  # for a 2-core machine shared by several test runs


def wait_for(
    probe: Callable[[], T], what: str, seconds: float = PATIENCE_SECONDS, interval: float = 0.05
) -> T:
    """Call `probe` until it returns something truthy and return that; fail naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f} s for {what}; last seen: {value!r}")
        time.sleep(interval)
