"""The ``sentryca`` console script as a user runs it: to completion (run_sentryca), or
``sentryca serve`` as a subprocess (serve, Served)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import sentryca_client as client

from support import probe
from support.pki import make_csr
from support.wait import wait_for_line, wait_until

SENTRYCA = str(Path(sys.executable).with_name("sentryca"))  # the CLI installed beside this Python
# `sentryca serve` flags for a test server: every port picked free by the OS
EPHEMERAL_PORTS = ("--port", "0", "--healthz-port", "0", "--metrics-port", "0")
# where `sentryca serve` says it serves: each port's line in its start-up banner (stderr)
BANNER = {
    "metrics": r"metrics :(\d+)",
    "port": r"serving on 127\.0\.0\.1:(\d+)",
    "healthz": r"Health:\s+http://[^:]+:(\d+)/healthz",
}


def run_sentryca(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``sentryca ARGS`` to completion (in ``cwd``, default this process's working directory);
    ``env``: variables added to this process's environment (PYTHONPATH included: the CLI imports
    the code under test)."""
    return subprocess.run(
        [SENTRYCA, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | (env or {}),
        cwd=cwd,
    )


class Served:
    """A ``sentryca serve`` subprocess started by :func:`serve`."""

    def __init__(self, proc: subprocess.Popen, creds: Path, port: int, healthz: int, metrics: int) -> None:
        self.proc, self.creds, self.port = proc, creds, port
        self.healthz_port, self.metrics_port = healthz, metrics
        self.start_log = ""  # what it logged up to where it says it serves (set by serve)

    @functools.cached_property
    def anchors(self) -> bytes:
        """The trust anchors of a file store in ``creds`` (the default store)."""
        return (self.creds / "ca.crt").read_bytes()

    @functools.cached_property
    def channel(self) -> grpc.Channel:
        return client.channel(f"localhost:{self.port}", self.anchors)

    def sign(self, app_id: str, ns: str, **kw):
        return client.sign(self.channel, make_csr(), app_id, ns, timeout=20, **kw)

    def refused(self, app_id: str, ns: str, **kw) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as e:
            self.sign(app_id, ns, **kw)
        return e.value.code(), e.value.details()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def spiffe_id(self, app_id: str, ns: str, **kw) -> str:
        return client.verify_response(self.sign(app_id, ns, **kw), self.anchors).spiffe_id

    def healthz(self) -> tuple[int, dict]:
        return probe.healthz(self, timeout=10)

    def wait_ready(self, seconds: float = 30) -> dict:
        """The /healthz body once it answers 200, within ``seconds``."""
        last: dict = {}

        def ready() -> bool:
            status, last["body"] = self.healthz()
            return status == 200

        wait_until(
            ready, lambda: f"/healthz answers 200 (last: {last['body']})", timeout=seconds, interval=0.1
        )
        return last["body"]

    def drain(self) -> None:
        """Read the CA's stderr from now on in a thread, so a CA that logs much (an audit line per
        certificate) never blocks on a full pipe; :meth:`stop` returns what it kept: every line
        but the ``sentryca.audit`` ones, which are counted in :attr:`audit_lines`."""
        self.kept: list[str] = []
        self.audit_lines = 0

        def read() -> None:
            for line in self.proc.stderr:
                if "sentryca.audit" in line:
                    self.audit_lines += 1
                else:
                    self.kept.append(line)

        self._drainer = threading.Thread(target=read, name="ca-stderr", daemon=True)
        self._drainer.start()

    def stop(self) -> str:
        """Stop the CA and return everything it logged (what :meth:`drain` kept, if draining)."""
        if "channel" in vars(self):
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            drainer.join(timeout=10)
            return "".join(self.kept)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def serve(
    tmp_path: Path,
    *args: str,
    env: dict | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Served:
    """Start ``sentryca serve ARGS`` on ephemeral ports with a file store in ``tmp_path/creds``
    (unless ARGS name another store); returns once it says where it serves. ``env``: variables
    added to this process's environment (KUBERNETES_SERVICE_HOST removed); ``preexec_fn``: run in
    the child before it starts (e.g. to set its resource limits)."""
    creds = tmp_path / "creds"
    environment = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    environment |= {"SENTRY_HEALTHZ_PORT": "0", "SENTRY_METRICS_PORT": "0"} | (env or {})
    proc = subprocess.Popen(
        [SENTRYCA, "serve", "--issuer-credentials", str(creds), "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        preexec_fn=preexec_fn,
    )
    lines: list[str] = []
    ports: dict[str, int] = {}

    def banner(line: str) -> bool:
        for name, pattern in BANNER.items():
            if m := re.search(pattern, line):
                ports[name] = int(m.group(1))
        return "healthz" in ports  # the Health line follows the other two

    with contextlib.suppress(AssertionError):  # the output ended or 60 s passed: reported below
        wait_for_line(proc.stderr, banner, "sentryca serve says where it serves", timeout=60, seen=lines)
    if ports.keys() != BANNER.keys():
        proc.kill()
        raise AssertionError("sentryca serve did not start:\n" + "".join(lines) + proc.stderr.read())
    served = Served(proc, creds, ports["port"], ports["healthz"], ports["metrics"])
    served.start_log = "".join(lines)
    return served
