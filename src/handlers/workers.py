"""Several CA processes on one gRPC port (``--workers N``): a supervisor and N workers.

One CPython process signs about 1 300 certificates/s here, held by the GIL with a core partly idle
(``bench/README.md``). With ``--workers N`` the ``sentryca serve`` process becomes a supervisor:

- it starts N worker processes (``multiprocessing`` *spawn*: fresh interpreters, no fork of a
  process that has gRPC threads), each a whole :class:`~handlers.server.CertificateAuthority` on
  the same configuration and store, binding ``--port`` with SO_REUSEPORT so the kernel spreads
  new connections across them. Each loads the one bundle from the store (a race on an empty
  store still ends with one bundle: the stores' create is conditional) and, with
  ``--store-poll-interval``, picks up a new version in place as a single CA does; every worker
  applies a change within one poll interval;
- it serves ``/healthz`` (200 only when every worker is ready; the body lists each worker's own
  readiness), ``/livez`` and ``/metrics`` on the configured ports. Workers keep their own
  ``/healthz`` on an ephemeral loopback port that only the supervisor reads; their metrics are
  aggregated with prometheus-client's multiprocess mode (counters and histograms summed; expiry
  and coverage gauges take the least advanced live worker);
- a worker that exits unexpectedly is started again (backoff 1 s doubling to 30 s); SIGTERM or
  SIGINT stops every worker gracefully (in-flight calls get the grace period), then exits.

The per-caller ``--rate-limit`` applies per worker: one client connection always lands on one
worker, so a caller spreading connections over N workers may reach N times the limit.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from ca_core.config import Config
from ca_core.errors import CAError

from .http_endpoints import HttpEndpoints, json_route
from .worker_probes import Worker, hold_port, probe_all, worker_count

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # seconds for a worker to load the bundle and serve (store retries included)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds before restarting a worker that exited
PROBE_EVERY = 5.0  # seconds between liveness probes of the workers
MAX_MISSED_PROBES = 3  # a worker that misses this many in a row is killed and started again
LOOP_STALL = 30.0  # seconds without a supervision pass before /livez fails
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _worker_main(config: Config, index: int, conn: Connection) -> None:
    """A worker process: run one CA until SIGTERM or until the supervisor goes away. Worker 0
    alone counts the events every worker sees alike (issuer changed, bundle refused), so the
    summed metrics count each once."""
    from .heap import freeze_startup_heap
    from .logs import setup_logging
    from .server import CertificateAuthority

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    setup_logging(config.log_level, config.log_as_json)
    ca = CertificateAuthority(reuse_port=True, http_address="127.0.0.1", count_shared_events=index == 0)
    try:
        ca.start(config)
    except CAError as e:
        log.critical("worker %d cannot start the CA: %s", index, e)
        conn.send({"error": str(e)})
        raise SystemExit(1) from None
    freeze_startup_heap()
    # grpc_port None: the CA runs without gRPC (e.g. an expired issuer) and its /healthz says why
    conn.send({"pid": os.getpid(), "grpc_port": ca.grpc_port, "healthz_port": ca.healthz_port})

    def supervisor_gone() -> None:
        try:
            conn.recv()  # the supervisor never sends: this returns when its end closes
        except (EOFError, OSError):
            pass
        stop.set()

    threading.Thread(target=supervisor_gone, name="supervisor-watch", daemon=True).start()
    stop.wait()
    ca.stop()


class Supervisor:
    """Runs ``worker_count(config)`` CA worker processes on one gRPC port; see the module doc.

    ``start()`` returns once every worker has started (raises CAError naming the first failure,
    with nothing left running); ``run(stop)`` supervises until ``stop`` is set; ``stop()``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = worker_count(config)
        self._ctx = mp.get_context("spawn")
        self._workers: list[Worker] = []
        self._http: list[HttpEndpoints] = []
        self._multiproc_dir: str | None = None
        self._worker_config: Config | None = None
        self._port_holder: socket.socket | None = None
        self._restarts = 0
        self._heartbeat = time.monotonic()
        self._lock = threading.Lock()
        self.grpc_port: int | None = None
        self.healthz_port: int | None = None
        self.metrics_port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        try:
            self._multiproc_dir = tempfile.mkdtemp(prefix="sentryca-metrics-")
        except OSError as e:
            raise CAError(
                f"--workers needs a writable temporary directory for the workers' metrics "
                f"(TMPDIR, e.g. an emptyDir on /tmp): {e}"
            ) from None
        os.environ[MULTIPROC_ENV] = self._multiproc_dir  # inherited by the spawned workers
        try:
            self._port_holder, port = hold_port(cfg.listen_address, cfg.port)
            self._worker_config = cfg.with_changes(port=port, healthz_port=0, enable_metrics=False)
            pending = [self._spawn(i) for i in range(self.count)]
            deadline = time.monotonic() + START_TIMEOUT
            for worker in pending:
                self._await_start(worker, deadline)
            self.grpc_port = port
            self._serve_http()
        except BaseException:
            self.stop(grace=0)
            raise
        log.info(
            "supervisor: %d CA workers serving gRPC %s:%s (TLS, SO_REUSEPORT), healthz :%s%s",
            self.count,
            cfg.listen_address,
            self.grpc_port,
            self.healthz_port,
            f", metrics :{self.metrics_port}" if self.metrics_port else "",
        )

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set: start again (with backoff) a worker that exits, fails
        to start in time, or stops answering its liveness probe; never blocks on one worker."""
        backoff: dict[int, float] = {}
        restart_at: dict[int, float] = {}
        next_probe = time.monotonic() + PROBE_EVERY
        while not stop.is_set():
            self._heartbeat = now = time.monotonic()
            with self._lock:
                workers = list(self._workers)
            waiting = [w.process.sentinel for w in workers if w.process.is_alive()]
            waiting += [w.conn for w in workers if not w.serving and not w.conn.closed]
            wait(waiting, timeout=0.2) if waiting else stop.wait(0.2)
            now = time.monotonic()
            for worker in workers:
                if stop.is_set():
                    return
                i = worker.index
                if i in restart_at:
                    continue
                problem = self._check(worker, now)
                if problem is None:
                    continue
                self._retire(worker)
                # a worker that served for a minute earns a fresh backoff
                if worker.serving and now - worker.started_at > 60:
                    backoff[i] = BACKOFF_FIRST
                delay = backoff.get(i, BACKOFF_FIRST)
                backoff[i] = min(BACKOFF_MAX, delay * 2)
                restart_at[i] = now + delay
                log.error("worker %d (pid %s) %s; starting it again in %.0f s", i, worker.pid, problem, delay)
            for i, at in list(restart_at.items()):
                if now >= at and not stop.is_set():
                    del restart_at[i]
                    self._spawn(i)
                    self._restarts += 1
            if now >= next_probe:
                next_probe = now + PROBE_EVERY
                self._probe_liveness()

    def _check(self, worker: Worker, now: float) -> str | None:
        """None while ``worker`` is fine (or still starting in time), else what is wrong."""
        if not worker.serving:
            if worker.conn.poll():
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    return f"exited ({worker.process.exitcode}) before serving"
                if "error" in message:
                    return f"could not start: {message['error']}"
                self._started(worker, message)
                log.info("worker %d started again (pid %s)", worker.index, worker.pid)
                return None
            if not worker.process.is_alive():
                return f"exited ({worker.process.exitcode}) before serving"
            if now - worker.started_at > START_TIMEOUT:
                return f"did not start within {START_TIMEOUT:.0f} s"
            return None
        if not worker.process.is_alive():
            return f"exited with {worker.process.exitcode}"
        if worker.missed_probes >= MAX_MISSED_PROBES:
            return f"did not answer {worker.missed_probes} liveness probes in a row"
        return None

    def stop(self, grace: float = 5.0) -> None:
        """Stop every worker (SIGTERM: each drains for ``grace`` s), then the HTTP endpoints."""
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + grace + 10
        for w in workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                log.error("worker %d (pid %s) did not stop in time: killed", w.index, w.pid)
                w.process.kill()
                w.process.join()
            w.conn.close()
        for endpoint in self._http:
            endpoint.stop()
        self._http.clear()
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None
        if self._multiproc_dir:
            shutil.rmtree(self._multiproc_dir, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self._multiproc_dir:
                del os.environ[MULTIPROC_ENV]
            self._multiproc_dir = None
        self.grpc_port = self.healthz_port = self.metrics_port = None

    # --- workers ---------------------------------------------------------------------------

    def _spawn(self, index: int) -> Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main,
            args=(self._worker_config, index, child),
            name=f"sentryca-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        worker = Worker(index, process, parent)
        with self._lock:
            if index < len(self._workers):
                self._workers[index] = worker
            else:
                self._workers.append(worker)
        return worker

    def _await_start(self, worker: Worker, deadline: float) -> None:
        """Block until ``worker`` reports (the first start only). Raises CAError when it fails
        or misses ``deadline``."""
        if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
            raise CAError(f"worker {worker.index} did not start within {START_TIMEOUT:.0f} s")
        try:
            message = worker.conn.recv()
        except EOFError:
            worker.process.join(5)
            code = worker.process.exitcode
            raise CAError(f"worker {worker.index} exited ({code}) before serving") from None
        if "error" in message:
            raise CAError(message["error"])
        self._started(worker, message)

    def _started(self, worker: Worker, message: dict[str, Any]) -> None:
        worker.pid, worker.healthz_port, worker.serving = message["pid"], message["healthz_port"], True
        worker.started_at = time.monotonic()
        if message["grpc_port"] is None:
            log.error(
                "worker %d runs without gRPC: its /healthz says why (in the supervisor's)", worker.index
            )

    def _retire(self, worker: Worker) -> None:
        """``worker`` is done with: make sure its process is gone, drop its live gauges."""
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        pid = worker.pid or worker.process.pid
        if pid is not None and self._multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._multiproc_dir)
        worker.conn.close()

    def _probe_liveness(self) -> None:
        """Ask every serving worker's /livez at once; count the ones that do not answer."""
        with self._lock:
            serving = [w for w in self._workers if w.serving and w.process.is_alive()]
        answers = probe_all(serving, "/livez")
        for worker, answer in zip(serving, answers, strict=True):
            worker.missed_probes = 0 if answer.get("ready") else worker.missed_probes + 1

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the workers serving now."""
        with self._lock:
            return [w.pid for w in self._workers if w.pid is not None and w.process.is_alive()]

    # --- HTTP: readiness, liveness, metrics for all workers ----------------------------------

    def _serve_http(self) -> None:
        cfg = self.config
        health = HttpEndpoints(
            cfg.listen_address,
            cfg.healthz_port,
            {"/healthz": json_route(self.readiness), "/livez": json_route(self.liveness)},
        ).start()
        self._http.append(health)
        self.healthz_port = health.port
        if cfg.enable_metrics:
            metrics = HttpEndpoints(
                cfg.listen_address,
                cfg.metrics_port,
                {"/metrics": lambda: (200, "text/plain; version=0.0.4", self.exposition())},
            ).start()
            self._http.append(metrics)
            self.metrics_port = metrics.port

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every worker answers its /healthz with 200 (asked all at once, within
        worker_probes.PROBE_TIMEOUT); the body lists each."""
        with self._lock:
            workers = list(self._workers)
        details = probe_all(workers, "/healthz")
        ready = len(details) == self.count and all(d["ready"] for d in details)
        return ready, {"ready": ready, "workers": details, "worker_restarts": self._restarts}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive while the supervision loop runs (it has looked at its workers within
        LOOP_STALL seconds); a crash-looping worker shows in /healthz, not here."""
        with self._lock:
            alive = sum(1 for w in self._workers if w.process.is_alive())
        stalled = time.monotonic() - self._heartbeat
        ok = stalled < LOOP_STALL
        return ok, {
            "alive": ok,
            "workers_alive": alive,
            "workers": self.count,
            "loop_stalled_s": round(stalled, 1),
        }

    def exposition(self) -> bytes:
        """Every worker's metrics, aggregated (prometheus-client multiprocess mode)."""
        from prometheus_client import generate_latest

        return generate_latest(self._registry())

    def collect(self) -> Iterable[Metric]:
        """Every worker's metric families, aggregated (for ``--emf-interval``)."""
        return self._registry().collect()

    def _registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiproc_dir)
        return registry
