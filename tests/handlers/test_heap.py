"""The started heap leaves the cyclic collector's walks (handlers/heap.py, design §8.7).

The collector is global to a process, so every check runs in a process of its own: a script for
the function's contract, and `sentryca serve` (one process, and `--workers 2`) for the entry
points, observed through a ``sitecustomize`` that reports each process's collector counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sentryca_client as client

from support.cli import serve
from support.pki import make_csr
from support.wait import wait_until

CONTRACT = textwrap.dedent(
    """
    import gc, json, weakref
    from handlers.heap import freeze_startup_heap

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.peer, b.peer = b, a
        return weakref.ref(a)

    keep = [Node() for _ in range(5000)]   # alive at the freeze: frozen
    before_garbage = cycle()                # garbage at the freeze: collected, not frozen
    tracked_before = len(gc.get_objects())
    frozen = freeze_startup_heap()
    tracked_after = len(gc.get_objects())
    later = cycle()                         # made after: still collected
    gc.collect()
    print(json.dumps({
        "frozen": frozen, "tracked_before": tracked_before, "tracked_after": tracked_after,
        "garbage_freed": before_garbage() is None, "later_freed": later() is None,
        "kept": len(keep),
    }))
    """
)

REPORTER = textwrap.dedent(
    """
    import gc, json, os, threading, time

    def report(directory=os.environ["HEAP_REPORT_DIR"]):
        path = os.path.join(directory, f"{os.getpid()}.json")
        while True:
            body = {"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}
            with open(path + ".tmp", "w") as f:
                json.dump(body, f)
            os.replace(path + ".tmp", path)
            time.sleep(0.1)

    threading.Thread(target=report, name="heap-report", daemon=True).start()
    """
)


def test_freezing_keeps_the_live_heap_out_of_collections_and_still_collects_garbage():
    out = subprocess.run(
        [sys.executable, "-c", CONTRACT], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result = json.loads(out)
    assert result["frozen"] >= 5000  # the live objects (and the interpreter's own)
    assert result["tracked_after"] < result["tracked_before"] - 5000  # a full collection skips them
    assert result["garbage_freed"], "a cycle that was garbage at the freeze must be collected, not frozen"
    assert result["later_freed"], "cycles made after the freeze must still be collected"


def reporting_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A ``sitecustomize`` that makes every Python process started with this environment write
    its freeze count and tracked-object count to ``REPORTS/<pid>.json`` ten times a second."""
    site, reports = tmp_path / "site", tmp_path / "reports"
    site.mkdir()
    reports.mkdir()
    (site / "sitecustomize.py").write_text(REPORTER)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return reports, {"PYTHONPATH": path, "HEAP_REPORT_DIR": str(reports)}


def heap_of(reports: Path, pid: int) -> dict[str, int] | None:
    try:
        return json.loads((reports / f"{pid}.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def frozen_after_start(reports: Path, pid: int) -> dict[str, int]:
    def frozen() -> dict[str, int] | None:
        heap = heap_of(reports, pid)
        return heap if heap and heap["frozen"] > 0 else None

    return wait_until(frozen, f"process {pid} froze its started heap", timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_freezes_the_started_heap_of_every_serving_process(tmp_path, workers):
    reports, env = reporting_env(tmp_path)
    ca = serve(tmp_path, "--mode", "standalone", "--workers", str(workers), env=env)
    try:
        status = ca.wait_ready()
        pids = [w["pid"] for w in status["workers"]] if workers > 1 else [ca.proc.pid]
        for pid in pids:
            heap = frozen_after_start(reports, pid)
            # the start-up heap (gRPC, botocore, the bundle) is the bulk of it
            assert heap["frozen"] > 10 * heap["tracked"], heap
        channel = client.channel(f"localhost:{ca.port}", ca.anchors)
        try:  # and the frozen process serves
            response = client.sign(channel, make_csr(), "app", "default", timeout=20)
        finally:
            channel.close()
        client.verify_response(response, ca.anchors)
    finally:
        ca.stop()
