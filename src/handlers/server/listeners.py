"""The CA's listeners (design §8.3, §9.2): the gRPC server (TLS, 64 KiB request limit, health
service, rate limiter) and the HTTP listeners (``/healthz`` and ``/livez``; ``/metrics``), and
their hand-over at a restart: unchanged listeners stay open, a listener moving to another port is
opened first while the old one drains; servers a hand-over retired drain until the CA stops.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from ca_core.config import Config
from ca_core.errors import CAError
from ca_core.server_certificate import ServerCertificate
from ca_core.service import Signer

from ..call_limits import CallLimits, Guard
from ..grpc_health import Probe, ReadinessHealth, add_health_to_server
from ..grpc_service import CAServicer, add_to_server
from ..http_endpoints import HttpEndpoints, json_route
from ..metrics import Metrics
from ..oidc_server import JwksProvider, OidcServer, oidc_settings, open_oidc
from ..rate_limit import RateLimiter
from .event_loop import LoopThread
from .server_certificate import ServedCertificate

log = logging.getLogger("sentryca")

MAX_REQUEST_BYTES = 64 * 1024  # design §3.1 step 0
# Seconds a gRPC server replaced by a restart with a new port keeps for its calls in flight (the
# slowest call waits on an identity backend: at most the JWKS request timeout, 30 s by default).
DRAIN_GRACE = 30.0
HEALTH_REFRESH_TIMEOUT = 30.0  # seconds: the readiness probe may ask a backend
IO_THREADS = 16  # threads for validators that call a backend (TokenReview, JWKS), per gRPC server
FD_MARGIN = 256  # descriptors beyond --max-connections: stores, backends, HTTP listeners, logs

HTTP_LISTENERS = ("healthz", "metrics")

# Each listener and the settings fixed when it opens: a change needs a new listener.
LISTENER_GROUPS: dict[str, Callable[[Config], tuple[Any, ...]]] = {
    "grpc": lambda c: (
        c.listen_address,
        c.port,
        c.max_concurrent_streams,
        c.max_connections,
        c.handshake_timeout,
        c.idle_timeout,
    ),
    "healthz": lambda c: (c.listen_address, c.healthz_port),
    "metrics": lambda c: (c.listen_address, c.enable_metrics, c.metrics_port),
    "oidc": lambda c: oidc_settings(c).socket if c.oidc_enabled else (),
}


@dataclass(frozen=True)
class _Grpc:
    """A started gRPC server and what was opened with it (swapped as one reference)."""

    server: grpc.aio.Server
    port: int
    health: ReadinessHealth
    limiter: RateLimiter
    identity_limiter: RateLimiter
    servicer: CAServicer
    io: ThreadPoolExecutor


class Listeners:
    """The listeners of one CA. ``signer`` returns the signer in force (read at call time);
    ``readiness`` answers ``/healthz`` and the gRPC health service; ``swap_lock`` is the CA's lock
    over the state in force. ``reuse_port``: bind gRPC with SO_REUSEPORT; ``http_address``: bind
    the HTTP listeners there instead of ``--listen-address``."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime],
        metrics: Metrics,
        certs: ServedCertificate,
        swap_lock: threading.Lock,
        signer: Callable[[], Signer],
        readiness: Probe,
        reuse_port: bool,
        http_address: str | None,
        jwks: JwksProvider = lambda: None,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._certs = certs
        self._swap_lock = swap_lock
        self._signer = signer
        self._readiness = readiness
        self._reuse_port = reuse_port
        self._http_address = http_address
        self._grpc: _Grpc | None = None
        self._http: dict[str, HttpEndpoints] = {}  # "healthz", "metrics"
        self._jwks = jwks
        self._oidc: OidcServer | None = None
        self._draining: list[tuple[_Grpc, Future[None]]] = []  # old servers after a hand-over
        self._loop = LoopThread("grpc-loop")

    @property
    def grpc_server(self) -> grpc.aio.Server | None:
        """The gRPC server taking new calls, or None (not serving gRPC)."""
        grpc_ = self._grpc
        return grpc_.server if grpc_ is not None else None

    @property
    def grpc_port(self) -> int | None:
        """The port the gRPC server is bound to, or None."""
        grpc_ = self._grpc
        return grpc_.port if grpc_ is not None else None

    @property
    def healthz_port(self) -> int | None:
        return self._http_port("healthz")

    @property
    def metrics_port(self) -> int | None:
        return self._http_port("metrics")

    @property
    def oidc_port(self) -> int | None:
        """The bound port of the OIDC discovery server, or None (idle, or not enabled)."""
        server = self._oidc
        return server.port if server is not None else None

    @property
    def draining(self) -> bool:
        """Whether a gRPC server retired by a hand-over still has calls in flight."""
        return not all(done.done() for _, done in self._draining)

    def _http_port(self, name: str) -> int | None:
        endpoint = self._http.get(name)
        return endpoint.port if endpoint is not None else None

    def open(self, cfg: Config) -> None:
        """Open every listener of ``cfg`` (gRPC only with a current server certificate; without
        one the error is logged and the HTTP listeners report why). Raises CAError when a port
        cannot be bound; what was opened stays open for :meth:`close`."""
        cert = self._certs.current
        if cert is not None:
            self._certs.mark_served(cert)
            self._grpc = self._open_grpc(cfg, cert)
        else:
            log.error("gRPC server not started: %s", self._certs.error)
        for name in HTTP_LISTENERS:
            endpoint = self._open_http(name, cfg)
            if endpoint is not None:
                self._set_http(name, endpoint)
        self._oidc = open_oidc(cfg, self._jwks, reuse_port=self._reuse_port)

    def refresh_health(self) -> None:
        """Publish the readiness to the gRPC health service's watchers."""
        grpc_ = self._grpc
        if grpc_ is None:
            return
        try:
            self._loop.run(grpc_.health.refresh(), timeout=HEALTH_REFRESH_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a probe that hangs or fails: watchers keep the last status
            log.warning("gRPC health status not refreshed: %s", e or type(e).__name__)

    def _open_grpc(self, cfg: Config, cert: ServerCertificate) -> _Grpc:
        """A started gRPC server (TLS with ``cert``, renewed through the certificate's fetch
        callback) on ``cfg``'s address and port, on the listeners' event loop. Raises CAError when
        the address cannot be bound; nothing stays open then."""
        return self._loop.run(self._start_grpc(cfg, cert))

    async def _start_grpc(self, cfg: Config, cert: ServerCertificate) -> _Grpc:
        creds = self._certs.credentials(cert)
        max_connections = connection_cap(cfg.max_connections)
        server = grpc.aio.server(options=grpc_options(cfg, self._reuse_port, max_connections))
        limiter = RateLimiter(cfg.rate_limit)
        identity_limiter = RateLimiter(cfg.identity_rate_limit)
        io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="grpc-io")
        guard = Guard(call_limits(cfg))
        servicer = CAServicer(
            self._signer,
            self._clock,
            self._metrics,
            limiter,
            identity_limiter=identity_limiter,
            io_executor=io,
            guard=guard,
        )
        add_to_server(servicer, server)
        health = await add_health_to_server(self._readiness, server, guard)
        address = host_port(cfg.listen_address, cfg.port)
        try:
            port = server.add_secure_port(address, creds)
        except RuntimeError as e:
            await server.stop(0)
            io.shutdown(wait=False)
            raise CAError(f"cannot listen on {address}: {bind_problem(cfg) or e}") from None
        if port == 0:
            await server.stop(0)
            io.shutdown(wait=False)
            raise CAError(
                f"cannot listen on {address}: {bind_problem(cfg) or 'address in use or unavailable'}"
            )
        await server.start()
        return _Grpc(server, port, health, limiter, identity_limiter, servicer, io)

    def _open_http(self, name: str, cfg: Config) -> HttpEndpoints | None:
        """The started HTTP listener ``name`` ("healthz" or "metrics") of ``cfg``, or None when
        ``cfg`` disables it. Raises CAError when the port cannot be bound."""
        if name == "healthz":
            routes = {
                "/healthz": json_route(self._readiness),
                "/livez": json_route(lambda: (True, {"alive": True})),
            }
            return HttpEndpoints(self._http_address or cfg.listen_address, cfg.healthz_port, routes).start()
        if not cfg.enable_metrics:
            return None
        routes = {"/metrics": lambda: (200, "text/plain; version=0.0.4", self._metrics.exposition())}
        return HttpEndpoints(self._http_address or cfg.listen_address, cfg.metrics_port, routes).start()

    def _set_http(self, name: str, endpoint: HttpEndpoints | None) -> None:
        if endpoint is None:
            self._http.pop(name, None)
        else:
            self._http[name] = endpoint

    def _bound_port(self, group: str) -> int | None:
        if group == "grpc":
            return self.grpc_port
        if group == "oidc":
            return self.oidc_port
        return self._http_port(group)

    def can_hand_over(self, old: Config, new: Config) -> bool:
        """Whether every listener that changes can be opened before the old one closes: its new
        port is 0 (any free port) or not the port bound now, or it is switched off."""
        for group, key in LISTENER_GROUPS.items():
            if key(old) == key(new):
                continue
            port = group_port(group, new)
            bound = self._bound_port(group)
            if port is not None and port != 0 and port == bound:
                return False
        return True

    def hand_over(
        self, old: Config, cfg: Config, cert: ServerCertificate | None, commit: Callable[[], None]
    ) -> None:
        """Move from the listeners of ``old`` to those of ``cfg`` without refusing a connection
        (design §8.3): unchanged listeners stay open; a changed one is opened first, then the old
        one stops accepting and its calls in flight get DRAIN_GRACE seconds. ``commit`` (called
        under the swap lock, with ``cert``, a certificate issued for the new state, put in force
        and the gRPC server swapped at the same moment) puts the new state in force. If a new
        listener cannot be opened, nothing changes and CAError is raised."""
        changed = {g for g, key in LISTENER_GROUPS.items() if key(old) != key(cfg)}
        open_grpc = cert is not None and ("grpc" in changed or self._grpc is None)
        opened_grpc = None
        opened_http: dict[str, HttpEndpoints | None] = {}
        opened_oidc: OidcServer | None = None
        try:
            if open_grpc and cert is not None:
                opened_grpc = self._open_grpc(cfg, cert)
            for name in HTTP_LISTENERS:
                if name in changed:
                    opened_http[name] = self._open_http(name, cfg)
            if "oidc" in changed:
                opened_oidc = open_oidc(cfg, self._jwks, reuse_port=self._reuse_port)
        except BaseException:
            if opened_grpc is not None:
                self._stop_grpc(opened_grpc, 0)
            for endpoint in opened_http.values():
                if endpoint is not None:
                    endpoint.stop()
            if opened_oidc is not None:
                opened_oidc.stop()
            raise
        retired: _Grpc | None = None
        with self._swap_lock:
            commit()
            self._metrics.restarts.inc()
            self._certs.put(cert)
            if opened_grpc is not None or "grpc" in changed:
                retired = self._grpc
                self._grpc = opened_grpc
                if opened_grpc is not None and cert is not None:
                    self._certs.mark_served(cert)
        current = self._grpc
        if opened_grpc is None and current is not None:
            if cfg.rate_limit != old.rate_limit:
                current.limiter.configure(cfg.rate_limit)
            if cfg.identity_rate_limit != old.identity_rate_limit:
                current.identity_limiter.configure(cfg.identity_rate_limit)
            current.servicer.guard.limits = call_limits(cfg)
        if retired is not None:
            self._draining.append((retired, self._loop.submit(self._retire(retired, DRAIN_GRACE))))
        for name, endpoint in opened_http.items():
            previous = self._http.get(name)
            self._set_http(name, endpoint)
            if previous is not None:
                previous.stop()
        if "oidc" in changed:
            retired_oidc, self._oidc = self._oidc, opened_oidc
            if retired_oidc is not None:
                retired_oidc.stop()
        elif self._oidc is not None:  # the same socket: hosts, prefix, JWKS URI, issuer in place
            self._oidc.reconfigure(oidc_settings(cfg))
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

    async def _retire(self, grpc_: _Grpc, grace: float) -> None:
        """Stop ``grpc_``: health watchers learn NOT_SERVING first, calls in flight get ``grace``
        seconds; then its I/O threads are let go."""
        await grpc_.health.enter_graceful_shutdown()
        await grpc_.server.stop(grace)
        grpc_.io.shutdown(wait=False)

    def _stop_grpc(self, grpc_: _Grpc, grace: float) -> None:
        self._loop.run(self._retire(grpc_, grace))

    def close(self, grace: float) -> None:
        """Close every listener: health watchers see NOT_SERVING first, calls in flight get
        ``grace`` seconds (servers still draining from a hand-over at most that much more);
        returns when all are stopped and the ports closed."""
        grpc_ = self._grpc
        if grpc_ is not None:
            self._stop_grpc(grpc_, grace)
        for retired, done in self._draining:  # servers a hand-over left draining: at most ``grace`` more
            try:
                done.result(grace + 1.0)
            except Exception:  # noqa: BLE001 - still draining, or its stop failed: cut it short
                self._stop_grpc(retired, 0)
        self._draining.clear()
        self._grpc = None
        self._loop.close()
        for endpoint in self._http.values():
            endpoint.stop()
        self._http.clear()
        oidc_server, self._oidc = self._oidc, None
        if oidc_server is not None:
            oidc_server.stop()


