"""The long-lived CA process: ``CertificateAuthority`` with the lifecycle of SPEC §8.

Created idle; ``start(config)`` loads (or creates) the trust bundle, issues the CA's own TLS
server certificate, serves gRPC (TLS), ``/healthz``/``/livez`` and ``/metrics``, and runs the
expiry watcher; ``stop()`` shuts all of it down and leaves the CA idle; ``restart(config)``
swaps bundle, validators and settings in place when the listeners are unchanged (no dropped
calls, no refused connections); a listener moving to another port is opened first, then the old
one drains; only a listener changing on the port it is bound to is stopped, then started. The
background upkeep (``maintain``) also takes the rotation steps due (``ca_core.rotation``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.stores import BundleStore, StoredBundle
from ca_core import rotation
from ca_core.bundle import ROTATION_STATE, certificates_pem, check_trust_continuity, fingerprint
from ca_core.certs import check_issuer_valid, sign_workload
from ca_core.config import Config
from ca_core.errors import CAError, FailedPrecondition, Unavailable
from ca_core.expiry import ExpiryFinding, expiry_report
from ca_core.keys import private_key_pem
from ca_core.service import Signer
from ca_core.validators import Identity, validator_readiness

from . import composition
from .grpc_health import ReadinessHealth, add_health_to_server
from .grpc_service import CAServicer, add_to_server, audit_log
from .http_endpoints import HttpEndpoints, json_route
from .logs import audit_rotation
from .metrics import Metrics
from .rate_limit import RateLimiter

log = logging.getLogger("sentryca")
expiry_log = logging.getLogger("sentryca.expiry")


MAX_REQUEST_BYTES = 64 * 1024  # SPEC §3 step 0
# Seconds a gRPC server replaced by a restart with a new port keeps for its calls in flight (the
# slowest call waits on an identity backend: at most the JWKS request timeout, 30 s by default).
DRAIN_GRACE = 30.0


class AlreadyRunning(RuntimeError):
    """``start`` was called on a running CA."""


class NotRunning(RuntimeError):
    """An operation that needs a running CA was called on an idle one."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServerCertificate:
    """The CA's own TLS certificate: chain PEM (leaf first), key PEM, when to renew."""

    chain_pem: bytes
    key_pem: bytes
    not_after: datetime
    renew_at: datetime
    signed_by: str  # "issuer" or "root"


def server_sans(cfg: Config) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """DNS and IP SANs of the server certificate (SPEC §9): localhost, 127.0.0.1, ::1, a specific
    listen address, and the names the CA is reached by (``--server-names``)."""
    dns = ["localhost"]
    ips: list[Any] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for name in (cfg.listen_address, *cfg.server_names):
        addr = name.strip("[]")
        try:
            ip = ipaddress.ip_address(addr)
            if not ip.is_unspecified and ip not in ips:
                ips.append(ip)
        except ValueError:
            if addr and addr not in dns:
                dns.append(addr)
    return tuple(dns), tuple(ips)


