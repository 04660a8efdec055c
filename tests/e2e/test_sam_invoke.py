"""`make sam-invoke` for real: both functions built by `sam build` for this machine and run by
`sam local invoke` in a container (the local Lambda stand-in image, deploy/local/base-images.sh,
with the emulator SAM mounts), against moto on the docker bridge's gateway address, which the
function reaches through AWS_ENDPOINT_URL. Each sample event's answer and EMF metrics are those
of the same event replayed in-process by `make invoke` (tools.local_invoke), against the same
moto: the container adds nothing and loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO_ROOT
from support.aws import BUCKET, FUNCTION_ENV, aws_client, emitted
from support.cli import run_sentryca
from support.docker import (
    aws_env,
    ensure_base_images,
    moto_on_bridge,
    require_engine,
    sam_invoke,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

S3_STORE = f"s3://{BUCKET}/sentry/bundle.json"  # what the sample events name (events/README.md)
SECRET_STORE = "secretsmanager://sentryca-bundle"
STABLE = ("outcome", "source", "target", "reason")  # a config change's answer without the deployment id


@pytest.fixture(scope="module")
def aws(tmp_path_factory) -> Iterator[dict[str, str]]:
    """moto on the bridge with what the samples name, as the README's config-change block makes
    it: the versioned bucket with a bundle and one issuer rotation (a change to check), the
    secret likewise, the SSM parameter, the ECS cluster and service."""
    require_engine()
    ensure_base_images()
    with moto_on_bridge() as endpoint:
        env = aws_env(endpoint)
        s3 = aws_client("s3", endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        aws_client("ssm", endpoint).put_parameter(
            Name="/sentryca/config", Type="String", Value="spec:\n  mtls:\n    workloadCertTTL: 12h\n"
        )
        ecs = aws_client("ecs", endpoint)
        ecs.create_cluster(clusterName="sentryca-local")
        ecs.register_task_definition(
            family="sentryca-ca",
            containerDefinitions=[{"name": "ca", "image": "sentryca:server", "memory": 512}],
        )
        ecs.create_service(
            cluster="sentryca-local", serviceName="sentryca-ca", taskDefinition="sentryca-ca", desiredCount=2
        )
        for store in (S3_STORE, SECRET_STORE):
            for verb in (("bundle", "init"), ("rotate", "issuer")):
                r = run_sentryca(*verb, "--trust-bundle-store", store, env=env)
                assert r.returncode == 0, r.stdout + r.stderr
        yield env


def env_file(tmp_path: Path, store: str) -> Path:
    """events/env.json with the functions' store set to ``store``."""
    doc = {fn: {**v, "SENTRY_TRUST_BUNDLE_STORE": store} for fn, v in FUNCTION_ENV.items()}
    path = tmp_path / "env.json"
    path.write_text(json.dumps(doc))
    return path


def make_invoke(env: dict[str, str], fn: str, event: str, env_vars: Path) -> tuple[dict, str]:
    """(answer, output) of `make invoke`'s command: the handler in-process."""
    r = subprocess.run(
        [sys.executable, "-m", "tools.local_invoke", "--env-vars", str(env_vars), fn, event],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the answer, indented, last
    return json.loads("\n".join(lines[start:])), r.stdout + r.stderr


def metrics_of(out: str) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    return {name: {(ns, dims) for ns, dims, _ in found} for name, found in emitted(out).items()}


def test_the_expiry_check_runs_in_the_container_as_in_process(aws, tmp_path):
    env_vars = env_file(tmp_path, S3_STORE)
    answer, out = sam_invoke(aws, "ExpiryCheckFunction", "events/scheduled.json", env_vars)
    local, local_out = make_invoke(aws, "ExpiryCheckFunction", "events/scheduled.json", env_vars)
    assert answer["status"] == local["status"] == "ok", answer
    assert answer["store"] == S3_STORE and answer["version"] == local["version"]
    assert answer["certificates"] and [c["subject"] for c in answer["certificates"]] == [
        c["subject"] for c in local["certificates"]
    ]
    metrics = metrics_of(out)
    assert metrics == metrics_of(local_out)
    assert metrics["SigningCoverageDays"] == {("SentryCA", ("service",))}
    assert metrics["DaysToExpiry"] == {("SentryCA", ("service", "Role", "Subject"))}
    # the template's service name (POWERTOOLS_SERVICE_NAME from env.json) is the dimension's value
    coverage = emitted(out)["SigningCoverageDays"][0][2]
    assert coverage["service"] == FUNCTION_ENV["ExpiryCheckFunction"]["POWERTOOLS_SERVICE_NAME"]
    assert coverage["SigningCoverageDays"] == [answer["coverage_days"]]


@pytest.mark.parametrize(
    ("event", "store"),
    [
        ("events/s3_eventbridge.json", S3_STORE),
        ("events/s3_notification.json", S3_STORE),
        ("events/secretsmanager_cloudtrail.json", SECRET_STORE),
        ("events/ssm_parameter_change.json", S3_STORE),
    ],
)
def test_a_config_change_is_judged_in_the_container_as_in_process(aws, tmp_path, event, store):
    env_vars = env_file(tmp_path, store)
    answer, out = sam_invoke(aws, "ConfigChangeFunction", event, env_vars)
    local, local_out = make_invoke(aws, "ConfigChangeFunction", event, env_vars)
    assert answer["outcome"] == "accepted", (answer, out[-3000:])
    assert {k: answer[k] for k in STABLE} == {k: local[k] for k in STABLE}
    assert bool(answer.get("deployment")) == bool(local.get("deployment"))
    metrics = metrics_of(out)
    assert metrics == metrics_of(local_out)
    assert ("SentryCA", ("service",)) in metrics["ConfigChangeAccepted"]


def test_a_refused_bundle_is_rejected_in_the_container_as_in_process(aws, tmp_path):
    """A bundle object that is not a bundle: rejected, with the alarm's metric, in both."""
    env_vars = env_file(tmp_path, S3_STORE)
    s3 = aws_client("s3", aws["AWS_ENDPOINT_URL"])
    results = []
    for run in (sam_invoke, make_invoke):
        # written again before each run: the function may put the store back to its last
        # accepted version after refusing one
        s3.put_object(Bucket=BUCKET, Key="sentry/bundle.json", Body=b'{"not": "a bundle"}')
        results.append(run(aws, "ConfigChangeFunction", "events/s3_eventbridge.json", env_vars))
    (answer, out), (local, local_out) = results
    assert answer["outcome"] == local["outcome"] == "rejected", answer
    assert answer["reason"] == local["reason"]
    metrics = metrics_of(out)
    assert metrics == metrics_of(local_out)
    assert ("SentryCA", ("service",)) in metrics["ConfigChangeRejected"]
