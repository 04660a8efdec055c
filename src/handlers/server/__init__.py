"""The long-lived CA process (design §8): :class:`CertificateAuthority` and what callers import
with it. One concern per module: ``lifecycle`` (start, stop, restart, the state in force),
``listeners`` (gRPC and HTTP, the hand-over), ``server_certificate`` (the CA's own TLS
certificate), ``upkeep`` (store poll, rotation steps, renewal, the watcher) and ``readiness``
(``/healthz``, the expiry check, the bundle's publication)."""

from __future__ import annotations

from .lifecycle import CertificateAuthority
from .listeners import DRAIN_GRACE, MAX_REQUEST_BYTES
from .state import AlreadyRunning, NotRunning, State, utc_now

__all__ = [
    "DRAIN_GRACE",
    "MAX_REQUEST_BYTES",
    "AlreadyRunning",
    "CertificateAuthority",
    "NotRunning",
    "State",
    "utc_now",
]
