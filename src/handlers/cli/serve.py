"""``sentryca serve``: run the CA in this process, or as a supervisor of ``--workers N``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ca_core.config import SERVE_OPTIONS, STORE_OPTIONS, add_options
from ca_core.errors import CAError

from .common import config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics_core import Metric

    from ca_core.config import Config
    from handlers.emf import EmfWriter
    from handlers.server import CertificateAuthority
    from handlers.workers import Supervisor

log = logging.getLogger("sentryca")
# compared with --listen-address, never bound
_ANY_V4 = "0.0.0.0"  # noqa: S104  # nosec B104
_LOCAL_OR_ANY = ("127.0.0.1", _ANY_V4, "::", "::1")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` with every option of design §7."""
    p = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="run the CA (flags override SENTRY_* env vars, which override --config)",
    )
    add_options(p, SERVE_OPTIONS + STORE_OPTIONS)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 after a clean stop, 1 when the CA cannot start."""
    from handlers.heap import freeze_startup_heap
    from handlers.logs import setup_logging
    from handlers.workers import Supervisor, worker_count

    cfg = config(args)
    setup_logging(cfg.log_level, cfg.log_as_json)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if worker_count(cfg) > 1:  # the supervisor never imports gRPC: only its workers serve
        return _serve_workers(cfg, Supervisor(cfg), stop)
    from handlers.server import CertificateAuthority

    ca = CertificateAuthority()
    try:
        ca.start(cfg)
    except CAError as e:
        log.critical("cannot start the CA: %s", e)
        return 1
    freeze_startup_heap()
    emf = _emf_writer(cfg, ca.metrics.registry.collect)
    host = _host(cfg)
    if cfg.log_as_json:
        pass  # JSON lines only: the start-up log line says where the CA serves
    elif ca.grpc_port is None:
        print(
            f"\nThe CA is NOT serving gRPC: {ca.server_certificate_error}.\n"
            f"  Health:        http://{host}:{ca.healthz_port}/healthz (503, says what is not ready)\n"
            "Repair or import the trust bundle, then restart the CA. Stop with Ctrl-C.\n",
            file=sys.stderr,
            flush=True,
        )
    else:
        _print_banner(cfg, ca, host)
    stop.wait()
    log.info("signal received: stopping")
    ca.stop()
    if emf is not None:
        emf.stop()  # the last figures, after the calls in flight were answered
    return 0


def _emf_writer(cfg: Config, collect: Callable[[], Iterable[Metric]]) -> EmfWriter | None:
    """With ``--emf-interval``: the started writer of EMF documents to stdout (design §9.3)."""
    if not cfg.emf_interval:
        return None
    from handlers.emf import EmfWriter

    return EmfWriter(collect, cfg.emf_interval.total_seconds()).start()


def _host(cfg: Config) -> str:
    """The host a client on this machine dials for ``--listen-address``."""
    return "localhost" if cfg.listen_address in _LOCAL_OR_ANY else cfg.listen_address


def _serve_workers(cfg: Config, supervisor: Supervisor, stop: threading.Event) -> int:
    """``serve --workers N``: start the supervisor's workers, supervise until a signal."""
    try:
        supervisor.start()
    except CAError as e:
        log.critical("cannot start the CA: %s", e)
        return 1
    if not cfg.log_as_json:
        _print_banner(cfg, supervisor, _host(cfg))
        print(f"  ({supervisor.count} worker processes share the gRPC port)\n", file=sys.stderr, flush=True)
    emf = _emf_writer(cfg, supervisor.collect)
    supervisor.run(stop)
    log.info("signal received: stopping the workers")
    if emf is not None:
        emf.stop()  # before the workers' metric files are removed (calls still draining are not in it)
    supervisor.stop()
    return 0


def _print_banner(cfg: Config, ca: CertificateAuthority | Supervisor, host: str) -> None:
    """Where the CA serves and how to get a first certificate from it (stderr)."""
    store = cfg.store_url
    if cfg.store_url.startswith("file://"):
        directory = Path(cfg.store_url[len("file://") :])
        store = f"file://{directory}"  # as the log lines name it
        anchors = str(directory / cfg.issuer_ca_filename)
        export = ""
    else:
        anchors = "./trust/ca.crt"
        kube = (
            f" --kubeconfig '{cfg.kubeconfig}'"
            if cfg.kubeconfig and cfg.store_url.startswith("kubernetes:")
            else ""
        )
        export = (
            f"  .venv/bin/sentryca bundle show --trust-bundle-store '{cfg.store_url}'{kube} --out ./trust\n"
        )
    print(
        f"\nThe CA is serving on {cfg.listen_address}:{ca.grpc_port} (gRPC over TLS).\n"
        f"  Trust bundle:  {store}\n"
        f"  Health:        http://{host}:{ca.healthz_port}/healthz\n"
        f"Get a workload certificate (in another terminal):\n{export}"
        f"  .venv/bin/sentryca request --id myapp --namespace default "
        f"--server {host}:{ca.grpc_port} --trust-anchors {anchors} --out ./certs\n"
        f"Stop with Ctrl-C.\n",
        file=sys.stderr,
        flush=True,
    )
