"""The Lambda handlers, run as template.yaml names them (tools.local_invoke), on every sample
event in events/, against moto in server mode (S3, Secrets Manager, SSM, ECS) over loopback.
Asserts the returned summary and the EMF lines (namespace, metric names, dimensions)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from adapters.stores.s3 import S3BundleStore
from adapters.stores.secretsmanager import SecretsManagerBundleStore
from ca_core.bundle import TrustBundle
from tools.local_invoke import apply_env_vars, invoke

from support import REPO_ROOT
from support.aws import BUCKET, FUNCTION_ENV, aws_client, emf_lines, emitted, log_lines
from support.pki import make_bundle, reissued

EVENTS = REPO_ROOT / "events"
TEMPLATE = REPO_ROOT / "template.yaml"
KEY = "sentry/bundle.json"
SECRET = "sentryca-bundle"
PARAMETER = "/sentryca/config"


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def fn_env(aws_env, monkeypatch, slim_botocore_data):
    """Set events/env.json's variables for a function (as make invoke does), over moto, with
    botocore loading the slim data the SAM build ships (src/Makefile)."""
    monkeypatch.setenv("SENTRY_BOTOCORE_DATA", str(slim_botocore_data))

    def use(logical_id: str, **overrides: str) -> None:
        for k, v in {**FUNCTION_ENV[logical_id], **overrides}.items():
            monkeypatch.setenv(k, v)

    return use


@pytest.fixture
def ecs(aws_env):
    client = aws_client("ecs", aws_env["AWS_ENDPOINT_URL"])
    client.create_cluster(clusterName=FUNCTION_ENV["ConfigChangeFunction"]["SENTRYCA_ECS_CLUSTER"])
    client.register_task_definition(
        family="sentryca-ca", containerDefinitions=[{"name": "ca", "image": "sentryca:test", "memory": 512}]
    )
    client.create_service(
        cluster=FUNCTION_ENV["ConfigChangeFunction"]["SENTRYCA_ECS_CLUSTER"],
        serviceName=FUNCTION_ENV["ConfigChangeFunction"]["SENTRYCA_ECS_SERVICE"],
        taskDefinition="sentryca-ca",
        desiredCount=2,
    )
    return client


# --- expiry check ------------------------------------------------------------------------------


def test_scheduled_event_reports_days_and_coverage_from_the_public_part(fn_env, bucket, capsys):
    fn_env("ExpiryCheckFunction")
    now = datetime.now(UTC)
    # a one-year issuer with 20 days left (under a two-year root): it warns, coverage alarms
    bundle = make_bundle(
        now - timedelta(days=345), root_lifetime=timedelta(days=730), issuer_lifetime=timedelta(days=365)
    )
    store = S3BundleStore(BUCKET, KEY)
    assert store.create(bundle.to_items())
    capsys.readouterr()
    summary = invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)
    out = capsys.readouterr().out
    assert summary["store"] == f"s3://{BUCKET}/{KEY}"
    assert summary["status"] == "warning"
    assert 19.5 < summary["coverage_days"] < 20.5  # the issuer ends first: min(issuer, root)
    roles = {c["role"]: c for c in summary["certificates"]}
    assert (
        roles["issuer"]["level"] == "warning" and "about to expire in 19 days" in roles["issuer"]["message"]
    )
    assert roles["root"]["level"] == "debug" and 384 < roles["root"]["days_left"] < 386
    assert summary["coverage_alarm_below_days"] == 30 and summary["coverage_short"] is True
    json.dumps(summary)
    metrics = emitted(out)
    assert {(ns, dims) for ns, dims, _ in metrics["SigningCoverageDays"]} == {("SentryCA", ("service",))}
    doc = metrics["SigningCoverageDays"][0][2]
    assert doc["service"] == "sentryca-local" and 19.5 < doc["SigningCoverageDays"][0] < 20.5
    ratio = metrics["SigningCoverageRatio"][0][2]["SigningCoverageRatio"][0]  # the alarm's: below 1
    assert ratio == pytest.approx(doc["SigningCoverageDays"][0] / 30, abs=0.01)
    per_cert = metrics["DaysToExpiry"]
    assert {(ns, dims) for ns, dims, _ in per_cert} == {("SentryCA", ("service", "Role", "Subject"))}
    assert sorted(d["Role"] for _, _, d in per_cert) == ["issuer", "root"]
    warnings = [x for x in log_lines(out) if x["level"] == "WARNING"]
    assert any("Issuer certificate is about to expire in 19 days" in x["message"] for x in warnings)
    # Only the public part was read: a store without the key still checks.
    assert "issuer.key" not in store.load_public().items


@pytest.mark.parametrize(
    "age, short, status",
    [
        (timedelta(hours=12), False, "ok"),
        (timedelta(hours=17), True, "ok"),
        (timedelta(hours=23), True, "warning"),
    ],
)
def test_short_lifetimes_scale_the_coverage_alarm_and_the_warnings(
    fn_env, bucket, capsys, age, short, status
):
    """A 24 h issuer under a 7-day root (issue 16): the alarm fires below a third of the issuer's
    lifetime (8 h 5 min of its 24 h 15 min), a certificate warns in its last twelfth (2 h), not
    below 30 days: 12 h left is a healthy issuer, whose successor the automatic policy prepares now."""
    fn_env("ExpiryCheckFunction")
    now = datetime.now(UTC)
    bundle = make_bundle(now - age, root_lifetime=timedelta(days=7), issuer_lifetime=timedelta(hours=24))
    assert S3BundleStore(BUCKET, KEY).create(bundle.to_items())
    capsys.readouterr()
    summary = invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)
    ratio = emitted(capsys.readouterr().out)["SigningCoverageRatio"][0][2]["SigningCoverageRatio"][0]
    assert summary["coverage_short"] is short and (ratio < 1) is short
    assert summary["coverage_alarm_below_days"] == pytest.approx((24.25 / 3) / 24, abs=0.001)
    assert summary["status"] == status


def test_a_prepared_root_rotation_counts_in_the_coverage_from_the_public_part(fn_env, bucket, capsys):
    """design §9: the alarm fires under 30 days of coverage, so a prepared rotation silences it; the
    function sees the prepared chain in the public rotation state (no key is read)."""
    from ca_core.rotation import actions
    from ca_core.rotation.state import EMPTY, RotationPolicy

    fn_env("ExpiryCheckFunction")
    now = datetime.now(UTC)
    bundle = make_bundle(now - timedelta(days=345))  # 20 days left
    store = S3BundleStore(BUCKET, KEY)
    assert store.create(bundle.to_items())
    assert invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)["coverage_days"] < 21
    prepared = actions.prepare_root(bundle, EMPTY, now, RotationPolicy())
    assert store.replace(prepared.items(), store.load().version)
    store.publish_public(store.load())  # accepted (by a CA, or the config-change function)
    capsys.readouterr()
    summary = invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)
    assert 364 < summary["coverage_days"] < 366
    assert len([c for c in summary["certificates"] if c["role"] == "root"]) == 2
    public = store.load_public().items
    assert "rotation.json" in public and b"PRIVATE KEY" not in public["rotation.json"]


def test_expiry_check_of_an_expired_issuer_logs_an_error_and_zero_coverage(fn_env, bucket, capsys):
    fn_env("ExpiryCheckFunction")
    now = datetime.now(UTC)
    S3BundleStore(BUCKET, KEY).create(
        make_bundle(now - timedelta(days=30), issuer_lifetime=timedelta(days=10)).to_items()
    )
    capsys.readouterr()
    summary = invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)
    out = capsys.readouterr().out
    assert summary["status"] == "error" and summary["coverage_days"] < 0
    assert any(x["level"] == "ERROR" and "expired on" in x["message"] for x in log_lines(out))
    assert emitted(out)["SigningCoverageDays"][0][2]["SigningCoverageDays"][0] < 0


def test_expiry_check_of_an_empty_store_fails_and_counts_it(fn_env, bucket, capsys):
    fn_env("ExpiryCheckFunction")
    capsys.readouterr()
    with pytest.raises(Exception, match="holds no public trust bundle part"):
        invoke("ExpiryCheckFunction", event("scheduled.json"), TEMPLATE)
    out = capsys.readouterr().out
    assert {dims for _, dims, _ in emitted(out)["ExpiryCheckFailed"]} == {("service",)}
    assert "SigningCoverageDays" not in emitted(out)  # missing data: the alarm breaches


def last_json_line_of_fresh_python(tmp_path, code: str, *argv: str):
    """Run ``code`` in a fresh interpreter whose file store (SENTRY_ISSUER_CREDENTIALS) holds a
    bundle; the JSON of its last output line."""
    from support.pki import write_bundle

    store = tmp_path / "credentials"
    write_bundle(store, make_bundle(datetime.now(UTC)))
    env = {"SENTRY_ISSUER_CREDENTIALS": str(store), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, check=False
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_lambda_path_imports_neither_grpc_nor_kubernetes(tmp_path):
    code = (
        "import json, sys; from tools.local_invoke import invoke;"
        "invoke('ExpiryCheckFunction', {}, sys.argv[1]);"
        "import handlers.config_change;"
        "heavy = ('grpc', 'kubernetes', 'jwt', 'prometheus_client');"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    assert last_json_line_of_fresh_python(tmp_path, code, str(TEMPLATE)) == []


def test_the_expiry_function_loads_no_more_than_it_needs(tmp_path):
    """Its cold start is budgeted (bench/cold_start.py): no rotation machinery, boto3 layer or
    key serialisation on the path that reads only certificates."""
    code = (
        "import io, json, sys; out, sys.stdout = sys.stdout, io.StringIO();"
        "from handlers import expiry_check; s = expiry_check.handler({}, None); sys.stdout = out;"
        "heavy = ('grpc', 'kubernetes', 'boto3', 'yaml', 'argparse', 'ca_core.rotation.rules',"
        " 'ca_core.rotation.actions', 'ca_core.rotation.codec',"
        " 'cryptography.hazmat.primitives.serialization.ssh');"
        "print(json.dumps([s['status'], sorted(m for m in heavy if m in sys.modules)]))"
    )
    assert last_json_line_of_fresh_python(tmp_path, code) == ["ok", []]


# --- config change -----------------------------------------------------------------------------


def _bundle_in_s3(now: datetime) -> tuple[TrustBundle, S3BundleStore]:
    store = S3BundleStore(BUCKET, KEY)
    bundle = make_bundle(now)
    assert store.create(bundle.to_items())
    return bundle, store


@pytest.mark.parametrize("sample", ["s3_eventbridge.json", "s3_notification.json"])
def test_s3_change_with_a_valid_bundle_is_accepted_and_deploys_nothing(sample, fn_env, bucket, ecs, capsys):
    """No redeploy storm (design §9.6): the tasks poll the store; the record follows the bundle."""
    fn_env("ConfigChangeFunction")
    now = datetime.now(UTC)
    bundle, store = _bundle_in_s3(now)
    assert store.replace(reissued(bundle, now).to_items(), store.load().version)
    capsys.readouterr()
    result = invoke("ConfigChangeFunction", event(sample), TEMPLATE)
    out = capsys.readouterr().out
    assert result["outcome"] == "accepted", result
    assert result["target"] == f"s3://{BUCKET}/{KEY}" and result["deployment"] is None
    metrics = emitted(out)
    assert {(ns, dims) for ns, dims, _ in metrics["ConfigChangeAccepted"]} == {("SentryCA", ("service",))}
    assert "DeploymentForced" not in metrics and "ConfigChangeRejected" not in metrics
    assert store.load_public().items["issuer.crt"] == store.load().items["issuer.crt"]


@pytest.mark.parametrize("case", ["drops_the_root", "corrupt", "key_mismatch"])
def test_s3_change_with_a_bad_bundle_is_rejected_and_nothing_rolls(case, fn_env, bucket, ecs, capsys):
    """Refused: put back to the accepted bundle (the bucket keeps it) when the content has a
    version to write over; a document that is no bundle at all is only rejected."""
    fn_env("ConfigChangeFunction")
    now = datetime.now(UTC)
    bundle, store = _bundle_in_s3(now)
    if case == "drops_the_root":
        assert store.replace(make_bundle(now).to_items(), store.load().version)
    elif case == "corrupt":
        bucket.put_object(Bucket=BUCKET, Key=KEY, Body=b"{not json")
    else:
        items = bundle.to_items() | {"issuer.key": make_bundle(now).to_items()["issuer.key"]}
        bucket.put_object(
            Bucket=BUCKET, Key=KEY, Body=json.dumps({k: v.decode() for k, v in items.items()}).encode()
        )
    capsys.readouterr()
    result = invoke("ConfigChangeFunction", event("s3_eventbridge.json"), TEMPLATE)
    out = capsys.readouterr().out
    assert result["outcome"] == ("rejected" if case == "corrupt" else "reverted"), result
    assert result["deployment"] is None
    if case != "corrupt":
        assert dict(store.load().items) == bundle.to_items()
    if case == "drops_the_root":
        assert "does not include the active root" in result["reason"]
    metrics = emitted(out)
    assert {(ns, dims) for ns, dims, _ in metrics["ConfigChangeRejected"]} == {("SentryCA", ("service",))}
    assert "DeploymentForced" not in metrics
    assert any(x["level"] == "ERROR" and "REJECTED" in x["message"] for x in log_lines(out))


def test_s3_changes_made_by_rotation_are_accepted_even_when_they_drop_a_root(fn_env, bucket, ecs, capsys):
    """Prepare, activate, prune, and an emergency rotation: each is one accepted change, though
    the last two drop a root (the rotation state records it); an unrelated bundle still is not."""
    from ca_core.rotation import actions, rules
    from ca_core.rotation.state import EMPTY, RotationPolicy

    fn_env("ConfigChangeFunction")
    now = datetime.now(UTC)
    bundle, store = _bundle_in_s3(now)
    policy = RotationPolicy(propagation_window=timedelta(0), leaf_bound=timedelta(hours=1))
    prepared = actions.prepare_root(bundle, EMPTY, now, policy)
    activated = rules.advance(prepared.bundle, prepared.state, now, policy)
    pruned = rules.advance(activated.bundle, activated.state, now + timedelta(hours=2), policy)
    assert [s.action for s in pruned.steps] == ["prune"]
    emergency = actions.emergency_root(pruned.bundle, pruned.state, now, policy)
    for result in (prepared, activated, pruned, emergency):
        assert store.replace(result.items(), store.load().version)
        outcome = invoke("ConfigChangeFunction", event("s3_eventbridge.json"), TEMPLATE)
        assert outcome["outcome"] == "accepted", (result.steps[-1].action, outcome)
    assert store.replace(make_bundle(now).to_items(), store.load().version)
    assert invoke("ConfigChangeFunction", event("s3_eventbridge.json"), TEMPLATE)["outcome"] == "reverted"


def test_an_unrelated_bundle_claiming_the_current_root_was_removed_is_rejected(fn_env, bucket, ecs):
    """Only the previous version's schedule releases a pruned root, and an emergency counts only
    with the new active root recorded since the removal: a ``removed`` entry alone is refused."""
    from support.pki import CRAFTED_CLAIMS, crafted_items

    fn_env("ConfigChangeFunction")
    now = datetime.now(UTC)
    bundle, store = _bundle_in_s3(now)
    for reason, active_since in CRAFTED_CLAIMS:
        assert store.replace(crafted_items(bundle, now, reason, active_since), store.load().version)
        outcome = invoke("ConfigChangeFunction", event("s3_eventbridge.json"), TEMPLATE)
        assert outcome["outcome"] == "reverted", (reason, outcome)
        assert "does not include the active root" in outcome["reason"]
        assert dict(store.load().items) == bundle.to_items()  # the accepted version again


def test_an_event_for_another_object_is_ignored(fn_env, bucket, ecs):
    fn_env("ConfigChangeFunction")
    ev = event("s3_eventbridge.json")
    ev["detail"]["object"]["key"] = f"{KEY}.public"
    assert invoke("ConfigChangeFunction", ev, TEMPLATE)["outcome"] == "ignored"


def test_secrets_manager_change_via_cloudtrail(fn_env, aws_env, ecs, capsys):
    fn_env("ConfigChangeFunction", SENTRY_TRUST_BUNDLE_STORE=f"secretsmanager://{SECRET}")
    sm = aws_client("secretsmanager", aws_env["AWS_ENDPOINT_URL"])
    for sid in (SECRET, f"{SECRET}.public"):
        try:
            sm.delete_secret(SecretId=sid, ForceDeleteWithoutRecovery=True)
        except sm.exceptions.ResourceNotFoundException:
            pass
    now = datetime.now(UTC)
    store = SecretsManagerBundleStore(SECRET)
    bundle = make_bundle(now)
    assert store.create(bundle.to_items())
    assert store.replace(reissued(bundle, now).to_items(), store.load().version)
    capsys.readouterr()
    result = invoke("ConfigChangeFunction", event("secretsmanager_cloudtrail.json"), TEMPLATE)
    assert result["outcome"] == "accepted", result
    assert {d for _, d, _ in emitted(capsys.readouterr().out)["ConfigChangeAccepted"]} == {("service",)}
    # A bundle dropping the root is rejected.
    assert store.replace(make_bundle(now).to_items(), store.load().version)
    result = invoke("ConfigChangeFunction", event("secretsmanager_cloudtrail.json"), TEMPLATE)
    assert result["outcome"] == "reverted" and "active root" in result["reason"]
    assert store.load().items["ca.crt"] == bundle.anchors_pem  # AWSCURRENT moved back
    # A value staged without AWSCURRENT (this store's own compare-and-swap) is not a change yet.
    staged = event("secretsmanager_cloudtrail.json")
    staged["detail"]["requestParameters"]["versionStages"] = ["SENTRYCA_PENDING"]
    assert invoke("ConfigChangeFunction", staged, TEMPLATE)["outcome"] == "ignored"


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("spec:\n  mtls:\n    workloadCertTTL: 12h\n", "accepted"),
        ("spec:\n  mtls:\n    workloadCertTTL: twelve hours\n", "rejected"),
        ("spec:\n  mtls:\n    tokenValidators: [{name: insecure}]\n", "rejected"),
    ],
)
def test_ssm_parameter_change(value, outcome, fn_env, aws_env, ecs, capsys):
    fn_env("ConfigChangeFunction")
    aws_client("ssm", aws_env["AWS_ENDPOINT_URL"]).put_parameter(
        Name=PARAMETER, Value=value, Type="String", Overwrite=True
    )
    capsys.readouterr()
    result = invoke("ConfigChangeFunction", event("ssm_parameter_change.json"), TEMPLATE)
    assert result["outcome"] == outcome, result
    name = {"accepted": "ConfigChangeAccepted", "rejected": "ConfigChangeRejected"}[outcome]
    assert {d for _, d, _ in emitted(capsys.readouterr().out)[name]} == {("service",)}


def test_make_invoke_runs_the_template_handler_with_env_json(tmp_path, monkeypatch):
    store = tmp_path / "credentials"
    from support.pki import write_bundle

    write_bundle(store, make_bundle(datetime.now(UTC)))
    env = {"PATH": "/usr/bin:/bin", "SENTRY_TRUST_BUNDLE_STORE": f"file://{store}"}
    r = subprocess.run(
        [sys.executable, "-m", "tools.local_invoke", "ExpiryCheckFunction", "events/scheduled.json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout[r.stdout.rindex("\n{") :])
    assert summary["status"] == "ok" and summary["store"] == f"file://{store}"
    # env.json filled what the shell did not set: the service dimension.
    assert any(d.get("service") == "sentryca-local" for d in emf_lines(r.stdout))
    bad = subprocess.run(
        [sys.executable, "-m", "tools.local_invoke", "NoSuchFunction", "events/scheduled.json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and "ExpiryCheckFunction" in bad.stderr


def test_make_invoke_names_an_unreadable_event_without_a_traceback(tmp_path):
    from tools import local_invoke

    (tmp_path / "broken.json").write_text("{not json")
    for event, says in (
        (tmp_path / "absent.json", "cannot read the event"),
        (tmp_path / "broken.json", "not JSON"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "tools.local_invoke", "ExpiryCheckFunction", str(event)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert local_invoke.main(["--env-vars", str(tmp_path / "broken.json"), "ExpiryCheckFunction", "x"]) == 2


def test_env_json_fills_only_unset_variables():
    environ = {"SENTRY_TRUST_BUNDLE_STORE": "file://mine"}
    apply_env_vars(EVENTS / "env.json", "ConfigChangeFunction", environ)
    assert environ["SENTRY_TRUST_BUNDLE_STORE"] == "file://mine"
    assert environ["SENTRYCA_CONFIG_PARAMETER"] == PARAMETER
