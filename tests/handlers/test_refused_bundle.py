"""A refused bundle is never served (design §5.4), in every store through the BundleStore port,
against the real servers (moto in server mode, the fake Kubernetes API server): a CA that
starts on a store whose newest bundle its record of the last accepted one refuses serves that
accepted bundle (stores that keep versions) or refuses to start (stores that keep none), and
never writes; a deliberate replacement (``bundle import --force``, ``bundle regenerate``) records
itself and is served. The config-change function puts a refused bundle back (conditional write)
and alarms; it never forces a deployment for a bundle write (the CA's own first bundle and
rotation steps included), only for the configuration parameter, once per change."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import sentryca_client as client
from adapters.stores import FileBundleStore, open_store
from ca_core.bundle import parse_bundle
from ca_core.errors import BundleError
from ca_core.rotation.document import public_items
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2
from tools.local_invoke import invoke

from support import REPO_ROOT
from support.aws import BUCKET, FUNCTION_ENV, aws_client, emitted, log_lines
from support.ca import ca_config
from support.cli import run_sentryca
from support.kube import KUBE_NAMESPACE
from support.pki import make_bundle, make_csr, reissued

TEMPLATE = REPO_ROOT / "template.yaml"
KEEPS_VERSIONS = ("s3", "secretsmanager")


class Kit:
    """A fresh store of one kind: its URL, the CA flags and CLI arguments that reach it."""

    def __init__(self, kind: str, url: str, kubeconfig: str | None, env: dict[str, str]) -> None:
        self.kind, self.url, self.kubeconfig, self.env = kind, url, kubeconfig, env

    def store(self):
        return open_store(self.url, kubeconfig=self.kubeconfig)

    def config(self, tmp_path, **flags: str):
        extra = {"kubeconfig": self.kubeconfig} if self.kubeconfig else {}
        return ca_config(tmp_path / "unused", trust_bundle_store=self.url, **extra, **flags)

    def cli(self, *args: str):
        extra = ("--kubeconfig", self.kubeconfig) if self.kubeconfig else ()
        return run_sentryca(*args, "--trust-bundle-store", self.url, *extra, env=self.env)


@pytest.fixture(params=["file", "s3", "secretsmanager", "kubernetes"])
def kit(request, tmp_path) -> Kit:
    tag = uuid.uuid4().hex[:10]
    if request.param == "file":
        return Kit("file", f"file://{tmp_path / tag}", None, {})
    if request.param == "kubernetes":
        kube = request.getfixturevalue("kube_api")
        return Kit("kubernetes", f"kubernetes://{KUBE_NAMESPACE}/refused-{tag}", kube.kubeconfig, {})
    env = request.getfixturevalue("aws_env")
    if request.param == "s3":
        request.getfixturevalue("bucket")
        return Kit("s3", f"s3://{BUCKET}/refused/{tag}.json", None, env)
    return Kit("secretsmanager", f"secretsmanager://sentryca/refused-{tag}", None, env)


def refused_count(ca: CertificateAuthority) -> float:
    return ca.metrics.registry.get_sample_value("sentryca_bundle_change_refused_total") or 0.0


def served_anchor(ca: CertificateAuthority, anchors_pem: bytes) -> bytes:
    """Sign a CSR over gRPC (TLS verified with ``anchors_pem``); the issuer of the returned chain."""
    chan = client.channel(f"localhost:{ca.grpc_port}", anchors_pem)
    try:
        resp = client.sign(
            chan,
            make_csr(),
            "orders",
            "default",
            token_validator=sentry_pb2.SignCertificateRequest.INSECURE,
            timeout=10,
        )
    finally:
        chan.close()
    chain = x509.load_pem_x509_certificates(resp.workload_certificate)
    return chain[1].public_bytes(Encoding.PEM)


def issuer_pem(bundle) -> bytes:
    return bundle.issuer.public_bytes(Encoding.PEM)


# --- a start ----------------------------------------------------------------------------------


def test_a_start_never_serves_a_newest_bundle_that_drops_the_accepted_root(kit, tmp_path):
    now = datetime.now(UTC)
    store = kit.store()
    first = make_bundle(now)
    assert store.create(first.to_items())  # the first bundle: the store's record of it too
    dropped = make_bundle(now).to_items()  # another root: written around the CAs, never accepted
    assert store.replace(dropped, store.load().version)
    assert store.load_accepted().items == public_items(first.to_items())
    ca = CertificateAuthority()
    if kit.kind in KEEPS_VERSIONS:
        ca.start(kit.config(tmp_path, trust_domain="localhost"))
        try:
            assert ca.signer.bundle.trust_anchors == first.trust_anchors
            assert served_anchor(ca, first.anchors_pem) == issuer_pem(first)
            ready, details = ca.readiness()
            assert ready and details["degraded"]["problem"] == "bundle_refused"
            assert "serving the last accepted one" in details["degraded"]["detail"]
            assert refused_count(ca) == 1
        finally:
            ca.stop(grace=0)
    else:
        with pytest.raises(BundleError, match="keeps no copy of the last accepted one") as e:
            ca.start(kit.config(tmp_path))
        assert "bundle import --force" in str(e.value) and "does not include the active root" in str(e.value)
        assert not ca.running
    assert dict(store.load().items) == dropped  # a start never writes
    assert store.load_accepted().items == public_items(first.to_items())


def test_a_start_serves_a_bundle_that_keeps_the_accepted_root_and_records_it(kit, tmp_path):
    now = datetime.now(UTC)
    store = kit.store()
    first = make_bundle(now)
    assert store.create(first.to_items())
    second = reissued(first, now)  # a new issuer under the same root
    assert store.replace(second.to_items(), store.load().version)
    ca = CertificateAuthority()
    ca.start(kit.config(tmp_path))
    try:
        assert ca.signer.bundle.issuer == second.issuer
        assert ca.readiness()[1].get("degraded") is None
    finally:
        ca.stop(grace=0)
    assert store.load_accepted().items == public_items(second.to_items())  # the record follows


@pytest.mark.parametrize("verb", ["import", "regenerate"])
def test_a_deliberate_replacement_records_itself_and_is_served(kit, tmp_path, verb):
    now = datetime.now(UTC)
    store = kit.store()
    first = make_bundle(now)
    assert store.create(first.to_items())
    if verb == "import":
        other = make_bundle(now)
        source = tmp_path / "export"
        assert FileBundleStore(source).create(other.to_items())
        done = kit.cli("bundle", "import", "--from", str(source), "--force")
    else:
        done = kit.cli("bundle", "regenerate", "--backup-to", f"file://{tmp_path / 'backup'}")
    assert done.returncode == 0, done.stderr
    written = store.load()
    assert written.items["ca.crt"] != first.to_items()["ca.crt"]
    assert store.load_accepted().items == public_items(written.items)  # the override, recorded
    ca = CertificateAuthority()
    ca.start(kit.config(tmp_path))
    try:
        assert ca.signer.bundle.anchors_pem == written.items["ca.crt"]
        assert ca.readiness()[1].get("degraded") is None and refused_count(ca) == 0
    finally:
        ca.stop(grace=0)


def test_an_import_without_force_that_drops_the_root_writes_nothing(kit, tmp_path):
    store = kit.store()
    first = make_bundle(datetime.now(UTC))
    assert store.create(first.to_items())
    source = tmp_path / "export"
    assert FileBundleStore(source).create(make_bundle(datetime.now(UTC)).to_items())
    done = kit.cli("bundle", "import", "--from", str(source))
    assert done.returncode == 1 and "do not include the current active root" in done.stderr
    assert dict(store.load().items) == first.to_items()
    assert store.load_accepted().items == public_items(first.to_items())


# --- the config-change function ----------------------------------------------------------------


@pytest.fixture
def function_env(aws_env, monkeypatch, slim_botocore_data):
    """events/env.json's variables for the config-change function, over moto (ECS included: a
    deployment forced would show in the service)."""
    monkeypatch.setenv("SENTRY_BOTOCORE_DATA", str(slim_botocore_data))
    env = FUNCTION_ENV["ConfigChangeFunction"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ecs = aws_client("ecs", aws_env["AWS_ENDPOINT_URL"])
    ecs.create_cluster(clusterName=env["SENTRYCA_ECS_CLUSTER"])
    ecs.register_task_definition(
        family="sentryca-ca", containerDefinitions=[{"name": "ca", "image": "sentryca:test", "memory": 512}]
    )
    services = ecs.describe_services(
        cluster=env["SENTRYCA_ECS_CLUSTER"], services=[env["SENTRYCA_ECS_SERVICE"]]
    )
    if not [s for s in services["services"] if s.get("status") == "ACTIVE"]:
        ecs.create_service(
            cluster=env["SENTRYCA_ECS_CLUSTER"],
            serviceName=env["SENTRYCA_ECS_SERVICE"],
            taskDefinition="sentryca-ca",
            desiredCount=2,
        )

    def use(store_url: str) -> None:
        monkeypatch.setenv("SENTRY_TRUST_BUNDLE_STORE", store_url)

    use.ecs = ecs  # type: ignore[attr-defined]
    return use


def deployment(ecs) -> str:
    """The id of the service's primary deployment (a forced deployment replaces it)."""
    env = FUNCTION_ENV["ConfigChangeFunction"]
    cluster, name = env["SENTRYCA_ECS_CLUSTER"], env["SENTRYCA_ECS_SERVICE"]
    service = ecs.describe_services(cluster=cluster, services=[name])["services"][0]
    return next(d["id"] for d in service["deployments"] if d["status"] == "PRIMARY")


