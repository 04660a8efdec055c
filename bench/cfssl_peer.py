"""The peer CA for ``make bench``: CFSSL (Debian's ``golang-cfssl``) serving its HTTP API.

``cfssl_server()`` makes an ECDSA P-256 root with ``cfssl gencert -initca``, starts
``cfssl serve`` with it on 127.0.0.1 (a free port), and yields ``(port, [pid])``. Each request
of the load generator is ``POST /api/v1/cfssl/sign`` with ``{"certificate_request": CSR}``,
one distinct CSR per request, over a kept-alive HTTP/1.1 connection; CFSSL signs a 24 h leaf
with the root's key (SHA-256), the same algorithm as the project's issuer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from processes import free_port, stop, wait_listening

SIGN_PATH = "/api/v1/cfssl/sign"
ROOT_CSR = {"CN": "bench peer root", "key": {"algo": "ecdsa", "size": 256}, "names": [{"O": "bench"}]}
SIGNING = {
    "signing": {
        "default": {
            "expiry": "24h",
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }
    }
}


def available() -> str | None:
    """None when ``cfssl`` can run, else why not (with the install hint)."""
    if shutil.which("cfssl") is None:
        return "cfssl is not installed (Debian: apt-get install golang-cfssl; .ci/run installs it)"
    return None


def version() -> str:
    r = subprocess.run(["cfssl", "version"], capture_output=True, text=True, check=False)
    return " ".join(r.stdout.split()) or "unknown"


def request_body(csr_pem: bytes) -> bytes:
    """The JSON body of one sign request."""
    return json.dumps({"certificate_request": csr_pem.decode()}).encode()


@contextlib.contextmanager
def cfssl_server() -> Iterator[tuple[int, list[int]]]:
    """Run ``cfssl serve`` with a fresh ECDSA P-256 CA; yields (port, [pid])."""
    with tempfile.TemporaryDirectory(prefix="sentryca-bench-cfssl-") as tmp:
        d = Path(tmp)
        gen = subprocess.run(
            ["cfssl", "gencert", "-initca", "-"],
            input=json.dumps(ROOT_CSR),
            capture_output=True,
            text=True,
            check=True,
        )
        out = json.loads(gen.stdout)
        (d / "ca.pem").write_text(out["cert"])
        (d / "ca-key.pem").write_text(out["key"])
        (d / "config.json").write_text(json.dumps(SIGNING))
        port = free_port()
        argv = [
            "cfssl",
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            str(port),
            "-ca",
            str(d / "ca.pem"),
            "-ca-key",
            str(d / "ca-key.pem"),
            "-config",
            str(d / "config.json"),
            "-loglevel",
            "4",  # errors only: a line per request would measure the logger
        ]
        log = (d / "serve.log").open("wb")
        server = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            wait_listening(
                port,
                server,
                15,
                lambda: f"cfssl serve did not start:\n{(d / 'serve.log').read_text()[-2000:]}",
            )
            yield port, [server.pid]
        finally:
            stop(server)
            log.close()
