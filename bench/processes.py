"""Server processes the benchmark starts (``cfssl_peer.py``, ``front_experiment.py``): a free
loopback port, waiting until one listens, stopping one, and tying one's life to the bench's."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, why: Callable[[], str]) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection. Raises RuntimeError with ``why()``
    when ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(why()) from None
            time.sleep(0.05)


def die_with_parent() -> None:
    """``preexec_fn`` for a server that cannot watch its stdin: Linux sends it SIGTERM when the
    thread that started it ends (``PR_SET_PDEATHSIG``), so a killed bench leaves none behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(proc: subprocess.Popen) -> None:
    """Close its stdin (a server that watches it exits), SIGTERM, then SIGKILL after 10 s;
    waits for the exit."""
    if proc.stdin is not None:
        proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