def call_limits(cfg: Config) -> CallLimits:
    """The per-call limits of ``cfg`` (design §8.7)."""
    return CallLimits(cfg.max_in_flight, cfg.max_in_flight_per_peer, cfg.message_timeout.total_seconds())


def grpc_options(cfg: Config, reuse_port: bool, max_connections: int | None = None) -> list[tuple[str, int]]:
    """The gRPC core settings of the CA's server (design §8.7): what one connection may hold and
    for how long. Streams per connection, connections in all (``max_connections``, default
    ``--max-connections``), the TLS handshake plus the client's HTTP/2 preface and its
    acknowledgement of the server's SETTINGS (``--handshake-timeout``), a connection with no call
    (``--idle-timeout``)."""
    handshake_ms = _ms(cfg.handshake_timeout.total_seconds())
    return [
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", cfg.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", max_connections or cfg.max_connections),
        ("grpc.server_handshake_timeout_ms", handshake_ms),
        ("grpc.http2.settings_timeout", handshake_ms),  # gRPC core's default: 60 s
        ("grpc.max_connection_idle_ms", _ms(cfg.idle_timeout.total_seconds())),
    ]


def _ms(seconds: float) -> int:
    return max(1, min(2**31 - 1, round(seconds * 1000)))


def connection_cap(max_connections: int) -> int:
    """``max_connections``, or less when the open-file limit cannot be raised to hold it plus
    FD_MARGIN (a warning says so): a CA out of file descriptors cannot read its store, answer
    /healthz or accept anyone, so the cap stays below the limit."""
    soft = raise_fd_limit(max_connections + FD_MARGIN)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + FD_MARGIN:
        return max_connections
    cap = max(1, soft - FD_MARGIN)
    log.warning(
        "--max-connections %d lowered to %d: the open-file limit is %d and cannot be raised to %d "
        "(raise it: ulimit -n, LimitNOFILE, the container runtime's nofile)",
        max_connections,
        cap,
        soft,
        max_connections + FD_MARGIN,
    )
    return cap


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to ``needed``, as far as the
    hard limit allows (never lowering it); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    return soft


def group_port(group: str, cfg: Config) -> int | None:
    """The port ``cfg`` asks for the listener ``group`` (None: switched off)."""
    if group == "grpc":
        return cfg.port
    if group == "healthz":
        return cfg.healthz_port
    if group == "oidc":
        return cfg.oidc_server_listen_port if cfg.oidc_enabled else None
    return cfg.metrics_port if cfg.enable_metrics else None


def bind_problem(cfg: Config) -> str | None:
    """Why the gRPC address cannot be bound, in the system's words (gRPC's own error says only
    "Failed to bind"), or None when a plain bind works now."""
    family = socket.AF_INET6 if ":" in cfg.listen_address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((cfg.listen_address, cfg.port))
    except OSError as e:
        return e.strerror or str(e)
    return None


def host_port(host: str, port: int) -> str:
    """``host:port``, brackets around an IPv6 address."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
