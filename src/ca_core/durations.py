"""Go duration syntax (``time.ParseDuration``): ``24h``, ``15m``, ``90s``, ``1h30m``, ``1.5h``, ``300ms``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS_US = {
    "ns": 0.001,
    "us": 1,
    "µs": 1,
    "μs": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration string into a timedelta (microsecond resolution).

    Accepts an optional sign, then one or more ``<number><unit>`` parts with units ns, us/µs,
    ms, s, m, h; ``0`` alone is zero. Raises ValueError with the offending text otherwise
    (e.g. ``24``, ``1d``, ``h``).
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    sign = 1
    if s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return timedelta(0)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(
                f"invalid duration {text!r}: use Go syntax such as 24h, 15m, 90s or 1h30m "
                "(units ns, us, ms, s, m, h)"
            )
        total += float(m.group(1)) * _UNITS_US[m.group(2)]
        pos = m.end()
    try:
        return timedelta(microseconds=round(sign * total))
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None


def format_duration(delta: timedelta) -> str:
    """A timedelta in Go syntax, e.g. ``24h0m0s``, ``15m0s``, ``1.5s``."""
    us = round(delta.total_seconds() * 1_000_000)
    sign = "-" if us < 0 else ""
    us = abs(us)
    hours, rem = divmod(us, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    seconds = rem / 1_000_000
    sec = f"{seconds:.6f}".rstrip("0").rstrip(".")
    if hours:
        return f"{sign}{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{sign}{minutes}m{sec}s"
    return f"{sign}{sec}s"
