"""`make bench` keeps working: a very short run of bench/run.py drives every server (the CA in
one process, with signing canned, with --workers, and the cfssl peer) through each load generator,
the native one (bench/loadgen, Go) and the Python one, without a failed call. Figures are not
checked here: timing goals live in the benchmark (bench/README.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from support import REPO_ROOT

pytestmark = pytest.mark.slow


def native_missing() -> str | None:
    """Why bench/loadgen cannot be built here (None: it can), as bench/run.py decides."""
    spec = importlib.util.spec_from_file_location("native_loadgen", REPO_ROOT / "bench" / "native_loadgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.available()


@pytest.mark.timeout(600)  # both generators, and the first go build of grpc-go (about 20 s)
def test_a_short_benchmark_run_measures_every_server_without_failures(tmp_path):
    """With cfssl installed (.ci/run installs Debian's golang-cfssl) the peer is measured too;
    without it the report says how to install it. With go and grpc-go installed (.ci/run installs
    them: CI must have them) both generators run; without them, run by hand, the report says the
    Python one stood in and how to install the native one's."""
    peer = shutil.which("cfssl") is not None
    missing = native_missing()
    assert not (missing and os.environ.get("CI")), f"CI must run the native load generator: {missing}"
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--duration", "0.5"]
    argv += ["--concurrency", "2", "--baseline-concurrency", "2", "--peer-concurrency", "4"]
    argv += ["--open-fractions", "0.5", "--json", str(out), "--loadgen", "auto" if missing else "both"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    passes = {"network": "python"} if missing else {"network": "native", "network_python": "python"}
    assert results["loadgen"]["used"] == list(passes.values())
    if missing:
        assert "golang-google-grpc-dev" in results["loadgen"]["note"], results["loadgen"]
        assert "the Python one was used" in r.stdout
    else:
        assert results["loadgen"]["note"] is None
        assert "[native load generator]" in r.stdout and "[python load generator]" in r.stdout
        assert "load generator: native then python (go" in r.stdout
    for key, kind in passes.items():
        net = results[key]
        assert net["loadgen"] == kind
        servers = ["single", "canned", "workers"] + (["peer"] if peer else [])
        assert set(net) >= set(servers)
        if not peer:
            assert "apt-get install golang-cfssl" in net["peer_missing"] and "peer not measured" in r.stdout
        for name in servers:
            levels = net[name]["levels"] + net[name]["open_levels"]
            assert levels, (kind, name)
            for level in levels:
                assert level["loadgen"] == kind
                assert level["errors"] == 0 and level["completed"] > 0 and not level["csrs_exhausted"], (
                    kind,
                    name,
                    level,
                )
                if kind == "native":  # one Go process; its CPU is accounted as the client's
                    assert level["failures"] == {} and level["client_processes"] == 1, level
                    assert level["client_cpu_us_per_sign"] > 0, level
            assert net[name]["peak_rss_mib"] > 0
        assert [lvl["offered_per_s"] is not None for lvl in net["workers"]["open_levels"]] == [True]
        assert net["workers_count"] >= 1
    assert r.stdout.count("transport ceiling (best canned)") == len(passes)
    assert ("CA / cfssl" in r.stdout) is peer
