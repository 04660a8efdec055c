"""The deployed CA's metrics (issue 14 item 4): ``sentryca serve --emf-interval`` writes CloudWatch
Embedded Metric Format documents to stdout on an interval, with the figures of its own Prometheus
registry; and template.yaml's alarms and dashboard watch exactly the names, namespace and
dimensions those documents carry."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

import sentryca_client as client
from handlers import emf
from handlers import lambda_support as ls
from handlers.metrics import Metrics
from tools.local_invoke import load_template

from support import REPO_ROOT
from support.cli import BANNER, SENTRYCA
from support.pki import make_csr
from support.wait import wait_for_line

TEMPLATE = load_template(REPO_ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
SERVICE = "emf-test-stack"
INTERVAL = 1.0


def validate(doc: dict) -> list[str]:
    """The EMF structure (CloudWatch's specification): every metric named in a directive has a
    member of the document, every dimension a string member; returns the metric names."""
    meta = doc["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    names = []
    for directive in meta["CloudWatchMetrics"]:
        assert directive["Namespace"] == emf.NAMESPACE == ls.NAMESPACE
        assert directive["Dimensions"] and all(
            isinstance(d, list) and 1 <= len(d) <= 30 for d in directive["Dimensions"]
        )
        for dims in directive["Dimensions"]:
            assert all(isinstance(doc[d], str) and doc[d] for d in dims)
        for metric in directive["Metrics"]:
            value = doc[metric["Name"]]
            assert metric["Unit"] in ("Count", "Milliseconds", "None")
            if isinstance(value, dict):  # a distribution
                assert len(value["Values"]) == len(value["Counts"]) <= 100
                assert value["Count"] == sum(value["Counts"])
                assert value["Min"] <= value["Max"]
            else:
                assert isinstance(value, int | float)
            names.append(metric["Name"])
    return names


def _serve(tmp_path: Path, out: Path, workers: int) -> tuple[subprocess.Popen, int, int]:
    """``sentryca serve --emf-interval 1s --workers N`` with stdout to ``out``; (process, gRPC port,
    metrics port)."""
    env = os.environ | {"POWERTOOLS_SERVICE_NAME": SERVICE, "SENTRY_HEALTHZ_PORT": "0"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    args = ["--issuer-credentials", str(tmp_path / "creds"), "--port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [SENTRYCA, "serve", *args, "--emf-interval", f"{INTERVAL:g}s", "--workers", str(workers)],
        stdout=out.open("w"),
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    ports: dict[str, int] = {}

    def banner(line: str) -> bool:
        for name, pattern in BANNER.items():
            if m := re.search(pattern, line):
                ports[name] = int(m.group(1))
        return "healthz" in ports

    wait_for_line(proc.stderr, banner, "sentryca serve says where it serves", timeout=60)
    return proc, ports["port"], ports["metrics"]


@pytest.mark.parametrize("workers", [1, 2])  # 2: the supervisor's aggregate of its workers
def test_the_served_ca_writes_its_figures_as_emf_on_an_interval(tmp_path, workers):
    out = tmp_path / "stdout"
    proc, port, metrics_port = _serve(tmp_path, out, workers)
    started = time.monotonic()
    try:
        chan = client.channel(f"localhost:{port}", (tmp_path / "creds" / "ca.crt").read_bytes())
        for i in range(20):
            assert client.sign(chan, make_csr(), f"app{i}", "prod", timeout=20).workload_certificate
        refused = []
        for app_id, ns, validator in [("x", "prod", 99), ("y", "prod", 98), ("dapr-sentry", "default", 0)]:
            with pytest.raises(grpc.RpcError) as e:
                client.sign(chan, make_csr(), app_id, ns, token_validator=validator, timeout=20)
            refused.append(e.value.code())
        assert refused == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [grpc.StatusCode.PERMISSION_DENIED]
        chan.close()
        time.sleep(INTERVAL * 1.5)  # at least one document is written while the CA serves
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            exposition = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err

    docs = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    assert docs and all("_aws" in d for d in docs)
    main = [d for d in docs if "category" not in d]
    by_reason = [d for d in docs if "category" in d]
    for d in docs:
        names = validate(d)
        assert d["service"] == SERVICE
        assert names if "category" not in d else names == [emf.SIGN_FAILURES]
    # on an interval, never per request: one main document per interval, plus the last at stop
    assert 2 <= len(main) <= elapsed / INTERVAL + 2
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]] for d in main)
    stamps = [d["_aws"]["Timestamp"] for d in main]
    assert stamps == sorted(stamps)

    def total(name: str, docs=main) -> float:
        return sum(d.get(name, 0) for d in docs)

    # the documents are what changed since the one before: their sums are the calls made...
    assert total(emf.SIGN_REQUESTS) == 23
    assert total(emf.SIGN_SUCCESSES) == 20
    assert total(emf.SIGN_FAILURES) == 3
    reasons = {}
    for d in by_reason:
        assert d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service", "category", "reason"]]
        reasons[(d["category"], d["reason"])] = (
            reasons.get((d["category"], d["reason"]), 0) + d["SignFailures"]
        )
    assert reasons == {
        ("invalid_request", "validator_unknown"): 2,
        ("permission_denied", "reserved_identity"): 1,
    }
    latency = [d[emf.SIGN_LATENCY] for d in main if emf.SIGN_LATENCY in d]
    assert sum(v["Count"] for v in latency) == 23
    assert all(0 < v["Min"] and v["Sum"] > 0 for v in latency)
    assert total(emf.RESTARTS) == 0 and total(emf.BUNDLE_CHANGES_REFUSED) == 0
    # ... as the Prometheus endpoint counts them (read before the stop: no call came after it)
    assert "dapr_sentry_cert_sign_request_received_total 23.0" in exposition
    assert "dapr_sentry_cert_sign_success_total 20.0" in exposition
    sum_line = re.search(r"sentryca_sign_request_duration_seconds_count\{code=\"OK\"\} (\S+)", exposition)
    assert sum_line and float(sum_line.group(1)) == 20
    # gauges as they stand: a fresh bundle's issuer lasts about a year, its coverage as long
    for d in main:
        assert 300 < d[emf.ISSUER_DAYS_LEFT] <= 366
        assert d[emf.SERVED_COVERAGE_DAYS] >= d[emf.ISSUER_DAYS_LEFT]


def test_the_latency_distribution_is_the_histograms_buckets_since_the_last_document():
    metrics = Metrics()
    writer_out: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            writer_out.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    writer = emf.EmfWriter(
        metrics.registry.collect, 60, service="s", out=Out(), clock=lambda: 1_700_000_000.0
    )
    for seconds, code in [
        (0.0004, "OK"),
        (0.0007, "OK"),
        (0.003, "OK"),
        (0.2, "PERMISSION_DENIED"),
        (30, "OK"),
    ]:
        metrics.sign_latency.labels(code=code).observe(seconds)
    (doc,) = writer.flush()
    dist = doc[emf.SIGN_LATENCY]
    # bucket midpoints in ms: (0, 1 ms], (2.5, 5 ms], (100, 250 ms], past the last bound (10 s)
    assert dist["Values"] == [0.5, 3.75, 175.0, 15000.0] and dist["Counts"] == [2, 1, 1, 1]
    assert dist["Count"] == 5 and dist["Sum"] == pytest.approx(30204.1, abs=0.01)
    assert json.loads(writer_out[0]) == doc
    metrics.sign_latency.labels(code="OK").observe(0.003)
    (doc,) = writer.flush()  # only what came since the previous document
    assert doc[emf.SIGN_LATENCY]["Values"] == [3.75] and doc[emf.SIGN_LATENCY]["Counts"] == [1]
    (doc,) = writer.flush()
    assert emf.SIGN_LATENCY not in doc and doc[emf.SIGN_REQUESTS] == 0


# --- template.yaml: alarms and the dashboard watch what the documents carry -----------------------


def _task_env() -> dict:
    (container,) = RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    return {e["Name"]: e["Value"] for e in container["Environment"]}


def test_the_task_writes_emf_and_names_its_service_as_the_functions_do():
    env = _task_env()
    assert env["SENTRY_EMF_INTERVAL"] == "60s"
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "AWS::StackName"}
    assert TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == {
        "Ref": "AWS::StackName"
    }
    assert env["SENTRY_ENABLE_METRICS"] == "false"  # no scraper on ECS; Prometheus stays for Kubernetes


def _metric_stats(alarm: dict) -> list[dict]:
    props = alarm["Properties"]
    if "Metrics" in props:
        return [q["MetricStat"]["Metric"] for q in props["Metrics"] if "MetricStat" in q]
    return [
        {
            "Namespace": props["Namespace"],
            "MetricName": props["MetricName"],
            "Dimensions": props["Dimensions"],
        }
    ]


TASK_ALARMS = ("SignFailureRatioAlarm", "SignNoSuccessAlarm")


def emitted() -> set[tuple[str, tuple[str, ...]]]:
    """(metric name, dimension names) of every metric in the documents of a CA's registry that
    saw a call of each kind, as :class:`handlers.emf.EmfWriter` writes them."""
    metrics = Metrics()
    metrics.sign_received.inc(2)
    metrics.sign_success.inc()
    metrics.count_failure("permission_denied", "token_expired")
    metrics.sign_latency.labels(code="OK").observe(0.002)
    metrics.issuer_expiry.set(time.time() + 86400)
    metrics.coverage_expiry.set(time.time() + 2 * 86400)
    docs = emf.documents(emf.samples(metrics.registry.collect()), {}, time.time(), "s")
    out = set()
    for doc in docs:
        validate(doc)
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                out |= {(m["Name"], tuple(dims)) for m in directive["Metrics"]}
    return out


@pytest.mark.parametrize("name", TASK_ALARMS)
def test_the_signing_alarms_watch_the_tasks_emf_metrics(name):
    alarm = RESOURCES[name]
    assert alarm["Type"] == "AWS::CloudWatch::Alarm"
    stats = _metric_stats(alarm)
    assert stats
    written = emitted()
    for metric in stats:
        assert metric["Namespace"] == emf.NAMESPACE
        dims = tuple(d["Name"] for d in metric["Dimensions"])
        assert (metric["MetricName"], dims) in written, (metric["MetricName"], dims)
        assert metric["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]
    props = alarm["Properties"]
    assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    expressions = [q["Expression"] for q in props["Metrics"] if "Expression" in q]
    (returned,) = [q for q in props["Metrics"] if q.get("ReturnData", True)]
    assert "Expression" in returned and expressions
    ids = {q["Id"] for q in props["Metrics"]}
    assert all(set(re.findall(r"\b[a-z]\w*\b", e)) - {"IF", "AND", "OR"} <= ids for e in expressions)


def test_the_dashboard_shows_signs_failures_latency_and_coverage():
    dashboard = RESOURCES["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    stack = "teststack"
    text = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    body = json.loads(text.replace("${AWS::StackName}", stack).replace("${AWS::Region}", "eu-west-1"))
    shown: dict[str, list[tuple[dict, str]]] = {}  # metric name -> (dimensions, statistic)
    searches = []
    for widget in body["widgets"]:
        props = widget["properties"]
        for metric in props["metrics"]:
            options = metric[-1] if isinstance(metric[-1], dict) else {}
            if "expression" in options:
                searches.append(options["expression"])
                continue
            namespace, name, *rest = [m for m in metric if not isinstance(m, dict)]
            assert namespace == emf.NAMESPACE
            dims = dict(zip(rest[::2], rest[1::2], strict=True))
            shown.setdefault(name, []).append((dims, options.get("stat", props["stat"])))
    # every metric shown is one the tasks write (or the expiry function: ls.COVERAGE, checked
    # against its EMF in test_template.py), by service alone
    written = emitted() | {(ls.COVERAGE, ("service",))}
    for name, used in shown.items():
        for dims, _ in used:
            assert dims == {"service": stack}
            assert (name, ("service",)) in written, name
    # signs/s, p99 latency, days of coverage ...
    assert {emf.SIGN_SUCCESSES, emf.SIGN_LATENCY, ls.COVERAGE, emf.SERVED_COVERAGE_DAYS} <= set(shown)
    assert "p99" in {stat for _, stat in shown[emf.SIGN_LATENCY]}
    assert any("PERIOD(signs)" in e for e in searches)
    # ... and failures by reason: a search over the [service, category, reason] dimension set
    assert (emf.SIGN_FAILURES, ("service", *emf.FAILURE_DIMENSIONS)) in written
    dims = ",".join(["service", *emf.FAILURE_DIMENSIONS])
    assert any(
        f"{{{emf.NAMESPACE},{dims}}}" in e and f'MetricName="{emf.SIGN_FAILURES}"' in e for e in searches
    ), searches


def test_the_interval_is_an_option_off_by_default():
    from datetime import timedelta

    from ca_core.config import load_config
    from ca_core.errors import ConfigError

    assert load_config({}, {}).emf_interval == timedelta(0)
    assert load_config({}, {"SENTRY_EMF_INTERVAL": "60s"}).emf_interval == timedelta(seconds=60)
    for bad in ("500ms", "2h", "-1s", "often"):
        with pytest.raises(ConfigError):
            load_config({"emf_interval": bad}, {})
