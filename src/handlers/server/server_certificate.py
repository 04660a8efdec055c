"""The CA's own TLS server certificate (design §9.1): issuing it, installing it for the state in
force, handing a renewed one to gRPC before the next handshake, and renewing it at half its life.

What to issue is ``ca_core.server_certificate.issue_server_certificate``'s rule; this module keeps the
certificate a running CA serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

import grpc
from cryptography import x509

from ca_core.errors import CAError
from ca_core.server_certificate import ServerCertificate, issue_server_certificate

from ..grpc_service import audit_log
from ..metrics import Metrics
from .state import State

log = logging.getLogger("sentryca")

RENEW_RETRY = timedelta(minutes=1)  # after a failed renewal, the old certificate staying in use


class ServedCertificate:
    """The certificate to serve (``current``), the one gRPC has taken (``served``), why none
    could be issued (``error``) and when a failed renewal is retried.

    ``swap_lock`` is the CA's lock over the state in force and its certificate; ``in_force``
    returns that state (None while idle or starting)."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        metrics: Metrics,
        swap_lock: threading.Lock,
        in_force: Callable[[], State | None],
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._swap_lock = swap_lock
        self._in_force = in_force
        self._current: ServerCertificate | None = None
        self._served: ServerCertificate | None = None
        self._error: str | None = None
        self._retry_at: datetime | None = None

    @property
    def current(self) -> ServerCertificate | None:
        """The certificate to serve, or None (none issued yet, or the CA is idle)."""
        return self._current

    @property
    def error(self) -> str | None:
        """Why the last issue failed, or None."""
        return self._error

    def issue(self, state: State) -> ServerCertificate | None:
        """A new server certificate for ``state``, or None (error recorded and counted)."""
        try:
            cert = issue_server_certificate(state.signer, state.config, self._clock())
        except CAError as e:
            self._metrics.servercert_issue_failed.inc()
            self._error = f"cannot issue the server certificate: {e}"
            log.error("%s", self._error)
            return None
        self._error = None
        leaf = x509.load_pem_x509_certificate(cert.chain_pem)
        audit_log.info(
            "issued server certificate serial %x for %s (signed by the %s)",
            leaf.serial_number,
            state.signer.policy.ca_identity,
            cert.signed_by,
            extra={
                "event": "certificate_issued",
                "serial": f"{leaf.serial_number:x}",
                "spiffe_id": str(state.signer.policy.ca_identity),
                "validator": "self",
                "peer": None,
                "not_after": cert.not_after.isoformat(),
                "call_id": None,
            },
        )
        return cert

    def install(self, state: State, cert: ServerCertificate | None) -> bool:
        """Make ``cert`` the one served, unless ``state`` is no longer the state in force (a restart
        swapped it meanwhile) or there is no certificate. Returns whether it was installed."""
        with self._swap_lock:
            in_force = self._in_force()
            if cert is None or (in_force is not None and in_force is not state):
                return False
            self._current = cert
            return True

    def put(self, cert: ServerCertificate | None) -> None:
        """Make ``cert`` the one served (None: keep the current one). The caller holds the swap
        lock and is putting the state ``cert`` was issued for in force."""
        if cert is not None:
            self._current = cert

    def credentials(self, cert: ServerCertificate) -> grpc.ServerCredentials:
        """TLS credentials for a new gRPC server: ``cert`` first, then whatever is current when
        it changes (asked before every handshake)."""
        # gRPC documents that the fetcher may return None to keep the current certificate (see
        # grpc.dynamic_ssl_server_credentials); its stubs (types-grpcio) type the return as
        # ServerCertificateConfiguration only, hence the cast.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch_cert_config)
        return grpc.dynamic_ssl_server_credentials(_cert_config(cert), fetch)

    def mark_served(self, cert: ServerCertificate) -> None:
        """``cert`` is the one a gRPC server (being opened) serves."""
        self._served = cert

    def _fetch_cert_config(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before every TLS handshake: hand over a renewed certificate once.
        current = self._current
        if current is None or current is self._served:
            return None
        self._served = current
        return _cert_config(current)

    def renewal_due(self) -> datetime | None:
        """When the certificate is to be renewed (its ``renew_at``, or the retry after a failed
        renewal), or None without a certificate."""
        cert = self._current
        return self._retry_at or (cert.renew_at if cert else None)

    def renew_if_due(self, state: State, now: datetime) -> None:
        """Renew when due at ``now`` (counted in ``sentryca_servercert_renewed_total``); after a
        failure the current certificate stays in use and the renewal is retried a minute later."""
        due = self.renewal_due()
        if due is None or now < due:
            return
        cert = self.issue(state)
        if self.install(state, cert):
            self._metrics.servercert_renewed.inc()
        self._retry_at = now + RENEW_RETRY if cert is None else None

    def reset_retry(self) -> None:
        """Forget a pending retry (a start: the certificate was just issued)."""
        self._retry_at = None

    def clear(self) -> None:
        """The CA stopped: nothing is served any more (``error`` is kept for the operator)."""
        self._current = self._served = None


def _cert_config(cert: ServerCertificate) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(cert.key_pem, cert.chain_pem)])
