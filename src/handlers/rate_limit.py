"""Rate limits for SignCertificate: token buckets per caller, the caller being a peer address (IP,
any port; design §3.1 step 0b) or a proven SPIFFE ID (step 3b, ``--identity-rate-limit``).

A caller may make ``rate`` requests per second on average and ``burst`` at once; past that its
requests get RESOURCE_EXHAUSTED (design §3 step 0 gives that code to requests the gRPC layer
refuses). The table of callers is bounded: the least recently seen callers are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_CALLERS = 10_000  # remembered peers; a forgotten peer starts again with a full bucket


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string: ``ipv4:10.0.0.1:5000`` → ``10.0.0.1``,
    ``ipv6:[::1]:5000`` → ``::1``; other forms (``unix:...``) are returned whole."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        return host.strip("[]") or rest
    return peer


class RateLimiter:
    """Token buckets per caller. rate: requests per second (0 or less: no limit); burst: the
    bucket size (default: one second's worth, at least 1); clock: monotonic seconds. Thread-safe."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller → (tokens, at)
        self.configure(rate, burst)

    def configure(self, rate: float, burst: float | None = None) -> None:
        """Change the limit (a restart with a new configuration); buckets start full again."""
        with self._lock:
            self.rate = rate
            self.burst = max(1.0, burst if burst is not None else rate)
            self._buckets.clear()

    def allow(self, caller: str) -> bool:
        """Take one token from ``caller``'s bucket; False when it is empty."""
        if self.rate <= 0:
            return True
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.pop(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[caller] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > MAX_CALLERS:
                self._buckets.popitem(last=False)
            return allowed
