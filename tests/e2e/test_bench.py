"""`make bench` keeps working: a very short run of bench/run.py drives every server (the CA in
one process, with --workers, and the cfssl peer) through the same load generator without a
failed call. Figures are not checked here: timing goals live in the benchmark (bench/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from support import REPO_ROOT

pytestmark = pytest.mark.slow


def test_a_short_benchmark_run_measures_every_server_without_failures(tmp_path):
    """With cfssl installed (.ci/run installs Debian's golang-cfssl) the peer is measured too;
    without it the report says how to install it."""
    peer = shutil.which("cfssl") is not None
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--duration", "0.5"]
    argv += ["--concurrency", "2", "--baseline-concurrency", "2", "--peer-concurrency", "4"]
    argv += ["--open-fractions", "0.5", "--json", str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    net = results["network"]
    servers = ["single", "canned", "workers"] + (["peer"] if peer else [])
    assert set(net) >= set(servers)
    if not peer:
        assert "apt-get install golang-cfssl" in net["peer_missing"] and "peer not measured" in r.stdout
    for name in servers:
        levels = net[name]["levels"] + net[name]["open_levels"]
        assert levels, name
        for level in levels:
            assert level["errors"] == 0 and level["completed"] > 0 and not level["csrs_exhausted"], (
                name,
                level,
            )
        assert net[name]["peak_rss_mib"] > 0
    assert [lvl["offered_per_s"] is not None for lvl in net["workers"]["open_levels"]] == [True]
    assert net["workers_count"] >= 1
    assert ("CA / cfssl" in r.stdout) is peer