def change_event(url: str) -> dict:
    """The sample event of the deployed rule for the store at ``url`` (events/*.json)."""
    if url.startswith("s3://"):
        ev = json.loads((REPO_ROOT / "events" / "s3_eventbridge.json").read_text())
        bucket, _, key = url.removeprefix("s3://").partition("/")
        ev["detail"]["bucket"]["name"], ev["detail"]["object"]["key"] = bucket, key
        return ev
    ev = json.loads((REPO_ROOT / "events" / "secretsmanager_cloudtrail.json").read_text())
    ev["detail"]["requestParameters"]["secretId"] = url.removeprefix("secretsmanager://")
    return ev


@pytest.fixture(params=KEEPS_VERSIONS)
def aws_kit(request, tmp_path) -> Kit:
    request.getfixturevalue("bucket")
    tag = uuid.uuid4().hex[:10]
    env = request.getfixturevalue("aws_env")
    if request.param == "s3":
        return Kit("s3", f"s3://{BUCKET}/refused/{tag}.json", None, env)
    return Kit("secretsmanager", f"secretsmanager://sentryca/refused-{tag}", None, env)


def test_the_function_puts_a_refused_bundle_back_and_alarms(aws_kit, function_env, tmp_path, capsys):
    function_env(aws_kit.url)
    now = datetime.now(UTC)
    store = aws_kit.store()
    first = make_bundle(now)
    assert store.create(first.to_items())
    assert store.replace(make_bundle(now).to_items(), store.load().version)  # drops the root
    before = deployment(function_env.ecs)
    capsys.readouterr()
    result = invoke("ConfigChangeFunction", change_event(aws_kit.url), TEMPLATE)
    out = capsys.readouterr().out
    assert result["outcome"] == "reverted", result
    assert "does not include the active root" in result["reason"] and result["deployment"] is None
    assert dict(store.load().items) == first.to_items()  # the accepted bundle, put back
    metrics = emitted(out)
    assert {(ns, dims) for ns, dims, _ in metrics["BundleReverted"]} == {("SentryCA", ("service",))}
    assert {(ns, dims) for ns, dims, _ in metrics["ConfigChangeRejected"]} == {("SentryCA", ("service",))}
    assert "DeploymentForced" not in metrics
    assert any(x["level"] == "ERROR" and "put back" in x["message"] for x in log_lines(out))
    # The revert is a bundle write too: its event is accepted, and nothing is deployed.
    assert invoke("ConfigChangeFunction", change_event(aws_kit.url), TEMPLATE)["outcome"] == "accepted"
    assert deployment(function_env.ecs) == before
    ca = CertificateAuthority()
    ca.start(aws_kit.config(tmp_path))
    try:
        assert ca.signer.bundle.trust_anchors == first.trust_anchors
        assert ca.readiness()[1].get("degraded") is None
    finally:
        ca.stop(grace=0)


