"""The front-end experiment: what the CA's signing path carries with a native HTTP/2 front end.

Not how the CA serves (``sentryca serve`` is a ``grpc.aio`` server, design §8.7). This measures
the route ``bench/README.md`` names for the next factor: HAProxy (Debian's ``haproxy``) terminates
TLS and HTTP/2 on the gRPC port and hands each ``SignCertificate`` call, its message buffered whole,
as one HTTP/1.1 request over a Unix socket to one of N Python processes (``front_signer.py``), each
running the CA's own ``CAServicer`` and ``Signer``. The gRPC framing passes through untouched;
``grpc-status`` travels in HTTP/1.1 trailers, which HAProxy turns into HTTP/2 trailers.

Left out, as an experiment may: the CA's lifecycle, store and bundle loading, the health
service, its own server certificate (a self-signed ECDSA P-256 one stands in; handshakes fall
outside the measured window) and the process supervision of ``--workers``.

``available()`` says why it cannot run, or None; ``front_server(workers, log_level)`` yields
(port, pids of HAProxy and every signer, trust anchors PEM), as ``run.ca_server`` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from processes import free_port, stop, wait_listening

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
    """A self-signed ECDSA P-256 certificate for localhost: (HAProxy's PEM file, certificate PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = directory / "front.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(cert_pem + key_pem)
    return pem, cert_pem


@contextlib.contextmanager
def front_server(workers: int, log_level: str) -> Iterator[tuple[int, list[int], bytes]]:
    """HAProxy on 127.0.0.1 in front of ``workers`` signer processes; yields (port, pids, anchors)."""
    why = available()
    if why:
        raise RuntimeError(f"cannot run the front-end experiment: {why}")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="sentryca-bench-front-") as tmp:
        d = Path(tmp)
        try:
            sockets = []
            for i in range(workers):
                path = d / f"signer-{i}.sock"
                proc = subprocess.Popen(
                    [sys.executable, str(HERE / "front_signer.py"), str(path), log_level],
                    stdout=subprocess.PIPE,
                )
                procs.append(proc)
                sockets.append(path)
            for proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != b"ready":
                    raise RuntimeError(f"a front-end signer exited before serving ({proc.wait()})")
            pem, anchors = _tls(d)
            port = free_port()
            servers = "\n".join(f"  server signer{i} {path}" for i, path in enumerate(sockets))
            (d / "haproxy.cfg").write_text(CONFIG.format(port=port, pem=pem, servers=servers))
            haproxy = subprocess.Popen(["haproxy", "-q", "-db", "-f", str(d / "haproxy.cfg")])
            procs.append(haproxy)
            wait_listening(
                port, haproxy, START_TIMEOUT, lambda: f"haproxy did not listen (exit {haproxy.poll()})"
            )
            yield port, [p.pid for p in procs], anchors
        finally:
            for proc in reversed(procs):
                stop(proc)
