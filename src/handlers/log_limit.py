"""Log lines an unauthenticated peer can cause are bounded (design §9.4).

Lines about refused or failed calls go through :data:`LIMIT`: a global token bucket and one per
peer (the buckets of handlers.rate_limit). A line past either bucket is dropped and counted
(``sentryca_log_lines_suppressed_total``); the next line let through, once a summary interval
has passed, is preceded by one line saying how many were dropped. Caller-supplied values reach a
line only through :func:`sanitised`: escaped and cut short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .rate_limit import RateLimiter

log = logging.getLogger("sentryca.log_limit")

GLOBAL_RATE, GLOBAL_BURST = 20.0, 100.0  # lines per second, all peers together
PEER_RATE, PEER_BURST = 2.0, 10.0  # lines per second, one peer
SUMMARY_INTERVAL = 60.0  # seconds between "suppressed" summary lines, at most one each
MAX_LINE = 1000  # characters of a line this module bounds (messages, fields)
SHOWN = 64  # characters of a caller's value quoted in a line


def sanitised(value: str | bytes, limit: int = SHOWN) -> str:
    """``value`` as printable ASCII (``\\xff``, ``\\n`` … escaped), at most ``limit`` characters of
    it, and its length when cut: ``'abc…' (8192 bytes)``."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    shown = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    if len(text) <= limit:
        return shown
    unit = "bytes" if isinstance(value, bytes) else "chars"
    return f"{shown}… ({len(text)} {unit})"


class LogLimiter:
    """Whether a line about a peer may be written now; counts those that may not. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._global = RateLimiter(GLOBAL_RATE, GLOBAL_BURST, clock=clock)
        self._peers = RateLimiter(PEER_RATE, PEER_BURST, clock=clock)
        self._lock = threading.Lock()
        self._pending = 0  # suppressed since the last summary
        self._summary_at = clock()
        self.on_suppressed: Callable[[], None] = lambda: None  # e.g. a metric's inc

    def allow(self, peer: str) -> bool:
        """Take a token from ``peer``'s bucket and the global one; False (and counted) when
        either is empty. May first write the summary of lines suppressed."""
        allowed = self._peers.allow(peer) and self._global.allow("*")
        with self._lock:
            if not allowed:
                self._pending += 1
            now = self._clock()
            pending = self._pending if now - self._summary_at >= SUMMARY_INTERVAL else 0
            if pending or not self._pending:
                self._summary_at = now
            self._pending -= pending
        if not allowed:
            self.on_suppressed()
        if pending:
            log.warning(
                "%d log lines about refused or failed calls suppressed (rate limit, design §9.4)",
                pending,
                extra={"event": "log_lines_suppressed", "suppressed": pending},
            )
        return allowed


LIMIT = LogLimiter()


class GrpcCoreLines(logging.Filter):
    """On grpcio's Python logger ``grpc._cython.cygrpc``: its "Invalid encoding on b'…'" line (a
    peer's header that is not UTF-8, with a traceback and the whole value) becomes a short line
    without the traceback, under :data:`LIMIT` (the peer is not known there: one bucket for all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"):
            value = record.args[0] if isinstance(record.args, tuple) and record.args else b""
            if not LIMIT.allow("grpc-core"):
                return False
            record.msg = "a call's metadata value is not UTF-8 (read as Latin-1): %s"
            record.args = (sanitised(value if isinstance(value, bytes | str) else repr(value)),)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Put :class:`GrpcCoreLines` on grpcio's logger (once)."""
    logger = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, GrpcCoreLines) for f in logger.filters):
        logger.addFilter(GrpcCoreLines())
