"""The native load generator, ``bench/loadgen/main.go``: found, built on demand, fed.

``binary()`` builds it with the Go toolchain in GOPATH mode against Debian's grpc-go
(``apt-get install golang-go golang-google-grpc-dev``; its sources, and those of its
dependencies, are under ``/usr/share/gocode``) into ``bench/.build/`` (git-ignored). The binary
is named by a hash of its source and of the toolchain, so an edited source is rebuilt and an
unchanged one is built once. ``available()`` says why it cannot be built, or None.

``write_bodies`` writes the file of pre-encoded request bodies the binary reads (each a 4-byte
big-endian length, then the bytes); ``grpc_body`` and ``cfssl_peer.request_body`` encode one CSR
for each protocol.

``python bench/native_loadgen.py`` builds it and prints its path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen"
BUILD = HERE / ".build"
GRPC_GO = Path("src/google.golang.org/grpc")  # inside a GOPATH entry
DEBIAN_GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their sources
INSTALL_HINT = "Debian: apt-get install golang-go golang-google-grpc-dev; .ci/run installs them"


def gopath() -> str | None:
    """The GOPATH entry holding grpc-go's sources: $GOPATH's entries, then Debian's."""
    entries = [e for e in os.environ.get("GOPATH", "").split(os.pathsep) if e] + [DEBIAN_GOPATH]
    for entry in entries:
        if (Path(entry) / GRPC_GO / "version.go").is_file():
            return entry
    return None


def available() -> str | None:
    """None when the binary can be built, else why not (with the install hint)."""
    if shutil.which("go") is None:
        return f"go is not installed ({INSTALL_HINT})"
    if gopath() is None:
        return f"grpc-go's sources are not installed ({INSTALL_HINT})"
    return None


def _environment(path: str) -> dict[str, str]:
    env = dict(os.environ, GO111MODULE="off", GOPATH=path, GOFLAGS="", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(BUILD / "gocache"))  # works without $HOME too
    return env


def binary() -> Path:
    """The built load generator (built first when its source or the toolchain changed)."""
    why = available()
    if why:
        raise RuntimeError(f"cannot build the native load generator: {why}")
    path = gopath()
    assert path is not None
    env = _environment(path)
    toolchain = subprocess.run(
        ["go", "version"], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    digest = hashlib.sha256(f"{toolchain}\n{path}\n".encode())
    for source in sorted(SOURCE.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    out = BUILD / f"loadgen-{digest.hexdigest()[:16]}"
    if out.is_file():
        return out
    BUILD.mkdir(exist_ok=True)
    partial = BUILD / f".{out.name}.{os.getpid()}"  # renamed into place: concurrent builds are safe
    r = subprocess.run(
        ["go", "build", "-trimpath", "-o", str(partial), "."],
        cwd=SOURCE,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )
    if r.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {SOURCE.name}/ failed:\n{r.stderr[-3000:]}")
    os.replace(partial, out)
    for old in BUILD.glob("loadgen-*"):  # earlier builds of other sources
        if old != out:
            old.unlink(missing_ok=True)
    return out


def write_bodies(path: Path, bodies: Iterable[bytes]) -> int:
    """Write ``bodies`` as the binary's -bodies file; returns how many."""
    n = 0
    with path.open("wb") as f:
        for body in bodies:
            f.write(struct.pack(">I", len(body)))
            f.write(body)
            n += 1
    return n


def grpc_body(csr_pem: bytes, app_id: str, namespace: str = "default") -> bytes:
    """A serialized ``SignCertificateRequest`` for ``csr_pem`` (the server's default validator)."""
    from sentryca_proto.sentry.v1 import sentry_pb2

    request = sentry_pb2.SignCertificateRequest(
        id=app_id, namespace=namespace, certificate_signing_request=csr_pem
    )
    return request.SerializeToString()


def version() -> dict[str, str]:
    """The Go toolchain's and grpc-go's versions (what the binary reports is the same)."""
    path = gopath()
    go = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True, check=False)
    grpc = "unknown"
    if path is not None:
        for line in (Path(path) / GRPC_GO / "version.go").read_text().splitlines():
            if line.startswith("const Version"):
                grpc = line.split('"')[1]
    return {"go": go.stdout.strip() or "unknown", "grpc_go": grpc}


if __name__ == "__main__":
    try:
        print(binary())
    except RuntimeError as e:
        sys.exit(str(e))
