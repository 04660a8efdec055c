"""`make bench` keeps working: a very short run of bench/run.py drives every server (the CA in
one process, with signing canned, with --workers, the cfssl peer, and the front-end experiment)
through each load generator, the native one (bench/loadgen, Go) and the Python one, without a
failed call; and the front-end experiment answers as the CA does, so its figure measures real
signing. Figures are not checked here: timing goals live in the benchmark (bench/README.md)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import grpc
import pytest
from cryptography import x509

from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support import REPO_ROOT
from support.pki import make_csr, verifies

pytestmark = pytest.mark.slow


def load_bench_module(name: str):
    """A module of bench/ (not a package) by name, with bench/ importable as its scripts expect."""
    bench = str(REPO_ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def why_missing(module_name: str) -> str | None:
    """Why bench/``module_name``.py's part of the run cannot run here (None: it can), as
    bench/run.py decides: the module's own ``available()``."""
    return load_bench_module(module_name).available()


def native_missing() -> str | None:
    """Why bench/loadgen cannot be built here (None: it can)."""
    return why_missing("native_loadgen")


def front_missing() -> str | None:
    """Why bench/front_experiment.py cannot run here (None: it can)."""
    return why_missing("front_experiment")


@pytest.mark.timeout(600)  # both generators, and the first go build of grpc-go (about 20 s)
def test_a_short_benchmark_run_measures_every_server_without_failures(tmp_path):
    """With cfssl installed (.ci/run installs Debian's golang-cfssl) the peer is measured too;
    without it the report says how to install it. With go and grpc-go installed (.ci/run installs
    them: CI must have them) both generators run; without them, run by hand, the report says the
    Python one stood in and how to install the native one's."""
    peer = shutil.which("cfssl") is not None
    front = front_missing() is None
    assert front or not os.environ.get("CI"), f"CI must run the front-end experiment: {front_missing()}"
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
        servers = ["single", "canned", "workers"] + (["peer"] if peer else []) + (["front"] if front else [])
        assert set(net) >= set(servers)
        if not peer:
            assert "apt-get install golang-cfssl" in net["peer_missing"] and "peer not measured" in r.stdout
        if not front:
            assert "apt-get install haproxy" in net["front_missing"], net["front_missing"]
            assert "front-end experiment not measured" in r.stdout
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


@pytest.mark.timeout(180)
def test_the_front_end_experiment_signs_and_refuses_as_the_ca_does():
    """Through HAProxy and two signer processes, a grpcio client gets an X.509-SVID that pyca's
    verifier accepts against the trust chain in the answer, with the CA's call-id trailer; a bad
    CSR gets INVALID_ARGUMENT with the CA's reason, and any other method UNIMPLEMENTED; then none of
    its processes is left."""
    if front_missing():
        pytest.skip(front_missing())
    experiment = load_bench_module("front_experiment")
    with experiment.front_server(2, "warn") as (port, pids, anchors):
        assert len(pids) == 3  # two signers and HAProxy
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(anchors),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        with channel:
            stub = sentry_pb2_grpc.CAStub(channel)
            request = sentry_pb2.SignCertificateRequest(
                id="orders", namespace="shop", certificate_signing_request=make_csr()
            )
            answered = set()
            for _ in range(8):  # over several backend connections and both signers
                response, call = stub.SignCertificate.with_call(request, timeout=10)
                leaf, *chain = x509.load_pem_x509_certificates(response.workload_certificate)
                anchors_pem = b"".join(response.trust_chain_certificates)
                assert verifies(leaf, chain, anchors_pem, datetime.now(UTC))
                san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                assert [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)] == [
                    "spiffe://public/ns/shop/orders"
                ]
                assert response.valid_until.ToDatetime(UTC) == leaf.not_valid_after_utc
                assert dict(call.trailing_metadata())["sentryca-call-id"]
                answered.add(anchors_pem)
            assert len(answered) == 2  # each signer has its own bundle: both answered
            with pytest.raises(grpc.RpcError) as refused:
                stub.SignCertificate(
                    sentry_pb2.SignCertificateRequest(
                        id="orders", namespace="shop", certificate_signing_request=b"not a CSR"
                    ),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid CSR" in refused.value.details()
            with pytest.raises(grpc.RpcError) as unknown:
                channel.unary_unary("/dapr.proto.sentry.v1.CA/Other")(b"", timeout=10)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "unknown method /dapr.proto.sentry.v1.CA/Other" in unknown.value.details()
    for pid in pids:  # HAProxy and the signers are gone, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
