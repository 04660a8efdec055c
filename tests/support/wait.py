"""Waiting until something is true: one poll loop for every test (``wait_until``), and reading a
process's output until a line says what is awaited (``wait_for_line``, built on it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = 60.0,
    interval: float = 0.05,
) -> T:
    """Call ``condition()`` every ``interval`` seconds until it returns a truthy value; return that
    value. After ``timeout`` seconds, AssertionError naming ``what`` and the timeout; ``what`` may
    be a callable, asked at that moment (to show the last state seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what() if callable(what) else what}")
        time.sleep(interval)


def wait_for_line(
    stream: IO[str],
    match: Callable[[str], T],
    what: str,
    timeout: float = 60.0,
    seen: list[str] | None = None,
) -> T:
    """Read ``stream`` a line at a time until ``match(line)`` is truthy; return that value. Each
    line read is appended to ``seen``. The end of the stream fails at once, the timeout (checked
    between lines: a read blocks) as in :func:`wait_until`; both name ``what`` and show the lines."""
    lines = [] if seen is None else seen

    def next_line() -> T:
        line = stream.readline()
        if not line:
            raise AssertionError(f"the output ended before {what}:\n" + "".join(lines))
        lines.append(line)
        return match(line)

    return wait_until(next_line, lambda: f"{what}:\n" + "".join(lines), timeout=timeout, interval=0)