def test_the_function_honours_a_forced_import(aws_kit, function_env, tmp_path):
    function_env(aws_kit.url)
    store = aws_kit.store()
    assert store.create(make_bundle(datetime.now(UTC)).to_items())
    other = make_bundle(datetime.now(UTC))
    source = tmp_path / "export"
    assert FileBundleStore(source).create(other.to_items())
    done = aws_kit.cli("bundle", "import", "--from", str(source), "--force")
    assert done.returncode == 0, done.stderr
    result = invoke("ConfigChangeFunction", change_event(aws_kit.url), TEMPLATE)
    assert result["outcome"] == "accepted" and result["deployment"] is None, result
    assert store.load().items["ca.crt"] == other.anchors_pem


@pytest.mark.parametrize("content", ["not json", "key mismatch"])
def test_unusable_content_is_rejected_and_a_start_serves_the_accepted_one(
    content, function_env, bucket, tmp_path
):
    """Content that is not a bundle document has no version to write over: only rejected; a
    mismatched key is put back. Either way a CA starting on it serves the accepted version the
    bucket keeps, degraded, the refusal counted."""
    url = f"s3://{BUCKET}/refused/{uuid.uuid4().hex[:10]}.json"
    function_env(url)
    store = open_store(url)
    first = make_bundle(datetime.now(UTC))
    assert store.create(first.to_items())
    if content == "not json":
        bucket.put_object(Bucket=BUCKET, Key=store.key, Body=b"{not json")
    else:
        items = first.to_items() | {"issuer.key": make_bundle(datetime.now(UTC)).to_items()["issuer.key"]}
        assert store.replace(items, store.load().version)
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "unused", trust_bundle_store=url))
    try:
        assert ca.signer.bundle.issuer == first.issuer
        degraded = ca.readiness()[1]["degraded"]
        assert degraded["problem"] == "bundle_refused" and "serving the last accepted" in degraded["detail"]
        assert refused_count(ca) == 1
    finally:
        ca.stop(grace=0)
    result = invoke("ConfigChangeFunction", change_event(url), TEMPLATE)
    assert result["deployment"] is None
    if content == "not json":
        assert result["outcome"] == "rejected", result
    else:
        assert result["outcome"] == "reverted", result
        assert dict(store.load().items) == first.to_items()


