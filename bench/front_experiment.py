"""The front-end experiment: what the CA's signing path carries with a native HTTP/2 front end.

Not how the CA serves (``sentryca serve`` is a ``grpc.aio`` server, design §8.7). This measures
the route ``bench/README.md`` names for the next factor: HAProxy (Debian's ``haproxy``) terminates
TLS and HTTP/2 on the gRPC port and hands each ``SignCertificate`` call, its message buffered whole,
as one HTTP/1.1 request over a Unix socket to one of N Python processes (``front_signer.py``), each
running the CA's own ``CAServicer`` and ``Signer``. The gRPC framing passes through untouched;
``grpc-status`` travels in HTTP/1.1 trailers, which HAProxy turns into HTTP/2 trailers.

Left out, as an experiment may: the CA's lifecycle, store and bundle loading, the health
service, the renewal of its server certificate (HAProxy's is issued once, by the CA's rule, from
a bundle of its own) and the process supervision of ``--workers``.

``available()`` says why it cannot run, or None; ``front_server(workers, log_level)`` yields
(port, pids of HAProxy and every signer, trust anchors PEM), as ``run.ca_server`` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from processes import die_with_parent, free_port, stop, wait_listening

HERE = Path(__file__).resolve().parent
INSTALL_HINT = (
    "Debian: apt-get install haproxy; pip install httptools (the test extra); .ci/run installs both"
)
START_TIMEOUT = 60.0  # seconds for a signer to listen (it generates a bundle first)

CONFIG = """\
global
  nbthread 1
  maxconn 4096
  log stderr format short local0 err
defaults
  mode http
  log global
  option dontlognull
  option http-buffer-request
  timeout connect 1s
  timeout client 60s
  timeout http-request 10s
  timeout server 30s
frontend ca
  bind 127.0.0.1:{port} ssl crt {pem} alpn h2
  option forwardfor
  default_backend signers
backend signers
  balance leastconn
  http-reuse always
{servers}
"""


def available() -> str | None:
    """None when the experiment can run here, else why not (with the install hint)."""
    if shutil.which("haproxy") is None:
        return f"haproxy is not installed ({INSTALL_HINT})"
    if importlib.util.find_spec("httptools") is None:
        return f"httptools is not installed ({INSTALL_HINT})"
    return None


def _tls(directory: Path) -> tuple[Path, bytes]:
    """HAProxy's certificate, issued by the CA's own server-certificate rule
    (``ca_core.server_certificate``: localhost and 127.0.0.1, ECDSA P-256) from a fresh bundle:
    (HAProxy's PEM file of chain and key, the bundle's trust anchors PEM)."""
    from run import make_signer

    from ca_core.config import load_config
    from ca_core.server_certificate import issue_server_certificate

    signer = make_signer()
    cert = issue_server_certificate(signer, load_config({}, {}), datetime.now(UTC))
    pem = directory / "front.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(cert.chain_pem + cert.key_pem)
    return pem, signer.bundle.anchors_pem


def _tail(path: Path) -> str:
    return path.read_bytes()[-2000:].decode(errors="replace") if path.exists() else ""


def _ready(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait for a signer's ``ready`` line. Raises RuntimeError (with its log's tail) when it
    exits or says nothing else before ``deadline`` (``time.monotonic()``)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready or proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"a front-end signer did not start (exit {proc.poll()}):\n{_tail(log)}")
    proc.stdout.close()


@contextlib.contextmanager
def front_server(workers: int, log_level: str) -> Iterator[tuple[int, list[int], bytes]]:
    """HAProxy on 127.0.0.1 in front of ``workers`` signer processes, logging to files of a
    temporary directory as the CA's bench server does; yields (port, pids of the signers and
    HAProxy, trust anchors PEM) and stops them all on exit. Raises RuntimeError when the
    experiment cannot run here (``available()``), a signer does not start or HAProxy does not
    listen within ``START_TIMEOUT`` seconds (with the tail of its log)."""
    why = available()
    if why:
        raise RuntimeError(f"cannot run the front-end experiment: {why}")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="sentryca-bench-front-") as tmp, contextlib.ExitStack() as logs:
        d = Path(tmp)
        try:
            sockets = []
            for i in range(workers):
                path, log = d / f"signer-{i}.sock", d / f"signer-{i}.log"
                proc = subprocess.Popen(
                    [sys.executable, str(HERE / "front_signer.py"), str(path), log_level],
                    stdin=subprocess.PIPE,  # closed by stop(): the signer exits, as ca_server.py does
                    stdout=subprocess.PIPE,
                    stderr=logs.enter_context(log.open("wb")),
                )
                procs.append(proc)
                sockets.append((path, log))
            deadline = time.monotonic() + START_TIMEOUT
            for proc, (_, log) in zip(procs, sockets, strict=True):
                _ready(proc, log, deadline)
            pem, anchors = _tls(d)
            port = free_port()
            servers = "\n".join(f"  server signer{i} {path}" for i, (path, _) in enumerate(sockets))
            (d / "haproxy.cfg").write_text(CONFIG.format(port=port, pem=pem, servers=servers))
            log = d / "haproxy.log"
            haproxy = subprocess.Popen(
                ["haproxy", "-db", "-f", str(d / "haproxy.cfg")],
                stdin=subprocess.DEVNULL,
                stdout=logs.enter_context(log.open("wb")),
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # HAProxy has no stdin to watch
            )
            procs.append(haproxy)
            wait_listening(
                port,
                haproxy,
                START_TIMEOUT,
                lambda: f"haproxy did not listen (exit {haproxy.poll()}):\n{_tail(log)}",
            )
            yield port, [p.pid for p in procs], anchors
        finally:
            for proc in reversed(procs):
                stop(proc)
