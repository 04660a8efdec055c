"""What the ``--workers`` supervisor (``handlers.workers``) needs besides supervising: how many
workers, the record of one worker, probing their loopback ``/healthz``/``/livez``, and holding the
gRPC port for the supervisor's life (design §8.6)."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ca_core.config import Config
from ca_core.errors import CAError

PROBE_TIMEOUT = 1.0  # seconds for a worker's /healthz or /livez answer (all asked at once)


def worker_count(config: Config, cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """``config.workers``, with 0 meaning one per usable CPU: the CPUs this process may run on,
    capped by a cgroup v2 CPU quota (a container limited to 1.5 CPUs gets 2 workers, not one
    per CPU of the node)."""
    if config.workers:
        return config.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = open(cgroup_cpu_max).read().split()[:2]  # "max 100000" or "150000 100000"
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


@dataclass
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    process: Any  # multiprocessing.Process (spawn context)
    conn: Connection
    pid: int | None = None
    healthz_port: int | None = None
    serving: bool = False  # reported ready to serve (gRPC, or its /healthz saying why not)
    started_at: float = field(default_factory=time.monotonic)
    missed_probes: int = 0


def probe_all(workers: list[Worker], path: str) -> list[dict[str, Any]]:
    """``probe`` of every worker concurrently; the whole takes at most about PROBE_TIMEOUT."""
    if not workers:
        return []
    results: list[dict[str, Any]] = [{} for _ in workers]

    def one(i: int) -> None:
        results[i] = probe(workers[i], path)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(workers))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + PROBE_TIMEOUT + 0.5
    for i, t in enumerate(threads):
        t.join(max(0.0, deadline - time.monotonic()))
        if not results[i]:
            results[i] = {
                "worker": workers[i].index,
                "pid": workers[i].pid,
                "ready": False,
                "error": "no answer",
            }
    return results


def probe(worker: Worker, path: str) -> dict[str, Any]:
    """GET ``path`` (/healthz or /livez) of ``worker``'s loopback HTTP endpoint: ready when 200."""
    out: dict[str, Any] = {"worker": worker.index, "pid": worker.pid, "alive": worker.process.is_alive()}
    if not out["alive"] or worker.healthz_port is None:
        return {**out, "ready": False, "error": "starting" if out["alive"] else "not running"}
    url = f"http://127.0.0.1:{worker.healthz_port}{path}"
    try:
        # a fixed http://127.0.0.1 URL: the worker's own /healthz
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as r:  # nosec B310
            return {**out, "ready": True, "details": json.loads(r.read())}
    except urllib.error.HTTPError as e:
        return {**out, "ready": False, "details": json.loads(e.read() or b"{}")}
    except (OSError, ValueError) as e:
        return {**out, "ready": False, "error": f"no answer from the worker's /healthz: {e}"}


def hold_port(address: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to ``(address, port)`` (0: a free port) without SO_REUSEPORT, so binding
    fails when anything else holds the port (another CA, another supervisor), then marked
    SO_REUSEPORT so the workers can join it. Held, not listening (it takes no connections), for
    the supervisor's life: the port stays this CA's even while every worker restarts. Returns
    (socket, port); raises CAError when the port is taken."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((address, port))
    except OSError as e:
        s.close()
        raise CAError(f"cannot listen on {address}:{port}: {e.strerror}") from None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s, s.getsockname()[1]