def issue_server_certificate(signer: Signer, cfg: Config, now: datetime) -> ServerCertificate:
    """Issue the CA's TLS certificate for its own SPIFFE ID (SPEC §9) with a fresh P-256 key.

    Signed by the issuer; when the issuer is not valid now but the root key is at hand, signed
    directly by the root so clients can still reach the CA and be told FAILED_PRECONDITION.
    Raises FailedPrecondition when neither can sign.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = server_sans(cfg)
    identity = Identity(signer.policy.ca_identity)
    ttl = cfg.workload_cert_ttl
    bundle = signer.bundle
    try:
        signed = signer.issue(key.public_key(), identity, now, ttl=ttl, dns_names=dns, ip_addresses=ips)
        chain_pem, not_after, by = signed.chain_pem, signed.not_after, "issuer"
    except FailedPrecondition:
        root = bundle.anchor_for(bundle.issuer_chain[-1])
        if bundle.root_key is None or root is None:
            raise
        check_issuer_valid(root, now)
        cert = sign_workload(
            root,
            bundle.root_key,
            key.public_key(),
            identity.spiffe_id,
            now,
            ttl=ttl,
            clock_skew=cfg.allowed_clock_skew,
            dns_names=dns,
            ip_addresses=ips,
        )
        chain_pem, not_after, by = certificates_pem([cert]), cert.not_valid_after_utc, "root"
    renew_at = now + (not_after - now) / 2
    return ServerCertificate(chain_pem, private_key_pem(key), not_after, renew_at, by)


@dataclass(frozen=True)
class _State:
    config: Config
    store: BundleStore
    signer: Signer
    bundle_version: str
    created: bool = False  # the bundle was generated by this start
    stored: StoredBundle | None = None  # the bundle as read, for publish_public once accepted


class CertificateAuthority:
    """The CA service. ``clock``: returns aware UTC now (injected in tests).

    Thread-safe: start/stop/restart are serialised by one lock.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        *,
        reuse_port: bool = False,
        http_address: str | None = None,
        count_shared_events: bool = True,
    ) -> None:
        """``reuse_port``: bind the gRPC port with SO_REUSEPORT (the worker processes of
        ``handlers.workers`` share one port); ``http_address``: bind /healthz and /metrics there
        instead of ``--listen-address`` (a worker's, reached only by its supervisor);
        ``count_shared_events``: see :class:`~handlers.metrics.Metrics`."""
        self._clock = clock
        self._reuse_port = reuse_port
        self._http_address = http_address
        self._lock = threading.RLock()  # start/stop/restart
        self._swap_lock = threading.Lock()  # the state in force and its server certificate
        self._state: _State | None = None
        self._server: grpc.Server | None = None
        self._health: ReadinessHealth | None = None
        self._limiter: RateLimiter | None = None
        self._http: dict[str, HttpEndpoints] = {}  # "healthz", "metrics"
        self._draining: list[tuple[grpc.Server, threading.Event]] = []  # old servers after a hand-over
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._server_cert: ServerCertificate | None = None
        self._server_cert_error: str | None = None
        self._served_cert: ServerCertificate | None = None
        self._next_expiry_check = datetime.max.replace(tzinfo=UTC)
        self._renew_retry_at: datetime | None = None
        self._next_store_poll = 0.0  # time.monotonic() of the next store poll
        self._refused_version: str | None = None
        self.metrics = Metrics(count_shared_events)
        self.grpc_port: int | None = None
        self.healthz_port: int | None = None
        self.metrics_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state is not None

    @property
    def server_certificate_error(self) -> str | None:
        """Why the CA's own TLS certificate could not be issued, or None."""
        return self._server_cert_error

    @property
    def config(self) -> Config | None:
        return self._state.config if self._state else None

    @property
    def signer(self) -> Signer:
        """The signer in force (raises NotRunning when idle)."""
        state = self._state
        if state is None:
            raise NotRunning("the CA is not running")
        return state.signer

    def start(self, config: Config) -> None:
        """Build the CA from ``config`` and serve; returns once serving.

        Raises AlreadyRunning, or CAError (BundleError, ConfigError, Unavailable) with a clear
        message when the CA cannot be built; nothing keeps running after a failed start.
        """
        with self._lock:
            if self._state is not None:
                raise AlreadyRunning("the CA is already running")
            state = self._build_state(config)
            self._start_with(state)
            self._publish_bundle(state, None)

    def _start_with(self, state: _State) -> None:
        config = state.config
        try:
            self._install_server_certificate(state, self._issue_server_certificate(state))
            self._serve(state)
        except BaseException:
            self._shutdown(grace=0)
            raise
        if self.grpc_port is None:
            log.error(
                "CA started WITHOUT gRPC (%s): healthz :%s reports why; trust anchors in %s",
                self._server_cert_error,
                self.healthz_port,
                state.store.description,
            )
            return
        log.info(
            "CA started: gRPC %s:%s (TLS), healthz :%s%s; trust domain %s; trust anchors in %s",
            config.listen_address,
            self.grpc_port,
            self.healthz_port,
            f", metrics :{self.metrics_port}" if self.metrics_port else "",
            config.trust_domain,
            state.store.description,
        )
        log.debug("configuration: %s", config.describe())

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving: in-flight calls get ``grace`` seconds; returns when everything has
        stopped and the ports are closed. The CA is then idle and can start again."""
        with self._lock:
            if self._state is None:
                return
            self._shutdown(grace)
            log.info("CA stopped")

    def restart(self, config: Config, *, force: bool = False) -> None:
        """Apply ``config`` (SPEC §8). The new state is built first; if it cannot be (bad bundle or
        settings, an empty store) the running CA keeps serving its current state and the error is
        raised. A bundle whose trust anchors drop the active root is refused unless ``force``, or
        that root is released (trust continuity, SPEC §5; ``rotation.released_roots``: expired,
        pruned as the state in force scheduled, or removed by an emergency rotation). Same
        listeners → in-place swap. A listener with a new port (or port 0) → the new one is opened
        first, then the old one stops accepting and its calls in flight complete (up to
        DRAIN_GRACE seconds). A listener that changes but stays on the
        port it is bound to (another address, other gRPC options) → stop, then start."""
        with self._lock:
            old = self._state
            if old is None:
                self.start(config)
                return
            new = self._build_state(config, create_if_empty=force, publish=False)
            if not force:
                released = rotation.released_roots(
                    old.stored.items if old.stored else {},
                    new.stored.items if new.stored else {},
                    self._clock(),
                )
                check_trust_continuity(old.signer.bundle, new.signer.bundle, new.store.description, released)
            if not self._can_hand_over(old.config, config):
                # A listener that stays on the port it is bound to but changes (address, gRPC
                # options) cannot be opened twice (so_reuseport is off): stop, then start, and
                # connections are refused in between. Everything else is handed over below.
                self.stop()
                self._start_with(new)
                self._publish_public(new)
                self._publish_bundle(new, old)
                return
            self._hand_over(old, new)
            self._publish_public(new)
            self._publish_bundle(new, old)
            self._check_expiry(new)
            if self._health is not None:
                self._health.refresh()

    def _build_state(self, config: Config, *, create_if_empty: bool = True, publish: bool = True) -> _State:
        """The state for ``config``; publish: repair the store's public part from the loaded
        bundle (a first start); a restart passes False and publishes after its continuity check."""
        store = composition.build_store(config)
        # Validators first: a configuration that cannot run must not leave a new CA in the store.
        validators = composition.build_validators(config)
        loaded = composition.load_bundle(
            config, store, self._clock(), create_if_empty=create_if_empty, publish=publish
        )
        if loaded.created:
            log.info("generated a new trust bundle in %s", store.description)
        signer = composition.build_signer(config, loaded.bundle, validators)
        state = _State(config, store, signer, loaded.version, loaded.created, loaded.stored)
        issuer = loaded.bundle.issuer
        log.info(
            "issuer certificate %s valid until %s",
            issuer.subject.rfc4514_string(),
            issuer.not_valid_after_utc.isoformat(),
        )
        try:
            check_issuer_valid(issuer, self._clock())
        except FailedPrecondition as e:
            log.error("%s; the CA starts but reports not-ready and refuses to sign", e)
            self.metrics.sign_failure.labels(category="issuer_invalid", reason=e.reason)  # series at 0
        return state

    @staticmethod
    def _publish_public(state: _State) -> None:
        """Once a restart accepted ``state`` (trust continuity checked, or forced) and put it in
        force: repair the store's public part from it (SPEC §5: relying parties never get the
        anchors of a bundle the CA refused). A bundle created by this restart was published by
        the create itself."""
        if state.stored is not None and not state.created:
            state.store.publish_public(state.stored)

    def _publish_bundle(self, state: _State, previous: _State | None) -> None:
        """Once ``state`` is in force: the bundle's expiry gauges, the
        issuer-changed counter, and an audit record when the bundle was created or changed (at
        start: ``bundle_loaded``). Fields: event, issuer_serial, issuer_not_after, anchors
        (SHA-256 fingerprints), store, version; on a change also previous_issuer_serial."""
        bundle = state.signer.bundle
        issuer = bundle.issuer
        self.metrics.issuer_expiry.set(issuer.not_valid_after_utc.timestamp())
        self.metrics.root_expiry.set(min(a.not_valid_after_utc for a in bundle.trust_anchors).timestamp())
        # coverage: set by _check_expiry, which runs whenever a state comes into force
        fields: dict[str, Any] = {
            "issuer_serial": f"{issuer.serial_number:x}",
            "issuer_not_after": issuer.not_valid_after_utc.isoformat(),
            "anchors": ",".join(fingerprint(a) for a in bundle.trust_anchors),
            "store": state.store.description,
            "version": state.bundle_version,
        }
        if previous is None:
            event = "bundle_created" if state.created else "bundle_loaded"
        else:
            before = previous.signer.bundle
            if before.issuer == issuer and before.trust_anchors == bundle.trust_anchors:
                return
            if before.issuer != issuer:
                self.metrics.issuer_changed.inc()
            event = "bundle_changed"
            fields["previous_issuer_serial"] = f"{before.issuer.serial_number:x}"
        audit_log.info(
            "%s: issuer serial %s, %d trust anchor(s), in %s",
            event,
            fields["issuer_serial"],
            len(bundle.trust_anchors),
            state.store.description,
            extra={"event": event, **fields},
        )

    def _serve(self, state: _State) -> None:
        cfg = state.config
        self._state = state  # before the first call can arrive
        if self._server_cert is not None:
            self._served_cert = cert = self._server_cert
            self._server, self.grpc_port, self._health, self._limiter = self._open_grpc(cfg, cert)
        else:
            log.error("gRPC server not started: %s", self._server_cert_error)
        for name in _HTTP_LISTENERS:
            endpoint = self._open_http(name, cfg)
            if endpoint is not None:
                self._set_http(name, endpoint)
        self._check_expiry(state)
        self._next_expiry_check = self._clock() + cfg.expiry_check_interval
        self._next_store_poll = time.monotonic() + cfg.store_poll_interval.total_seconds()
        self._renew_retry_at = None
        self._stop_watch = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(self._stop_watch,), name="expiry-watcher", daemon=True
        )
        self._watcher.start()

    def _open_grpc(
        self, cfg: Config, cert: ServerCertificate
    ) -> tuple[grpc.Server, int, ReadinessHealth, RateLimiter]:
        """A started gRPC server (TLS with ``cert``, renewed through ``_fetch_cert_config``) on
        ``cfg``'s address and port: (server, bound port, health servicer, rate limiter). Raises
        CAError when the address cannot be bound; nothing stays open then."""
        creds = grpc.dynamic_ssl_server_credentials(self._cert_config(cert), self._fetch_cert_config)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4), thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
            ],
        )
        limiter = RateLimiter(cfg.rate_limit)
        add_to_server(CAServicer(lambda: self.signer, self._clock, self.metrics, limiter), server)
        health = add_health_to_server(self.readiness, server)
        address = _host_port(cfg.listen_address, cfg.port)
        try:
            port = server.add_secure_port(address, creds)
        except RuntimeError as e:
            server.stop(0)
            raise CAError(f"cannot listen on {address}: {_bind_problem(cfg) or e}") from None
        if port == 0:
            server.stop(0)
            raise CAError(
                f"cannot listen on {address}: {_bind_problem(cfg) or 'address in use or unavailable'}"
            )
        server.start()
        return server, port, health, limiter

    def _open_http(self, name: str, cfg: Config) -> HttpEndpoints | None:
        """The started HTTP listener ``name`` ("healthz" or "metrics") of ``cfg``, or None when
        ``cfg`` disables it. Raises CAError when the port cannot be bound."""
        if name == "healthz":
            routes = {
                "/healthz": json_route(self.readiness),
                "/livez": json_route(lambda: (True, {"alive": True})),
            }
            return HttpEndpoints(self._http_address or cfg.listen_address, cfg.healthz_port, routes).start()
        if not cfg.enable_metrics:
            return None
        routes = {"/metrics": lambda: (200, "text/plain; version=0.0.4", self.metrics.exposition())}
        return HttpEndpoints(self._http_address or cfg.listen_address, cfg.metrics_port, routes).start()

    def _set_http(self, name: str, endpoint: HttpEndpoints | None) -> None:
        if endpoint is None:
            self._http.pop(name, None)
        else:
            self._http[name] = endpoint
        port = endpoint.port if endpoint is not None else None
        if name == "healthz":
            self.healthz_port = port
        else:
            self.metrics_port = port

    def _bound_port(self, group: str) -> int | None:
        if group == "grpc":
            return self.grpc_port if self._server is not None else None
        endpoint = self._http.get(group)
        return endpoint.port if endpoint is not None else None

    def _can_hand_over(self, old: Config, new: Config) -> bool:
        """Whether every listener that changes can be opened before the old one closes: its new
        port is 0 (any free port) or not the port bound now, or it is switched off."""
        for group, key in _LISTENER_GROUPS.items():
            if key(old) == key(new):
                continue
            port = _group_port(group, new)
            bound = self._bound_port(group)
            if port is not None and port != 0 and port == bound:
                return False
        return True

    def _hand_over(self, old: _State, new: _State) -> None:
        """Put ``new`` in force without refusing a connection (SPEC §8): listeners whose settings
        are unchanged stay open (bundle, validators, settings and server certificate are swapped
        under them); a changed listener is opened first, then the old one stops accepting and
        its calls in flight get DRAIN_GRACE seconds to complete. If a new listener cannot be
        opened, nothing changes and CAError is raised."""
        cfg = new.config
        changed = {g for g, key in _LISTENER_GROUPS.items() if key(old.config) != key(cfg)}
        cert = self._issue_server_certificate(new)
        open_grpc = cert is not None and ("grpc" in changed or self._server is None)
        opened_grpc = None
        opened_http: dict[str, HttpEndpoints | None] = {}
        try:
            if open_grpc and cert is not None:
                opened_grpc = self._open_grpc(cfg, cert)
            for name in _HTTP_LISTENERS:
                if name in changed:
                    opened_http[name] = self._open_http(name, cfg)
        except BaseException:
            if opened_grpc is not None:
                opened_grpc[0].stop(0)
            for endpoint in opened_http.values():
                if endpoint is not None:
                    endpoint.stop()
            raise
        retired: tuple[grpc.Server, ReadinessHealth | None] | None = None
        with self._swap_lock:
            self._state = new
            if cert is not None:
                self._server_cert = cert
            if opened_grpc is not None or "grpc" in changed:
                if self._server is not None:
                    retired = (self._server, self._health)
                if opened_grpc is not None:
                    self._server, self.grpc_port, self._health, self._limiter = opened_grpc
                    self._served_cert = cert
                else:
                    self._server = self._health = self._limiter = None
                    self.grpc_port = None
        if opened_grpc is None and self._limiter is not None and cfg.rate_limit != old.config.rate_limit:
            self._limiter.configure(cfg.rate_limit)
        if retired is not None:
            server, health = retired
            if health is not None:
                health.enter_graceful_shutdown()  # watchers on the old port learn NOT_SERVING
            self._draining.append((server, server.stop(DRAIN_GRACE)))
        for name, endpoint in opened_http.items():
            previous = self._http.get(name)
            self._set_http(name, endpoint)
            if previous is not None:
                previous.stop()
        if changed:
            log.info(
                "CA handed over to new listeners (%s): gRPC %s:%s, healthz :%s%s",
                ", ".join(sorted(changed)),
                cfg.listen_address,
                self.grpc_port,
                self.healthz_port,
                f", metrics :{self.metrics_port}" if self.metrics_port else "",
            )
        else:
            log.info("CA restarted in place with the new configuration")

    def _shutdown(self, grace: float) -> None:
        self._stop_watch.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._watcher = None
        if self._health is not None:
            self._health.enter_graceful_shutdown()  # health watchers see NOT_SERVING first
        if self._server is not None:
            self._server.stop(grace).wait()
        for server, _ in self._draining:  # servers a hand-over left draining: at most ``grace`` more
            server.stop(grace).wait()
        self._draining.clear()
        self._server = None
        self._health = None
        self._limiter = None
        for endpoint in self._http.values():
            endpoint.stop()
        self._http.clear()
        self._state = None
        self._server_cert = self._served_cert = None
        self.grpc_port = self.healthz_port = self.metrics_port = None

    # --- server certificate ----------------------------------------------------------------

    @staticmethod
    def _cert_config(cert: ServerCertificate) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(cert.key_pem, cert.chain_pem)])

    def _fetch_cert_config(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before every TLS handshake: hand over a renewed certificate once.
        current = self._server_cert
        if current is None or current is self._served_cert:
            return None
        self._served_cert = current
        return self._cert_config(current)

    def _issue_server_certificate(self, state: _State) -> ServerCertificate | None:
        """A new server certificate for ``state``, or None (error recorded and counted)."""
        try:
            cert = issue_server_certificate(state.signer, state.config, self._clock())
        except CAError as e:
            self.metrics.servercert_issue_failed.inc()
            self._server_cert_error = f"cannot issue the server certificate: {e}"
            log.error("%s", self._server_cert_error)
            return None
        self._server_cert_error = None
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

    def _install_server_certificate(self, state: _State, cert: ServerCertificate | None) -> bool:
        """Make ``cert`` the one served, unless ``state`` is no longer the state in force (a restart
        swapped it meanwhile) or there is no certificate. Returns whether it was installed."""
        with self._swap_lock:
            if cert is None or (self._state is not None and self._state is not state):
                return False
            self._server_cert = cert
            return True

    # --- health and expiry -----------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for ``/healthz``: bundle loaded and issuer valid now, server
        certificate issued, validators ready, gRPC serving."""
        state = self._state
        if state is None:
            return False, {"ready": False, "ca": "not running"}
        now = self._clock()
        details: dict[str, Any] = {}
        problems = []
        issuer = state.signer.bundle.issuer
        try:
            check_issuer_valid(issuer, now)
            details["issuer"] = f"valid until {issuer.not_valid_after_utc.isoformat()}"
        except FailedPrecondition as e:
            details["issuer"] = str(e)
            problems.append("issuer")
        cert = self._server_cert
        if cert is None or cert.not_after <= now:
            details["server_certificate"] = self._server_cert_error or "expired"
            problems.append("server_certificate")
        else:
            details["server_certificate"] = f"valid until {cert.not_after.isoformat()}"
        details["validators"] = sorted(k.name.lower() for k in state.signer.validators)
        for kind, validator in state.signer.validators.items():
            try:
                ok, detail = validator_readiness(validator)
            except Exception as e:  # noqa: BLE001 - a readiness hook must never break /healthz
                ok, detail = False, f"readiness check failed: {type(e).__name__}"
            if not ok:
                problems.append(f"validator_{kind.name.lower()}")
                details[f"validator_{kind.name.lower()}"] = detail
        if self._server is None:
            problems.append("grpc")
            details["grpc"] = "not serving"
        else:
            details["grpc"] = f"serving on port {self.grpc_port}"
        details["ready"] = not problems
        if problems:
            details["not_ready"] = problems
        return not problems, details

    def check_expiry(self) -> list[ExpiryFinding]:
        """Run the expiry rule now (SPEC §8): log each finding at its level, update gauges."""
        state = self._state
        if state is None:
            raise NotRunning("the CA is not running")
        return self._check_expiry(state)

    def _check_expiry(self, state: _State) -> list[ExpiryFinding]:
        bundle = state.signer.bundle
        raw_state = state.stored.items.get(ROTATION_STATE) if state.stored else None
        report = expiry_report(
            bundle.anchors_pem,
            bundle.issuer_chain_pem,
            self._clock(),
            prepared_not_after=rotation.prepared_not_after(raw_state, bundle.trust_anchors),
        )
        for f in report.findings:
            expiry_log.log(f.level, "%s", f.message, extra={"role": f.role, "days_left": f.days_left})
        if report.coverage_not_after is not None:
            self.metrics.coverage_expiry.set(report.coverage_not_after.timestamp())
        return report.findings

    def maintain(self) -> datetime:
        """One round of background upkeep at the clock's now: the store poll when due; when the
        expiry check is due, first the rotation steps due (:meth:`rotate_if_due`), then the
        expiry check; the server certificate's renewal when due (at half its life; after a
        failure, again a minute later, the old certificate staying in use). Returns when the next
        round is due. Serialised with start/stop/restart. Raises NotRunning when idle."""
        with self._lock:
            return self._maintain()

    def _maintain(self) -> datetime:
        state = self._state
        if state is None:
            raise NotRunning("the CA is not running")
        now = self._clock()
        state = self._poll_store(state)
        if now >= self._next_expiry_check:
            state, _ = self._rotate(state, now)
            self._check_expiry(state)
            self._next_expiry_check = now + state.config.expiry_check_interval
        due = self._renewal_due()
        if due is not None and now >= due:
            cert = self._issue_server_certificate(state)
            if self._install_server_certificate(state, cert):
                self.metrics.servercert_renewed.inc()
            # On failure the old certificate stays in use; try again in a minute.
            self._renew_retry_at = now + timedelta(minutes=1) if cert is None else None
        if self._health is not None:
            self._health.refresh()
        due = self._renewal_due()
        wake = self._next_expiry_check if due is None else min(self._next_expiry_check, due)
        if state.config.store_poll_interval:
            left = max(self._next_store_poll - time.monotonic(), 0.0)
            wake = min(wake, now + timedelta(seconds=left))
        return wake

    def rotate_if_due(self) -> bool:
        """Take the rotation steps due now (``ca_core.rotation.advance``: pruning and activations
        of a rotation in progress always; starting one only with ``--auto-rotate``). Returns
        whether this CA wrote a step. Raises NotRunning when idle."""
        with self._lock:
            state = self._state
            if state is None:
                raise NotRunning("the CA is not running")
            return self._rotate(state, self._clock())[1]

    def _rotate(self, state: _State, now: datetime) -> tuple[_State, bool]:
        """Compute the rotation steps due for the bundle in force and write them with
        ``store.replace(items, version in force)``: with several replicas exactly one writes a
        step; a loser (the store changed since it loaded) loads the store's bundle instead. The
        writer counts each step (``sentryca_rotation_steps_total{kind,step}``), logs it and writes
        one audit record per step (``event=rotation_step``); the bundle written is then put in
        force with ``restart`` (trust continuity applies). Returns (the state in force, whether
        this CA wrote a step)."""
        bundle = state.signer.bundle
        try:
            current = rotation.parse_state(state.stored.items if state.stored else {}, bundle)
            result = rotation.advance(bundle, current, now, composition.rotation_policy(state.config))
        except CAError as e:
            log.error("rotation: cannot evaluate the rotation state of %s: %s", state.store.description, e)
            return state, False
        if result is None:
            return state, False
        try:
            won = state.store.replace(result.items(), state.bundle_version)
        except Unavailable as e:
            log.warning(
                "rotation: cannot write %s (%s); retrying at the next check", state.store.description, e
            )
            return state, False
        if not won:
            log.info(
                "rotation: %s changed since it was loaded (another replica or an operator); loading it",
                state.store.description,
            )
        else:
            for step in result.steps:
                self.metrics.rotation_steps.labels(kind=step.kind, step=step.action).inc()
                log.log(logging.WARNING if step.action == "emergency" else logging.INFO, "%s", step.message)
                audit_rotation(step, state.store.description)
        try:
            self.restart(state.config)
        except CAError as e:
            self._refuse(state, None, str(e))
            return state, won
        return self._state or state, won

    def _poll_store(self, state: _State) -> _State:
        """When ``--store-poll-interval`` is set and due: read the store's version; if it differs
        from the bundle in force, restart in place with the same config (SPEC §8), which applies
        the trust-continuity rule. A refused or unreadable bundle is logged once per version and
        the CA keeps serving the bundle in force. Returns the state in force afterwards."""
        interval = state.config.store_poll_interval.total_seconds()
        if not interval or time.monotonic() < self._next_store_poll:
            return state
        self._next_store_poll = time.monotonic() + interval
        try:
            stored = state.store.load()
        except Unavailable as e:  # worth retrying at the next poll
            log.warning("store poll: cannot read %s: %s", state.store.description, e)
            return state
        except CAError as e:  # unreadable content: refused, reported once per distinct problem
            self._refuse(state, None, str(e))
            return state
        if stored is None or stored.version in (state.bundle_version, self._refused_version):
            return state
        log.info("store poll: %s has a new bundle version; restarting in place", state.store.description)
        try:
            self.restart(state.config)
        except Unavailable as e:
            log.warning("store poll: cannot apply the new bundle yet (%s); retrying at the next poll", e)
            return state
        except CAError as e:
            self._refuse(state, stored.version, str(e))
            return state
        return self._state or state

    def _refuse(self, state: _State, version: str | None, problem: str) -> None:
        """Record a store content the poll will not apply (logged and counted once per version or,
        for content that cannot be read at all, once per distinct problem)."""
        key = version or problem
        if key == self._refused_version:
            return
        self._refused_version = key
        self.metrics.bundle_change_refused.inc()
        log.error(
            "store poll: the new bundle in %s was refused, still serving the one in force: %s",
            state.store.description,
            problem,
        )

    def _renewal_due(self) -> datetime | None:
        cert = self._server_cert
        return self._renew_retry_at or (cert.renew_at if cert else None)

    def _watch(self, stop: threading.Event) -> None:
        while True:
            # Never wait for the lifecycle lock here: stop() holds it while it joins this thread.
            if not self._lock.acquire(blocking=False):
                wake = self._clock() + timedelta(seconds=1)  # a start/stop/restart is under way
            else:
                try:
                    wake = self._maintain()
                except NotRunning:
                    return
                except Exception:
                    log.exception("background upkeep failed; retrying in a minute")
                    wake = self._clock() + timedelta(minutes=1)
                finally:
                    self._lock.release()
            if stop.wait(min(max((wake - self._clock()).total_seconds(), 1.0), 300.0)):
                return


_HTTP_LISTENERS = ("healthz", "metrics")

# Each listener and the settings fixed when it opens: a change needs a new listener.
_LISTENER_GROUPS: dict[str, Callable[[Config], tuple[Any, ...]]] = {
    "grpc": lambda c: (c.listen_address, c.port, c.max_concurrent_streams),
    "healthz": lambda c: (c.listen_address, c.healthz_port),
    "metrics": lambda c: (c.listen_address, c.enable_metrics, c.metrics_port),
}


def _group_port(group: str, cfg: Config) -> int | None:
    """The port ``cfg`` asks for the listener ``group`` (None: switched off)."""
    if group == "grpc":
        return cfg.port
    if group == "healthz":
        return cfg.healthz_port
    return cfg.metrics_port if cfg.enable_metrics else None


def _bind_problem(cfg: Config) -> str | None:
    """Why the gRPC address cannot be bound, in the system's words (gRPC's own error says only
    "Failed to bind"), or None when a plain bind works now."""
    import socket

    family = socket.AF_INET6 if ":" in cfg.listen_address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((cfg.listen_address, cfg.port))
    except OSError as e:
        return e.strerror or str(e)
    return None


def _host_port(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