@pytest.mark.slow
def test_the_cas_own_first_bundle_and_rotation_never_force_a_deployment(function_env, bucket, tmp_path):
    """No redeploy storms: the CA creates its first bundle, an operator prepares a root
    rotation, then the CA activates it (its own rotation step) in a moto S3 store; each write's
    event, replayed, is accepted, deploys nothing, and the store's record follows. A change of
    the configuration parameter rolls the service once per change."""
    from ca_core.rotation import actions
    from ca_core.rotation.state import EMPTY, RotationPolicy

    url = f"s3://{BUCKET}/refused/{uuid.uuid4().hex[:10]}.json"
    function_env(url)
    ecs = function_env.ecs
    before = deployment(ecs)
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "first", trust_bundle_store=url))
    try:
        result = invoke("ConfigChangeFunction", change_event(url), TEMPLATE)
        assert result["outcome"] == "accepted" and result["deployment"] is None, result
    finally:
        ca.stop(grace=0)
    store = open_store(url)
    now = datetime.now(UTC)
    bundle = parse_bundle(store.load().items)  # the CA's own, with its root key
    policy = RotationPolicy(propagation_window=timedelta(0), leaf_bound=timedelta(hours=1))
    prepared = actions.prepare_root(bundle, EMPTY, now, policy)
    assert store.replace(prepared.items(), store.load().version)
    assert invoke("ConfigChangeFunction", change_event(url), TEMPLATE)["outcome"] == "accepted"
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "second", trust_bundle_store=url))
    try:
        assert ca.rotate_if_due()  # the CA's own step: the prepared root becomes active
        written = store.load()
        assert ca.signer.bundle.issuer == prepared.state.prepared_root.issuer_chain[0]
        result = invoke("ConfigChangeFunction", change_event(url), TEMPLATE)
        assert result["outcome"] == "accepted" and result["deployment"] is None, result
        assert store.load_accepted().items == public_items(written.items)
    finally:
        ca.stop(grace=0)
    assert deployment(ecs) == before  # three bundle writes, no deployment
    ssm = aws_client("ssm", function_env.ecs.meta.endpoint_url)
    parameter = FUNCTION_ENV["ConfigChangeFunction"]["SENTRYCA_CONFIG_PARAMETER"]
    ssm_event = json.loads((REPO_ROOT / "events" / "ssm_parameter_change.json").read_text())
    for ttl in ("12h", "13h"):
        ssm.put_parameter(
            Name=parameter,
            Value=f"spec:\n  mtls:\n    workloadCertTTL: {ttl}\n",
            Type="String",
            Overwrite=True,
        )
        result = invoke("ConfigChangeFunction", ssm_event, TEMPLATE)
        assert result["outcome"] == "accepted" and result["deployment"], result
        assert deployment(ecs) == result["deployment"] != before  # one deployment per change
        before = result["deployment"]


