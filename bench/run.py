"""Throughput and latency figures for the CA (``make bench``). Prints figures; asserts nothing.

Sections, from one run:
  1. crypto floor: raw ECDSA P-256 sign + verify (SHA-256) per second, one thread;
  2. core: ``Signer.sign`` (INSECURE validator) per second over distinct pre-generated CSRs,
     and its ratio to the floor, plus a per-stage breakdown of one sign;
  3. the CA in one process: signs per second and p50/p99 latency through the real TLS server
     (a subprocess) at several concurrency levels, with the CPU used by the server and by the
     load generator, then the same server with signing replaced by a canned answer;
  4. on all cores: the CA with ``--workers`` (one per CPU) and the peer, CFSSL's ``cfssl serve``
     (``bench/cfssl_peer.py``), each driven by the same load generator (one connection per
     client, one distinct CSR per call): closed-loop levels, then open-loop levels at
     fractions of each server's best rate (latency counted from when each call was due), peak
     RSS of every server process, and the ratios to the peer and to the crypto floor;
  5. machine facts.

Section 4 also drives the front-end experiment (``bench/front_experiment.py``: HAProxy
terminating TLS and HTTP/2 in front of as many Python processes running the CA's servicer and
signer, not how the CA serves) when HAProxy and httptools are installed, unless ``--skip-front``.

The load generator of sections 3 and 4 is the native one (``bench/loadgen``, Go and grpc-go,
built on demand by ``bench/native_loadgen.py``: ``NativeGenerator``) or the Python one (spawned
processes of blocking threads: ``LoadGenerator``), or both in turn (``--loadgen``).

``--soak N`` instead drives the CA with ``--workers`` for N signs and reports its memory.
Options: ``--quick`` (a short run), ``--json FILE`` (write the results as JSON); see ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.40  # core / floor
NOISY_PCT = 15.0  # other processes busier than this (% of one core) perturb the figures
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- helpers ---------------------------------------------------------------------------------


def make_csrs(n: int) -> list[bytes]:
    """``n`` PEM CSRs, each for its own fresh P-256 key (so all distinct)."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench")])
    out = []
    for _ in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies summed over all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return total - idle - steal, steal, total


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sleep_until(t: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``t``."""
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- 4. machine facts -------------------------------------------------------------------------


def machine_facts() -> dict[str, object]:
    """CPU model and counts, OS, and the versions that matter for these figures."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "cpu MHz") and key not in cpu:
                cpu[key] = value.strip()
    except OSError:
        pass
    from cryptography.hazmat.backends.openssl.backend import backend

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "cpu_family_model": f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}",
        "cpu_mhz": cpu.get("cpu MHz", "?"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": version("cryptography"),
        "openssl": backend.openssl_version_text(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- 1. crypto floor and 2. core --------------------------------------------------------------


def floor_round(n: int) -> float:
    """Raw ECDSA P-256 operations per second; one operation = one sign plus one verify (SHA-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    messages = [os.urandom(256) for _ in range(n)]
    algorithm = ec.ECDSA(hashes.SHA256())
    start = time.perf_counter()
    for m in messages:
        public.verify(key.sign(m, algorithm), m, algorithm)
    return n / (time.perf_counter() - start)


def make_signer():
    """A ``Signer`` over a fresh bundle with the INSECURE validator as the default."""
    from ca_core.bundle import generate_bundle
    from ca_core.service import Signer, SigningPolicy
    from ca_core.validators import InsecureValidator, TokenValidatorKind

    policy = SigningPolicy()
    bundle = generate_bundle(policy.trust_domain, policy.ca_identity, datetime.now(UTC))
    return Signer(
        bundle,
        policy,
        {TokenValidatorKind.INSECURE: InsecureValidator()},
        TokenValidatorKind.INSECURE,
    )


def core_round(signer, csrs: list[bytes], now: datetime) -> float:
    """``Signer.sign`` calls per second over ``csrs`` (parse + verify CSR, build, sign, PEM)."""
    from ca_core.validators import SignRequest, TokenValidatorKind

    requests = [
        SignRequest(app_id="app", namespace="default", csr_pem=c, token_validator=TokenValidatorKind.INSECURE)
        for c in csrs
    ]
    start = time.perf_counter()
    for r in requests:
        signer.sign(r, now)
    return len(requests) / (time.perf_counter() - start)


def breakdown_pass(signer, csrs: list[bytes], now: datetime) -> list[float]:
    """One replay of ``Signer.sign``'s steps over ``csrs`` with a clock between them: µs per sign
    in validator, csr_public_key, issue, and the whole pass."""
    from ca_core.csr import csr_public_key
    from ca_core.validators import SignRequest

    requests = [SignRequest(app_id="app", namespace="default", csr_pem=c) for c in csrs]
    clock = time.perf_counter
    spent = [0.0] * 3
    start = clock()
    for r in requests:
        t0 = clock()
        identity = signer.select_validator(r.token_validator).validate(r)
        t1 = clock()
        key = csr_public_key(r.csr_pem)
        t2 = clock()
        signer.issue(key, identity, now)
        t3 = clock()
        for i, (a, b) in enumerate(itertools.pairwise((t0, t1, t2, t3))):
            spent[i] += b - a
    return [x / len(requests) * 1e6 for x in (*spent, clock() - start)]


def core_breakdown(signer, csrs: list[bytes], now: datetime, passes: int = 3) -> dict[str, float]:
    """Microseconds per sign, by stage (the median of ``passes`` replays, by total), then the two
    cryptographic operations of a sign each timed alone."""
    share = len(csrs) // (passes + 1)
    runs = [breakdown_pass(signer, csrs[i * share : (i + 1) * share], now) for i in range(passes)]
    stages = sorted(runs, key=lambda r: r[-1])[passes // 2]
    names = (
        "validator (INSECURE checks)",
        "csr_public_key (PEM, key, self-signature)",
        "issue (build, sign, PEM chain)",
        "one pass through all stages",
    )
    out = dict(zip(names, stages, strict=True))
    clock = time.perf_counter
    loaded = [x509.load_pem_x509_csr(c) for c in csrs[passes * share :]]
    start = clock()
    for c in loaded:
        _ = c.is_signature_valid
    out["alone: CSR self-signature verify"] = (clock() - start) / len(loaded) * 1e6
    issuer_key = signer.bundle.issuer_key
    algorithm = ec.ECDSA(hashes.SHA256())
    messages = [os.urandom(400) for _ in range(share)]  # about the size of a leaf's TBSCertificate
    start = clock()
    for m in messages:
        issuer_key.sign(m, algorithm)
    out["alone: raw ECDSA sign (issuer key)"] = (clock() - start) / len(messages) * 1e6
    return out


def bench_inprocess(rounds: int, per_round: int) -> dict[str, object]:
    """Sections 1 and 2: floor and core rounds interleaved, so drift hits both alike."""
    signer = make_signer()
    csrs = make_csrs(rounds * per_round)
    assert len(set(csrs)) == len(csrs)
    now = datetime.now(UTC)
    floor_round(200)  # warm up
    core_round(signer, make_csrs(200), now)
    floors, cores = [], []
    own0, machine0, t0 = own_cpu_seconds(), machine_cpu(), time.monotonic()
    for i in range(rounds):
        floors.append(floor_round(per_round))
        cores.append(core_round(signer, csrs[i * per_round : (i + 1) * per_round], now))
    own1, machine1, t1 = own_cpu_seconds(), machine_cpu(), time.monotonic()
    other = (machine1[0] - machine0[0]) / CLK_TCK - (own1 - own0)
    ratios = [c / f for c, f in zip(cores, floors, strict=True)]
    breakdown = core_breakdown(signer, make_csrs(4000), now)
    return {
        "rounds": rounds,
        "ops_per_round": per_round,
        "floor_ops_per_s": statistics.median(floors),
        "floor_rounds": floors,
        "core_signs_per_s": statistics.median(cores),
        "core_rounds": cores,
        "core_over_floor": statistics.median(ratios),
        "core_over_floor_rounds": ratios,
        "breakdown_us": breakdown,
        "other_cpu_pct_during_rounds": 100 * max(0.0, other) / (t1 - t0),
    }


# --- 3-5. load through the network: the CA (one process, then workers) and the peer -------------


@dataclass
class LevelResult:
    """One load level: throughput, latency (of calls made within the measured window) and CPU.
    ``offered_per_s``: the open-loop rate asked for (None: closed loop, ``concurrency`` calls
    always in flight)."""

    concurrency: int
    offered_per_s: float | None
    client_processes: int
    threads_per_process: int
    completed: int
    errors: int
    seconds: float
    signs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float  # % of one core, every server process
    client_cpu_pct: float  # % of one core, all load-generator processes
    other_cpu_pct: float  # % of one core: everything else on the machine
    machine_idle_pct: float  # % of all cores
    steal_pct: float  # % of all cores
    server_cpu_us_per_sign: float
    client_cpu_us_per_sign: float
    csrs_exhausted: bool
    loadgen: str = "python"  # which generator ran the level: "python" or "native"
    failures: dict[str, int] | None = None  # failed calls by gRPC status / HTTP status (native only)


def _grpc_caller(target: tuple):
    """(call(item, thread), close, encode) for the CA: one TLS channel (connection) per load
    thread, as many sidecars each hold their own. With --workers the kernel assigns each new
    connection to a worker, so a handful of shared connections would measure its hashing luck."""
    import sentryca_client as client

    _, port, anchors = target
    channels: dict[int, object] = {}

    def call(csr_pem: bytes, thread: int) -> None:
        chan = channels.get(thread)
        if chan is None:
            chan = channels[thread] = client.channel(f"localhost:{port}", anchors)
        client.sign(chan, csr_pem, f"app-{thread}", "default")

    def close() -> None:
        for chan in channels.values():
            chan.close()

    return call, close, lambda csr_pem: csr_pem


def _cfssl_caller(target: tuple):
    """(call(item, thread), close, encode) for CFSSL: one kept-alive HTTP/1.1 connection per load
    thread; a call fails unless the answer is 200 with ``"success":true``."""
    import http.client

    from cfssl_peer import SIGN_PATH, request_body

    _, port = target
    connections: dict[int, http.client.HTTPConnection] = {}
    headers = {"Content-Type": "application/json"}

    def call(body: bytes, thread: int) -> None:
        conn = connections.get(thread)
        if conn is None:
            conn = connections[thread] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", SIGN_PATH, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del connections[thread]
            raise
        if response.status != 200 or b'"success":true' not in data:
            raise RuntimeError(f"cfssl answered {response.status}: {data[:200]!r}")

    def close() -> None:
        for conn in connections.values():
            conn.close()

    return call, close, request_body


CALLERS = {"grpc": _grpc_caller, "cfssl": _cfssl_caller}


def run_load(
    call,
    pool: list[bytes],
    first: int,
    threads: int,
    t_start: float,
    t_measure: float,
    t_end: float,
    rate: float,
) -> tuple[int, list[float], int, float, bool, int]:
    """``threads`` threads each making blocking calls from ``t_start`` to ``t_end``, each with
    the next unused item of ``pool`` (from index ``first``). Closed loop when ``rate`` is 0 (a
    thread calls again as soon as it has an answer); else open loop: call k is due at
    ``t_start + k / rate`` and its latency counts from then, so a late start (every thread busy)
    is charged to the server. Returns (calls completed within [t_measure, t_end], latencies in s
    of the calls begun within it, failed calls, this process's CPU seconds in it, whether the
    pool ran out, index of the next unused item)."""
    taken = itertools.count(first)  # next() on these is atomic under the GIL
    schedule = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    completed = [0] * threads
    errors = [0] * threads
    exhausted = [False] * threads
    cpu: list[float] = []

    def sampler() -> None:
        for t in (t_measure, t_end):
            sleep_until(t)
            cpu.append(own_cpu_seconds())

    def load(i: int) -> None:
        sleep_until(t_start)
        while True:
            if rate:
                began = t_start + next(schedule) / rate
                if began >= t_end:
                    return
                sleep_until(began)
            else:
                began = time.monotonic()
                if began >= t_end:
                    return
            index = next(taken)
            if index >= len(pool):
                exhausted[i] = True
                return
            try:
                call(pool[index], i)
            except Exception:  # noqa: BLE001 - counted and reported, never fatal to the bench
                errors[i] += 1
                continue
            done = time.monotonic()
            if t_measure <= done <= t_end:
                completed[i] += 1
                if began >= t_measure:
                    latencies[i].append(done - began)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(threads)]
    workers.append(threading.Thread(target=sampler))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flat = [x for per in latencies for x in per]
    return (
        sum(completed),
        flat,
        sum(errors),
        cpu[1] - cpu[0],
        any(exhausted),
        min(next(taken), len(pool)),
    )


def client_worker(target: tuple, commands, results) -> None:
    """A load-generator process for ``target`` (``("grpc", port, anchors)`` or ``("cfssl",
    port)``): holds its connection(s) and a pool of distinct CSRs (encoded for the target once,
    before any measurement), and runs the commands it is sent: ``prepare`` (top up the pool, warm
    the connection), ``run``, ``stop``."""
    sys.path.insert(0, str(HERE))
    call, close, encode = CALLERS[target[0]](target)
    pool: list[bytes] = []
    used = 0
    while True:
        command = commands.get()
        if command[0] == "stop":
            close()
            return
        if command[0] == "prepare":
            pool = pool[used:]
            used = 0
            pool += [encode(c) for c in make_csrs(max(0, command[1] - len(pool)))]
            for t in range(command[2]):  # warm every thread's connection (TLS handshake, paths)
                call(encode(make_csrs(1)[0]), t)
            results.put(("ready",))
            continue
        _, threads, t_start, t_measure, t_end, rate = command
        completed, latencies, errors, cpu, exhausted, used = run_load(
            call, pool, used, threads, t_start, t_measure, t_end, rate
        )
        results.put(("done", completed, latencies, errors, cpu, exhausted))


class LoadGenerator:
    """Up to ``processes`` client processes (spawned, so none shares the server's or the
    parent's GIL); the same program drives the CA and the peer."""

    def __init__(self, target: tuple, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(processes)]
        self.procs = [
            ctx.Process(target=client_worker, args=(target, q, self.results), daemon=True)
            for q in self.commands
        ]
        for p in self.procs:
            p.start()

    def run_level(
        self,
        concurrency: int,
        warmup: float,
        duration: float,
        csrs: int,
        server_pids: list[int],
        rate: float = 0.0,
    ) -> LevelResult:
        """Closed loop with ``concurrency`` calls in flight, or (``rate`` > 0) open loop offering
        ``rate`` calls/s from ``concurrency`` threads in all; ``csrs``: distinct CSRs to have ready
        for the calls (the processes share them out)."""
        nproc = min(concurrency, len(self.procs))
        threads = [concurrency // nproc + (1 if i < concurrency % nproc else 0) for i in range(nproc)]
        csrs_each = math.ceil(csrs / nproc) + concurrency
        for q, n in zip(self.commands, threads, strict=False):
            q.put(("prepare", csrs_each, n))
        for _ in range(nproc):
            self._result(timeout=60 + csrs_each * 0.001)  # generous: ~0.1 ms per CSR on this machine
        t_start = time.monotonic() + 0.2
        t_measure = t_start + warmup
        t_end = t_measure + duration
        for q, n in zip(self.commands, threads, strict=False):
            q.put(("run", n, t_start, t_measure, t_end, rate / nproc))
        sleep_until(t_measure)
        server0, machine0 = sum(cpu_seconds_of(p) for p in server_pids), machine_cpu()
        sleep_until(t_end)
        server1, machine1 = sum(cpu_seconds_of(p) for p in server_pids), machine_cpu()
        latencies: list[float] = []
        completed, errors, client_cpu, exhausted = 0, 0, 0.0, False
        for _ in range(nproc):
            _, done, lat, err, cpu, ex = self._result(timeout=60)
            completed += done
            latencies += lat
            errors += err
            client_cpu += cpu
            exhausted = exhausted or ex
        latencies.sort()
        busy = (machine1[0] - machine0[0]) / CLK_TCK
        total = (machine1[2] - machine0[2]) / CLK_TCK
        steal = (machine1[1] - machine0[1]) / CLK_TCK
        server_cpu = server1 - server0
        return LevelResult(
            concurrency=concurrency,
            offered_per_s=rate or None,
            client_processes=nproc,
            threads_per_process=max(threads),
            completed=completed,
            errors=errors,
            seconds=duration,
            signs_per_s=completed / duration,
            p50_ms=percentile(latencies, 50) * 1e3,
            p99_ms=percentile(latencies, 99) * 1e3,
            max_ms=(latencies[-1] if latencies else math.nan) * 1e3,
            server_cpu_pct=100 * server_cpu / duration,
            client_cpu_pct=100 * client_cpu / duration,
            other_cpu_pct=100 * max(0.0, busy - server_cpu - client_cpu) / duration,
            machine_idle_pct=100 * (1 - (busy + steal) / total) if total else math.nan,
            steal_pct=100 * steal / total if total else math.nan,
            server_cpu_us_per_sign=server_cpu / completed * 1e6 if completed else math.nan,
            client_cpu_us_per_sign=client_cpu / completed * 1e6 if completed else math.nan,
            csrs_exhausted=exhausted,
        )

    def _result(self, timeout: float) -> tuple:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            dead = [p.pid for p in self.procs if not p.is_alive()]
            raise RuntimeError(f"load generator did not answer in {timeout:.0f} s (exited: {dead})") from None

    def close(self) -> None:
        for q in self.commands:
            q.put(("stop",))
        for p in self.procs:
            p.join(timeout=10)


class NativeGenerator:
    """The native load generator (``bench/loadgen``, built by ``native_loadgen.binary()``) with
    ``LoadGenerator``'s interface: one Go process per level, one connection per goroutine
    (``concurrency`` of them), so one process holds every client and no GIL is in the way. Its
    CSRs are made here before the level (in ``processes`` spawned processes), encoded for the
    target and written to a file; those a level did not use are kept for the next one, so no CSR
    is sent twice. The client CPU of a level is the Go process's own (getrusage) over the
    measured window, which it is told as a ``time.monotonic()`` time, as the server's is sampled."""

    def __init__(self, target: tuple, processes: int, binary: Path) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.target, self.binary = target, binary
        self.processes = max(1, processes)
        self.dir = Path(tempfile.mkdtemp(prefix="sentryca-bench-loadgen-"))
        self.maker = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"))
        self.pool: list[bytes] = []  # request bodies not sent yet
        self.made = 0
        self.versions: dict[str, str] = {}
        if target[0] == "grpc":
            (self.dir / "ca.crt").write_bytes(target[2])

    def _encode(self, csr_pem: bytes) -> bytes:
        import native_loadgen
        from cfssl_peer import request_body

        self.made += 1
        if self.target[0] == "grpc":
            return native_loadgen.grpc_body(csr_pem, f"app-{self.made % 64}")
        return request_body(csr_pem)

    def _argv(self) -> list[str]:
        if self.target[0] == "grpc":
            _, port, _ = self.target
            return ["-mode", "grpc", "-target", f"127.0.0.1:{port}", "-ca", str(self.dir / "ca.crt")]
        from cfssl_peer import SIGN_PATH

        return ["-mode", "http", "-url", f"http://127.0.0.1:{self.target[1]}{SIGN_PATH}"]

    def run_level(
        self,
        concurrency: int,
        warmup: float,
        duration: float,
        csrs: int,
        server_pids: list[int],
        rate: float = 0.0,
    ) -> LevelResult:
        """As ``LoadGenerator.run_level``: ``concurrency`` goroutines (calls in flight, closed
        loop; senders of ``rate`` calls/s, open loop) over ``csrs`` distinct CSRs (plus one
        warm-up call per connection)."""
        import native_loadgen

        need = csrs + concurrency
        missing = need - len(self.pool)
        if missing > 0:
            chunks = [
                missing // self.processes + (i < missing % self.processes) for i in range(self.processes)
            ]
            for pems in self.maker.map(make_csrs, [c for c in chunks if c]):
                self.pool += [self._encode(c) for c in pems]
        bodies = self.dir / "bodies"
        native_loadgen.write_bodies(bodies, self.pool[:need])
        argv = [str(self.binary), *self._argv(), "-bodies", str(bodies), "-concurrency", str(concurrency)]
        argv += ["-warmup", repr(warmup), "-duration", repr(duration), "-rate", repr(rate), "-sync"]
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
            try:
                assert proc.stdin is not None and proc.stdout is not None
                ready, _, _ = select.select([proc.stdout], [], [], 60)  # connected and warmed
                if not ready or not proc.stdout.readline():
                    raise RuntimeError("the native load generator did not get ready in 60 s")
                t_start = time.monotonic() + 0.2
                t_measure = t_start + warmup
                t_end = t_measure + duration
                proc.stdin.write(f"start {t_start!r}\n".encode())
                proc.stdin.flush()
                sleep_until(t_measure)
                server0, machine0 = sum(cpu_seconds_of(p) for p in server_pids), machine_cpu()
                sleep_until(t_end)
                server1, machine1 = sum(cpu_seconds_of(p) for p in server_pids), machine_cpu()
                out, _ = proc.communicate(timeout=60)  # calls still in flight end (30 s deadline)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"{e}; native load generator (exit {proc.returncode}):\n{tail}") from None
            if proc.returncode != 0:
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"the native load generator exited {proc.returncode}:\n{tail}")
        r = json.loads(out.decode().strip().splitlines()[-1])
        del self.pool[: min(r["bodies_used"], need)]
        self.versions = {"go": r["go_version"], "grpc_go": r["grpc_go_version"]}
        busy = (machine1[0] - machine0[0]) / CLK_TCK
        total = (machine1[2] - machine0[2]) / CLK_TCK
        steal = (machine1[1] - machine0[1]) / CLK_TCK
        server_cpu, client_cpu, completed = server1 - server0, r["client_cpu_s"], r["completed"]

        def ms(key: str) -> float:
            return math.nan if r[key] is None else r[key]

        return LevelResult(
            concurrency=concurrency,
            offered_per_s=rate or None,
            client_processes=1,
            threads_per_process=concurrency,
            completed=completed,
            errors=r["errors"],
            seconds=duration,
            signs_per_s=completed / duration,
            p50_ms=ms("p50_ms"),
            p99_ms=ms("p99_ms"),
            max_ms=ms("max_ms"),
            server_cpu_pct=100 * server_cpu / duration,
            client_cpu_pct=100 * client_cpu / duration,
            other_cpu_pct=100 * max(0.0, busy - server_cpu - client_cpu) / duration,
            machine_idle_pct=100 * (1 - (busy + steal) / total) if total else math.nan,
            steal_pct=100 * steal / total if total else math.nan,
            server_cpu_us_per_sign=server_cpu / completed * 1e6 if completed else math.nan,
            client_cpu_us_per_sign=client_cpu / completed * 1e6 if completed else math.nan,
            csrs_exhausted=r["bodies_wrapped"],
            loadgen="native",
            failures=r["failures"],
        )

    def close(self) -> None:
        self.maker.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class Loadgen:
    """Which load generator drives the servers: ``kind`` "python" (``LoadGenerator``, with
    ``processes`` client processes) or "native" (``NativeGenerator`` running ``binary``, its CSRs
    made in ``processes`` processes)."""

    kind: str
    processes: int
    binary: Path | None = None

    def start(self, target: tuple) -> LoadGenerator | NativeGenerator:
        if self.kind == "native":
            assert self.binary is not None
            return NativeGenerator(target, self.processes, self.binary)
        return LoadGenerator(target, self.processes)


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants (e.g. multiprocessing's resource tracker), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo += children.get(pid, [])
    return out


def memory_kib(pids: list[int], field: str) -> int:
    """Sum of ``field`` (``VmRSS`` now, ``VmHWM`` peak) over ``pids``, in KiB, from /proc."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


@contextlib.contextmanager
def ca_server(log_level: str, canned: bool = False, workers: int = 1):
    """Run ``ca_server.py`` as a subprocess; yields (port, pids of every server process,
    trust anchors PEM)."""
    with (
        tempfile.TemporaryDirectory(prefix="sentryca-bench-") as credentials,
        tempfile.TemporaryFile() as stderr,
    ):
        argv = [sys.executable, str(HERE / "ca_server.py"), credentials, log_level]
        if canned:
            argv.append("canned")
        elif workers > 1:
            argv.append(f"workers={workers}")
        server = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # a file: an info-level server logs a line per certificate
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line:
                server.wait(timeout=15)
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"the CA server exited before serving:\n{tail}")
            info = json.loads(line)
            yield info["port"], info["pids"], (Path(credentials) / "ca.crt").read_bytes()
        finally:
            if server.stdin:
                server.stdin.close()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@dataclass
class Run:
    """A server's section: closed-loop levels, then open-loop levels at fractions of its best."""

    name: str
    levels: list[LevelResult]
    open_levels: list[LevelResult]
    peak_rss_mib: float
    rss_mib: float

    @property
    def best(self) -> float:
        return max((r.signs_per_s for r in self.levels), default=0.0)


def drive(
    name: str,
    target: tuple,
    pids: list[int],
    levels: list[int],
    warmup: float,
    duration: float,
    loadgen: Loadgen,
    rate_cap: float,
    open_fractions: tuple[float, ...] = (),
    open_threads: int = 64,
) -> Run:
    """Drive a server at each closed-loop level, then open loop at ``open_fractions`` of its best
    closed-loop rate."""
    gen = loadgen.start(target)
    try:
        out = []
        for c in levels:
            # Enough distinct CSRs for the fastest rate the server could reach, with margin.
            csrs = math.ceil(rate_cap * (warmup + duration))
            out.append(gen.run_level(c, warmup, duration, csrs, pids))
        best = max((r.signs_per_s for r in out), default=0.0)
        opened = []
        for fraction in open_fractions:
            rate = fraction * best
            csrs = math.ceil(rate * (warmup + duration) * 1.2)
            opened.append(gen.run_level(open_threads, warmup, duration, csrs, pids, rate=rate))
        tree = process_tree(pids)  # every server process, helpers included
        return Run(name, out, opened, memory_kib(tree, "VmHWM") / 1024, memory_kib(tree, "VmRSS") / 1024)
    finally:
        gen.close()


def bench_network(
    args, core_rate: float, warmup: float, duration: float, loadgen: Loadgen
) -> dict[str, object]:
    """Sections 3-5: the CA in one process (and with signing canned), the CA with --workers, and
    the peer, each driven by the same load generator ``loadgen``."""
    out: dict[str, object] = {
        "loadgen": loadgen.kind,
        "client_processes": args.client_processes,
        "warmup_s": warmup,
    }
    if loadgen.kind == "native":
        import native_loadgen

        out["loadgen_versions"] = native_loadgen.version()
    fractions = tuple(float(f) for f in args.open_fractions.split(",") if f.strip())
    if _levels(args.concurrency):
        with ca_server(args.server_log_level) as (port, pids, anchors):
            run = drive(
                "CA, 1 process",
                ("grpc", port, anchors),
                pids,
                _levels(args.concurrency),
                warmup,
                duration,
                loadgen,
                1.5 * core_rate,
            )
        out["single"] = run
        if _levels(args.baseline_concurrency):
            with ca_server(args.server_log_level, canned=True) as (port, pids, anchors):
                out["canned"] = drive(
                    "CA, 1 process, signing canned",
                    ("grpc", port, anchors),
                    pids,
                    _levels(args.baseline_concurrency),
                    warmup,
                    duration,
                    loadgen,
                    3 * run.best + 500,
                )
    workers = args.workers or len(os.sched_getaffinity(0))
    peer_levels = _levels(args.peer_concurrency)

    def all_cores(name: str, target: tuple, pids: list[int], rate_cap: float) -> Run:
        """Section 4's levels (closed, then open loop) for one server."""
        return drive(name, target, pids, peer_levels, warmup, duration, loadgen, rate_cap, fractions)

    if peer_levels:
        with ca_server(args.server_log_level, workers=workers) as (port, pids, anchors):
            out["workers"] = all_cores(
                f"CA, --workers {workers}", ("grpc", port, anchors), pids, workers * 1.5 * core_rate
            )
        out["workers_count"] = workers
        import cfssl_peer

        missing = cfssl_peer.available()
        if missing:
            out["peer_missing"] = missing
        else:
            out["peer_version"] = cfssl_peer.version()
            with cfssl_peer.cfssl_server() as (port, pids):
                out["peer"] = all_cores("cfssl serve", ("cfssl", port), pids, 20_000)
        import front_experiment

        missing = front_experiment.available()
        if args.skip_front:
            out["front_missing"] = "skipped (--skip-front)"
        elif missing:
            out["front_missing"] = missing
        else:
            with front_experiment.front_server(workers, args.server_log_level) as (port, pids, anchors):
                out["front"] = all_cores(
                    f"experiment: HAProxy + {workers} signer processes",
                    ("grpc", port, anchors),
                    pids,
                    workers * 1.5 * core_rate,
                )
    return out


def soak(args, warmup: float, loadgen: Loadgen) -> dict[str, object]:
    """``--soak N``: the CA with --workers under closed-loop load until N signs, resident memory
    of all its processes sampled after every 20 s stretch."""
    workers = args.workers or len(os.sched_getaffinity(0))
    concurrency = _levels(args.peer_concurrency)[-1] if _levels(args.peer_concurrency) else 32
    samples: list[tuple[int, float]] = []
    signed = 0
    with ca_server(args.server_log_level, workers=workers) as (port, pids, anchors):
        gen = loadgen.start(("grpc", port, anchors))
        try:
            stretch = 20.0
            while signed < args.soak:
                level = gen.run_level(concurrency, warmup, stretch, 4000 * int(stretch), pids)
                signed += level.completed
                if level.errors:
                    raise RuntimeError(f"{level.errors} failed calls during the soak")
                samples.append((signed, memory_kib(process_tree(pids), "VmRSS") / 1024))
                print(f"  {signed:>8} signs: {samples[-1][1]:7.1f} MiB", file=sys.stderr, flush=True)
        finally:
            gen.close()
        peak = memory_kib(process_tree(pids), "VmHWM") / 1024
    first = samples[min(1, len(samples) - 1)][1]  # after the first stretch: caches warm
    last = samples[-1][1]
    return {
        "workers": workers,
        "concurrency": concurrency,
        "signs": signed,
        "samples": samples,
        "rss_after_first_stretch_mib": first,
        "rss_at_end_mib": last,
        "growth_pct": 100 * (last - first) / first,
        "peak_rss_mib": peak,
    }


# --- output -----------------------------------------------------------------------------------

TARGET_PEER_RATIO = 0.5  # CA with --workers / cfssl, signs per second
TARGET_P99_MS = 10.0  # at half of the maximum rate
TARGET_ONE_PROCESS = 1500.0  # signs per second, the CA in one process
TARGET_RSS_MIB = 200.0  # every server process together


def _level_rows(levels: list[dict]) -> None:
    print(
        f"   {'load':>10} {'signs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'server':>7} {'client':>7} {'other':>6} {'idle':>5} {'server µs':>10} {'client µs':>10}"
    )
    for r in levels:
        load = f"{r['offered_per_s']:.0f}/s" if r.get("offered_per_s") else f"{r['concurrency']} in fl."
        print(
            f"   {load:>10} {r['signs_per_s']:8.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f}"
            f" {r['max_ms']:7.2f} {r['server_cpu_pct']:6.0f}% {r['client_cpu_pct']:6.0f}%"
            f" {r['other_cpu_pct']:5.0f}% {r['machine_idle_pct']:4.0f}%"
            f" {r['server_cpu_us_per_sign']:10.0f} {r['client_cpu_us_per_sign']:10.0f}"
        )
        notes = []
        if r["errors"]:
            by_code = r.get("failures") or {}
            codes = ", ".join(f"{code} {n}" for code, n in sorted(by_code.items()))
            notes.append(f"{r['errors']} failed calls" + (f" ({codes})" if codes else ""))
        if r["csrs_exhausted"]:
            notes.append("ran out of pre-generated CSRs: throughput understated")
        if r["steal_pct"] >= 1:
            notes.append(f"{r['steal_pct']:.0f}% CPU steal")
        if r["other_cpu_pct"] >= NOISY_PCT:
            notes.append("other processes were busy: figures perturbed")
        if notes:
            print(f"   {'':>10} ^ {'; '.join(notes)}")


def _run_block(title: str, run: dict) -> None:
    print(f"   {title}: peak RSS {run['peak_rss_mib']:.0f} MiB (all its processes)")
    _level_rows(run["levels"] + run["open_levels"])


def _best(run: dict) -> float:
    return max((r["signs_per_s"] for r in run["levels"]), default=0.0)


def _half_rate(run: dict) -> dict | None:
    """The open-loop level offered closest to half of the best closed-loop rate."""
    half = _best(run) / 2
    levels = [r for r in run["open_levels"] if r["offered_per_s"]]
    return min(levels, key=lambda r: abs(r["offered_per_s"] - half)) if levels else None


def _load_line(net: dict, m: dict) -> str:
    """How the servers of ``net`` were loaded, for the report."""
    shared = (
        f"{net['warmup_s']} s warm-up per level;"
        f" the {m['usable_cpus']} CPUs are shared by server and load generator"
    )
    if net["loadgen"] == "native":
        v = net.get("loadgen_versions", {})
        return (
            f"   load: the native generator (bench/loadgen: {v.get('go', 'Go')},"
            f" grpc-go {v.get('grpc_go', '?')})"
            " for every server: one process, one connection per client goroutine, distinct CSRs;"
            f" {shared}; client CPU = the Go process"
        )
    return (
        f"   load: the Python generator for every server: up to {net['client_processes']} client"
        f" processes of blocking threads, distinct CSRs; {shared}"
    )


def _print_network(net: dict, m: dict, ip: dict) -> None:
    """Sections 3 and 4 of the report, for one load generator's pass."""
    if "warmup_s" not in net:  # --skip-network
        return
    which = f" [{net['loadgen']} load generator]"
    load = _load_line(net, m)
    if "single" in net:
        print(f"== 3. The CA in one process: gRPC over TLS on 127.0.0.1, INSECURE validator{which} ==")
        print(load)
        _run_block("CA, 1 process", net["single"])
        if "canned" in net:
            print("   same server, Signer.sign replaced by a canned answer (transport + servicer only):")
            _level_rows(net["canned"]["levels"])
            ceiling = _best(net["canned"])
            print(
                f"   transport ceiling (best canned): {ceiling:.0f} calls/s; the real one-process CA's best"
                f" {_best(net['single']):.0f} signs/s is {100 * _best(net['single']) / ceiling:.0f} % of it"
                if ceiling
                else "   transport ceiling: no canned call completed"
            )
        print(
            "   load: calls in flight (closed loop) or offered/s (open loop, latency from when each call"
            " was due); server/client/other: CPU as % of one core; idle: % of all cores;"
            " µs: CPU per completed sign"
        )
        print()
    if "workers" in net:
        print(
            f"== 4. On all cores: the CA with --workers {net['workers_count']} (gRPC/TLS) beside the peer"
            f" CFSSL (HTTP/1.1 JSON API){which} =="
        )
        print(load)
        _run_block(f"CA, --workers {net['workers_count']}", net["workers"])
        if "peer" in net:
            _run_block(f"cfssl serve ({net['peer_version']}), ECDSA P-256 CA", net["peer"])
        else:
            print(f"   peer not measured: {net['peer_missing']}")
        if "front" in net:
            print(
                "   the front-end experiment (bench/front_experiment.py): HAProxy terminates TLS and"
                " HTTP/2 and passes each call, buffered, over HTTP/1.1 to one of"
                f" {net['workers_count']} processes running the CA's servicer and signer:"
            )
            _run_block(f"HAProxy + {net['workers_count']} signers", net["front"])
        elif "front_missing" in net:
            print(f"   front-end experiment not measured: {net['front_missing']}")
        ca = net["workers"]
        floor = ip["floor_ops_per_s"]
        print("   summary:")
        print(
            f"     max signs/s: CA {_best(ca):.0f}"
            + (f", cfssl {_best(net['peer']):.0f}" if "peer" in net else "")
            + f"; crypto floor × {m['usable_cpus']} cores = {floor * m['usable_cpus']:.0f}"
            + (f"; transport ceiling, 1 process: {_best(net['canned']):.0f}" if "canned" in net else "")
        )
        if "single" in net:
            one = _best(net["single"])
            verdict = "met" if one >= TARGET_ONE_PROCESS else "NOT met"
            print(f"     CA in one process: {one:.0f} signs/s (target ≥ {TARGET_ONE_PROCESS:.0f}: {verdict})")
        if "peer" in net:
            r = _best(ca) / _best(net["peer"])
            verdict = "met" if r >= TARGET_PEER_RATIO else "NOT met"
            print(f"     CA / cfssl = {r:.2f}  (target ≥ {TARGET_PEER_RATIO}: {verdict})")
            if "front" in net:
                r = _best(net["front"]) / _best(net["peer"])
                print(f"     experiment (HAProxy front end, not the CA's serving model) / cfssl = {r:.2f}")
        for name, run in (("CA", ca), ("cfssl", net.get("peer"))):
            if run is None:
                continue
            half = _half_rate(run)
            if half is not None:
                verdict = (
                    ""
                    if name != "CA"
                    else f" (target ≤ {TARGET_P99_MS:.0f} ms: "
                    + ("met)" if half["p99_ms"] <= TARGET_P99_MS else "NOT met)")
                )
                print(
                    f"     {name} at {half['offered_per_s']:.0f}/s offered (~half its max):"
                    f" p50 {half['p50_ms']:.2f} ms, p99 {half['p99_ms']:.2f} ms{verdict}"
                )
        verdict = "met" if ca["peak_rss_mib"] <= TARGET_RSS_MIB else "NOT met"
        print(f"     CA peak RSS {ca['peak_rss_mib']:.0f} MiB (target ≤ {TARGET_RSS_MIB:.0f}: {verdict})")
        print()


def print_report(results: dict) -> None:
    """The human-readable report of ``results`` on stdout."""
    m = results["machine"]
    ip = results["inprocess"]
    n = f"median of {ip['rounds']} rounds × {ip['ops_per_round']}"
    print("== 1. Crypto floor: raw ECDSA P-256 sign + verify (SHA-256), one thread ==")
    print(f"   {ip['floor_ops_per_s']:8.0f} ops/s     ({n}; rounds {_join(ip['floor_rounds'])})")
    print()
    print("== 2. Core in-process: Signer.sign, INSECURE (parse + verify CSR, build, sign, PEM) ==")
    rates = _join(ip["core_rounds"])
    print(f"   {ip['core_signs_per_s']:8.0f} signs/s   ({n} distinct CSRs; rounds {rates})")
    ratio = ip["core_over_floor"]
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"   core / floor = {ratio:.3f}  (target ≥ {TARGET_RATIO:.2f}: {verdict}; median of round ratios)")
    if ip["other_cpu_pct_during_rounds"] >= NOISY_PCT:
        print(f"   ! other processes used {ip['other_cpu_pct_during_rounds']:.0f}% of a core meanwhile")
    print("   where one sign's time goes (µs; Signer.sign's steps replayed with a clock between them):")
    for name, us in ip["breakdown_us"].items():
        print(f"     {name:38s} {us:7.1f}")
    print()
    for key in [k for k in results if k.startswith("network")]:
        _print_network(results[key], m, ip)
    print("== 5. Machine ==")
    print(f"   CPU: {m['cpu_model']} ({m['cpu_family_model']}, {m['cpu_mhz']} MHz)")
    print(f"   {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); {m['os']}")
    print(
        f"   {m['python']}; cryptography {m['cryptography']} ({m['openssl']}); "
        f"grpcio {m['grpcio']}; protobuf {m['protobuf']}"
    )
    used = results["loadgen"]["used"]
    versions = next(
        (
            n["loadgen_versions"]
            for k, n in results.items()
            if k.startswith("network") and n.get("loadgen_versions")
        ),
        None,
    )
    native = f" ({versions['go']}, grpc-go {versions['grpc_go']})" if versions else ""
    print(f"   load generator: {' then '.join(used)}{native if 'native' in used else ''}")
    if results["loadgen"]["note"]:
        print(f"   ! {results['loadgen']['note']}")
    print(f"   load average at start: {m['load_average_at_start']}; run took {results['elapsed_s']:.0f} s")


def print_soak(s: dict) -> None:
    print(
        f"== Soak: the CA with --workers {s['workers']}, {s['concurrency']} in flight, {s['signs']} signs"
        f" [{s['loadgen']} load generator] =="
    )
    for signed, mib in s["samples"]:
        print(f"   {signed:>8} signs  RSS {mib:7.1f} MiB")
    print(
        f"   RSS after the first stretch {s['rss_after_first_stretch_mib']:.1f} MiB, at the end"
        f" {s['rss_at_end_mib']:.1f} MiB: {s['growth_pct']:+.1f} % (target ≤ +10 %); peak"
        f" {s['peak_rss_mib']:.1f} MiB"
    )


def _json_safe(value: object) -> object:
    """``value`` with NaN floats replaced by None (strict JSON has no NaN); dataclasses as dicts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "__dataclass_fields__"):
        return _json_safe(vars(value))
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _join(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run: fewer rounds, 2 s load levels")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--concurrency",
        default="1,4,16",
        help="in-flight calls per level for the CA in one process ('' to skip; default 1,4,16)",
    )
    p.add_argument(
        "--baseline-concurrency",
        default="1,16",
        help="levels for the one-process CA with signing canned ('' to skip; default 1,16)",
    )
    p.add_argument(
        "--peer-concurrency",
        default="8,32",
        help="in-flight calls per level for the CA with --workers and for cfssl ('' to skip; default 8,32)",
    )
    p.add_argument(
        "--open-fractions",
        default="0.25,0.5,0.75",
        help="open-loop levels, as fractions of each server's best closed-loop rate (default 0.25,0.5,0.75)",
    )
    p.add_argument("--workers", type=int, default=0, help="--workers of the CA (default 0: one per CPU)")
    p.add_argument("--duration", type=float, help="measured seconds per load level (default 8; quick 2)")
    p.add_argument(
        "--loadgen",
        default="auto",
        choices=["auto", "native", "python", "both"],
        help="load generator: native (bench/loadgen, Go), python, or both in turn (default auto: native"
        " when go and grpc-go's sources are installed, else python, saying so)",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="Python load-generator processes (the native one: processes making its CSRs) (default 2)",
    )
    p.add_argument(
        "--server-log-level",
        default="warn",
        choices=["debug", "info", "warn", "error"],
        help="the CA server's log level (default warn; info logs a line per signed certificate)",
    )
    p.add_argument("--skip-network", action="store_true", help="only the in-process sections")
    p.add_argument(
        "--skip-front",
        action="store_true",
        help="do not drive the front-end experiment in section 4 (bench/front_experiment.py)",
    )
    p.add_argument(
        "--soak",
        type=int,
        metavar="N",
        help="instead of the report: N signs against the CA with --workers, watching its memory",
    )
    return p.parse_args(argv)


def _levels(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def choose_loadgens(choice: str, processes: int) -> tuple[list[Loadgen], str | None]:
    """The load generators ``--loadgen`` asks for, in the order they run (the first is the
    report's main one), built; and a note when "auto" fell back to the Python one."""
    import native_loadgen

    missing = native_loadgen.available()
    processes = max(1, processes)
    asked = choice
    if choice == "auto":
        if missing:
            note = f"native load generator not available ({missing}): the Python one was used"
            return [Loadgen("python", processes)], note
        choice = "native"
    if missing and choice != "python":
        raise SystemExit(f"--loadgen {choice}: {missing}")
    out = []
    if choice in ("native", "both"):
        print("building the native load generator (bench/loadgen)…", file=sys.stderr, flush=True)
        try:
            out.append(Loadgen("native", processes, native_loadgen.binary()))
        except RuntimeError as e:
            if asked != "auto":
                raise SystemExit(str(e)) from None
            note = f"native load generator not built ({e}): the Python one was used"
            return [Loadgen("python", processes)], note
    if choice in ("python", "both"):
        out.append(Loadgen("python", processes))
    return out, None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rounds, per_round = (2, 500) if args.quick else (5, 2000)
    duration = args.duration or (2.0 if args.quick else 8.0)
    warmup = 0.5 if args.quick else 1.0
    sys.path.insert(0, str(HERE))
    loadgens, note = choose_loadgens(args.loadgen, args.client_processes)
    if note:
        print(note, file=sys.stderr, flush=True)
    if args.soak:
        result = soak(args, warmup, loadgens[0])
        result["loadgen"] = loadgens[0].kind
        print_soak(result)
        if args.json:
            Path(args.json).write_text(json.dumps(_json_safe(result), indent=2) + "\n")
        return 0
    results: dict[str, object] = {"machine": machine_facts(), "quick": args.quick}
    results["loadgen"] = {"asked": args.loadgen, "used": [g.kind for g in loadgens], "note": note}
    print("generating CSRs, measuring in-process…", file=sys.stderr, flush=True)
    inprocess = bench_inprocess(rounds, per_round)
    results["inprocess"] = inprocess
    for i, loadgen in enumerate(loadgens):
        key = "network" if i == 0 else f"network_{loadgen.kind}"
        if args.skip_network:
            results[key] = {"loadgen": loadgen.kind, "client_processes": args.client_processes}
            continue
        print(f"measuring through the network ({loadgen.kind} load generator)…", file=sys.stderr, flush=True)
        results[key] = bench_network(args, float(inprocess["core_signs_per_s"]), warmup, duration, loadgen)  # type: ignore[arg-type]
    results["elapsed_s"] = time.monotonic() - started
    results = _json_safe(results)  # type: ignore[assignment]
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