def test_the_put_back_is_conditional_a_newer_write_is_left_to_the_next_event(
    function_env, bucket, monkeypatch
):
    """Another writer lands between the function's read and its put back: the conditional write
    loses, nothing is overwritten, the change is only rejected; the newer write's own event is
    judged next (here: it keeps the root, so it is accepted)."""
    from adapters.stores.s3 import S3BundleStore

    url = f"s3://{BUCKET}/refused/{uuid.uuid4().hex[:10]}.json"
    function_env(url)
    store = open_store(url)
    first = make_bundle(datetime.now(UTC))
    assert store.create(first.to_items())
    assert store.replace(make_bundle(datetime.now(UTC)).to_items(), store.load().version)
    newer = reissued(first, datetime.now(UTC)).to_items()
    find_accepted = S3BundleStore.find_accepted

    def another_writer_lands(self, record):
        found = find_accepted(self, record)
        assert open_store(url).replace(newer, open_store(url).load().version)
        return found

    monkeypatch.setattr(S3BundleStore, "find_accepted", another_writer_lands)
    result = invoke("ConfigChangeFunction", change_event(url), TEMPLATE)
    assert result["outcome"] == "rejected" and result["deployment"] is None, result
    assert dict(store.load().items) == newer  # not overwritten
    monkeypatch.setattr(S3BundleStore, "find_accepted", find_accepted)
    assert invoke("ConfigChangeFunction", change_event(url), TEMPLATE)["outcome"] == "accepted"


def test_an_event_for_a_bundle_deleted_since_is_rejected_and_nothing_is_written(function_env, bucket):
    url = f"s3://{BUCKET}/refused/{uuid.uuid4().hex[:10]}.json"
    function_env(url)
    store = open_store(url)
    assert store.create(make_bundle(datetime.now(UTC)).to_items())
    bucket.delete_object(Bucket=BUCKET, Key=store.key)  # a delete marker
    result = invoke("ConfigChangeFunction", change_event(url), TEMPLATE)
    assert result["outcome"] == "rejected" and "holds no trust bundle any more" in result["reason"], result
    assert store.load() is None  # not put back: restoring is the operator's (held_before says so)
