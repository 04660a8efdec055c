"""Every store kind (file; S3 and Secrets Manager on a moto server over loopback HTTP; Kubernetes
Secret on the loopback fake API server): load-or-store, conditional create and replace, races
between processes, refusals leaving data untouched, faults."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import shutil
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from adapters.stores import Retry, StoredBundle, encode_document, load_or_create, open_store
from ca_core.bundle import parse_bundle, parse_public_bundle
from ca_core.errors import BundleError, Unavailable
from ca_core.keys import KeyAlgorithm

from support.aws import TEST_BUCKET, aws_client
from support.kube import KUBE_NAMESPACE
from support.pki import NOW, make_bundle, snapshot

KINDS = ["file", "s3", "secretsmanager", "kubernetes"]


class Kit:
    """A fresh, empty store of one kind, with raw (adapter-free) access for damage and snapshots.
    endpoint: the moto server (AWS kinds); kube: the fake API server (``support.kube.KubeApi``)."""

    def __init__(self, kind: str, tmp_path: Path, endpoint: str | None, kube=None) -> None:
        self.kind, self.endpoint, self.kube, tag = kind, endpoint, kube, uuid.uuid4().hex[:10]
        self.kubeconfig = kube.kubeconfig if kube is not None else None
        if kind == "file":
            self.dir = tmp_path / f"store-{tag}"
            self.url = f"file://{self.dir}"
        elif kind == "s3":
            self.key = f"bundles/{tag}.json"
            self.url = f"s3://{TEST_BUCKET}/{self.key}"
        elif kind == "secretsmanager":
            self.name = f"sentryca/{tag}"
            self.url = f"secretsmanager://{self.name}"
        else:
            self.name = f"bundle-{tag}"
            self.url = f"kubernetes://{KUBE_NAMESPACE}/{self.name}"

    def store(self):
        return open_store(self.url, kubeconfig=self.kubeconfig)

    def write_raw(self, items: dict[str, bytes] | bytes) -> None:
        """Put data in the store the way an operator or another tool would (for Kubernetes:
        Dapr's layout, the Secret plus a ConfigMap holding only ``ca.crt``)."""
        if self.kind == "file":
            self.dir.mkdir(exist_ok=True)
            for name, data in dict(items).items():  # type: ignore[arg-type]
                (self.dir / name).write_bytes(data)
            return
        if self.kind == "kubernetes":
            items = dict(items)  # type: ignore[arg-type]
            data = {k: base64.b64encode(v).decode() for k, v in items.items()}
            meta = {"name": self.name, "labels": {"app": "dapr-sentry"}}
            self.kube.server.put(
                "v1", "secrets", KUBE_NAMESPACE, {"metadata": meta, "type": "Opaque", "data": data}
            )
            cm = {"ca.crt": items["ca.crt"].decode(errors="replace")} if "ca.crt" in items else {}
            self.kube.server.put("v1", "configmaps", KUBE_NAMESPACE, {"metadata": meta, "data": cm})
            return
        body = items if isinstance(items, bytes) else encode_document(items).encode()
        if self.kind == "s3":
            aws_client("s3", self.endpoint).put_object(Bucket=TEST_BUCKET, Key=self.key, Body=body)
        else:
            sm = aws_client("secretsmanager", self.endpoint)
            try:
                sm.create_secret(Name=self.name, SecretString=body.decode())
            except sm.exceptions.ResourceExistsException:
                sm.put_secret_value(SecretId=self.name, SecretString=body.decode())

    def write_truth(self, items: dict[str, bytes]) -> None:
        """Replace only the source of truth, as an operator editing the Secret or object
        directly would (the public part, a derived copy, is left alone)."""
        if self.kind != "kubernetes":
            self.write_raw(items)
            return
        s = self.kube.server.get("v1", "secrets", KUBE_NAMESPACE, self.name)
        s["data"] = {k: base64.b64encode(v).decode() for k, v in items.items()}
        self.kube.server.put("v1", "secrets", KUBE_NAMESPACE, s)

    def write_empty(self) -> None:
        """Kubernetes only: an empty Secret and ConfigMap, as Dapr's Helm chart creates them."""
        meta = {"name": self.name, "labels": {"app": "dapr-sentry"}}
        self.kube.server.put("v1", "secrets", KUBE_NAMESPACE, {"metadata": meta, "type": "Opaque"})
        self.kube.server.put("v1", "configmaps", KUBE_NAMESPACE, {"metadata": meta})

    def source_of_truth(self) -> object:
        """The bundle as stored, byte for byte, with the backend's version marker (for
        Kubernetes the Secret; its ConfigMap and the AWS stores' public part are derived copies)."""
        if self.kind == "kubernetes":
            return self.kube.server.get("v1", "secrets", KUBE_NAMESPACE, self.name)
        if self.kind in ("s3", "secretsmanager"):
            return self.raw()[:-1]  # without the public part (last), a derived copy
        return self.raw()

    def remove_bundle(self) -> None:
        """Lose the bundle the way an operator or a tool might, leaving what each backend keeps
        on its own: file, every entry of the directory but the marker (``rm -rf DIR/* DIR/..?*``);
        S3, both objects deleted (a versioned bucket keeps delete markers); Secrets Manager, both
        secrets deleted with the default recovery window; Kubernetes, the Secret deleted (its
        ConfigMap stays)."""
        if self.kind == "file":
            from adapters.stores.files import HELD_MARKER

            for entry in self.dir.iterdir():
                if entry.name == HELD_MARKER:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        elif self.kind == "s3":
            s3 = aws_client("s3", self.endpoint)
            for key in (self.key, f"{self.key}.public"):
                s3.delete_object(Bucket=TEST_BUCKET, Key=key)
        elif self.kind == "secretsmanager":
            sm = aws_client("secretsmanager", self.endpoint)
            for name in (self.name, f"{self.name}.public"):
                sm.delete_secret(SecretId=name)
        else:
            self.kube.server.delete("v1", "secrets", KUBE_NAMESPACE, self.name)

    def trace(self) -> object:
        """Everything the backend holds under this store's names, bundle or not (to prove that
        a refused start wrote nothing, even in a store that lost its bundle)."""
        if self.kind == "file":
            if not self.dir.exists():
                return None
            return sorted(
                (str(p.relative_to(self.dir)), p.read_bytes() if p.is_file() else os.readlink(p))
                for p in self.dir.rglob("*")
                if p.is_file() or p.is_symlink()
            )
        if self.kind == "kubernetes":
            return tuple(
                self.kube.server.get("v1", plural, KUBE_NAMESPACE, self.name)
                for plural in ("secrets", "configmaps")
            )
        if self.kind == "s3":
            r = aws_client("s3", self.endpoint).list_object_versions(Bucket=TEST_BUCKET, Prefix=self.key)
            return sorted(
                (v["Key"], v["VersionId"], v["IsLatest"])
                for v in r.get("Versions", []) + r.get("DeleteMarkers", [])
            )
        sm = aws_client("secretsmanager", self.endpoint)
        found = []
        for name in (self.name, f"{self.name}.public"):
            try:
                d = sm.describe_secret(SecretId=name)
            except sm.exceptions.ResourceNotFoundException:
                found.append(None)
                continue
            found.append((d.get("VersionIdsToStages"), d.get("DeletedDate")))
        return found

    def raw(self) -> object:
        """Everything stored, byte for byte, with the backend's version marker, including the
        derived public part (S3 ``KEY.public``, Secrets Manager ``NAME.public``, the ConfigMap)."""
        if self.kind == "file":
            return snapshot(self.dir) if self.dir.exists() else None
        if self.kind == "kubernetes":
            get = self.kube.server.get
            return get("v1", "secrets", KUBE_NAMESPACE, self.name), get(
                "v1", "configmaps", KUBE_NAMESPACE, self.name
            )
        if self.kind == "s3":
            s3 = aws_client("s3", self.endpoint)
            versions = s3.list_object_versions(Bucket=TEST_BUCKET, Prefix=self.key).get("Versions", [])
            body = s3.get_object(Bucket=TEST_BUCKET, Key=self.key)["Body"].read()
            try:
                public = s3.get_object(Bucket=TEST_BUCKET, Key=f"{self.key}.public")["Body"].read()
            except s3.exceptions.NoSuchKey:
                public = None
            return body, sorted(v["VersionId"] for v in versions if v["Key"] == self.key), public
        sm = aws_client("secretsmanager", self.endpoint)
        cur = sm.get_secret_value(SecretId=self.name, VersionStage="AWSCURRENT")
        stages = sm.describe_secret(SecretId=self.name)["VersionIdsToStages"]
        labelled = {v: s for v, s in stages.items() if s}  # a version without a label never serves
        try:
            public = sm.get_secret_value(SecretId=f"{self.name}.public", VersionStage="AWSCURRENT")
            public_part = public["SecretString"], public["VersionId"]
        except sm.exceptions.ResourceNotFoundException:
            public_part = None
        return cur["SecretString"], cur["VersionId"], labelled, public_part


@pytest.fixture(params=KINDS)
def kit(request, tmp_path):
    endpoint = kube = None
    if request.param in ("s3", "secretsmanager"):
        endpoint = request.getfixturevalue("aws_env")["AWS_ENDPOINT_URL"]
    if request.param == "kubernetes":
        kube = request.getfixturevalue("kube_api")
    return Kit(request.param, tmp_path, endpoint, kube)


def test_empty_store_gets_one_bundle_then_loads_it(kit):
    store = kit.store()
    assert store.load() is None and store.load_public() is None
    b1, v1, created1 = load_or_create(store, make_bundle)
    b2, v2, created2 = load_or_create(kit.store(), make_bundle)
    assert (created1, created2) == (True, False)
    assert b1.trust_anchors == b2.trust_anchors and b1.root_key is not None and v1 == v2
    public = store.load_public()
    assert set(public.items) == {"ca.crt", "issuer.crt"}  # no key in the public part
    assert parse_public_bundle(public.items).trust_anchors == b1.trust_anchors


def test_create_is_conditional_and_replace_compares_versions(kit):
    store = kit.store()
    first, second = make_bundle().to_items(), make_bundle().to_items()
    assert store.create(first)
    before = kit.raw()
    assert not store.create(second)
    assert kit.raw() == before
    v1 = store.load().version
    third = make_bundle().to_items()
    assert store.replace(third, v1)
    assert dict(store.load().items) == third and store.load().version != v1
    stale = kit.raw()
    assert not store.replace(second, v1)  # someone else replaced it since v1 was read
    assert kit.raw() == stale
    if kit.kind != "file":  # the record of the last accepted bundle: written by whoever accepts one
        assert store.load_public().items == {k: first[k] for k in ("ca.crt", "issuer.crt")}
    store.publish_public(store.load())
    assert store.load_public().items == {k: third[k] for k in ("ca.crt", "issuer.crt")}
    assert store.load_accepted().items == {k: third[k] for k in ("ca.crt", "issuer.crt")}


def test_replace_version_answers_the_version_load_then_reports(kit):
    """A writer can put what it wrote in force without reading it back (design §8.5): the token
    replace_version answers is the version load() reports for those items; a stale expected
    version answers None and writes nothing."""
    from ca_core.rotation.actions import prepare_root
    from ca_core.rotation.state import EMPTY, RotationPolicy

    store = kit.store()
    bundle = make_bundle()
    assert store.create(bundle.to_items())
    v1 = store.load().version
    written = prepare_root(bundle, EMPTY, NOW, RotationPolicy()).items()
    v2 = store.replace_version(written, v1)
    assert v2 is not None and v2 != v1
    loaded = store.load()
    assert (dict(loaded.items), loaded.version) == (written, v2)
    stale = kit.raw()
    assert store.replace_version(make_bundle().to_items(), v1) is None
    assert kit.raw() == stale


def test_rotation_state_item_is_kept(kit):
    store = kit.store()
    items = make_bundle().to_items() | {"rotation.json": b'{"active": "root-1"}\n'}
    assert store.create(items)
    assert dict(store.load().items) == items
    assert parse_bundle(store.load().items).root_key is not None


def test_a_rotation_state_is_published_without_its_keys(kit):
    """The public part (what the expiry function and relying parties read) carries every anchor,
    the prepared root included, and the rotation state without the prepared keys."""
    from ca_core.rotation import actions, document
    from ca_core.rotation.state import EMPTY, RotationPolicy

    bundle = make_bundle()
    prepared = actions.prepare_root(bundle, EMPTY, NOW, RotationPolicy())
    store = kit.store()
    assert store.create(bundle.to_items())
    assert store.replace(prepared.items(), store.load().version)
    assert dict(store.load().items) == prepared.items()
    store.publish_public(store.load())  # accepted
    public = store.load_public().items
    assert set(public) == {"ca.crt", "issuer.crt", "rotation.json"}
    assert len(parse_public_bundle(public).trust_anchors) == 2
    assert b"PRIVATE KEY" not in public["rotation.json"]
    assert document.prepared_not_after(public["rotation.json"], prepared.bundle.trust_anchors) == (
        prepared.state.prepared_root.not_after,
    )
    # a bundle written without a rotation state drops it from the public part again
    assert store.replace(bundle.to_items(), store.load().version)
    store.publish_public(store.load())
    assert set(store.load_public().items) == {"ca.crt", "issuer.crt"}


def _sec1(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "algorithm, key_format",
    [(KeyAlgorithm.ED25519, "pkcs8"), (KeyAlgorithm.ECDSA_P256, "sec1"), (KeyAlgorithm.ECDSA_P384, "pkcs8")],
)
def test_bundles_as_dapr_sentry_writes_them_load(kit, algorithm, key_format):
    """Dapr's Sentry writes ca.crt, issuer.crt, issuer.key (no root key); older versions SEC1 keys."""
    items = make_bundle(algorithm=algorithm).to_items()
    del items["root.key"]
    if key_format == "sec1":
        items["issuer.key"] = _sec1(items["issuer.key"])
        assert items["issuer.key"].startswith(b"-----BEGIN EC PRIVATE KEY")
    kit.write_raw(items)
    before = kit.source_of_truth()
    bundle, _, created = load_or_create(kit.store(), make_bundle)
    assert not created and bundle.anchors_pem == items["ca.crt"] and bundle.root_key is None
    assert kit.source_of_truth() == before


def _jwt_mismatch() -> dict[str, bytes]:
    from ca_core.jwt_svid import JwtAlgorithm

    mine, other = (
        make_bundle(jwt=JwtAlgorithm.ES256).to_items(),
        make_bundle(jwt=JwtAlgorithm.ES256).to_items(),
    )
    return {"jwt.key": mine["jwt.key"], "jwks.json": other["jwks.json"]}


def _damaged(kind: str):
    good = make_bundle().to_items()
    other = make_bundle().to_items()
    cases = {
        "missing issuer.key": ({k: v for k, v in good.items() if k != "issuer.key"}, "missing"),
        "corrupt ca.crt": (good | {"ca.crt": b"not a certificate"}, "ca.crt"),
        "mismatched key": (good | {"issuer.key": other["issuer.key"]}, "does not match"),
        "issuer of another root": (good | {"issuer.crt": other["issuer.crt"]}, "does not verify"),
        "only the root key": ({"root.key": good["root.key"]}, "missing"),
        "jwt.key without jwks.json": (good | {"jwt.key": good["issuer.key"]}, "jwks.json: is missing"),
        "jwks.json not publishing jwt.key": (good | _jwt_mismatch(), "does not hold the public key"),
    }
    if kind in ("s3", "secretsmanager"):
        cases["not JSON"] = (b"\x00garbage", "JSON")
        cases["unknown item"] = (encode_document(good).replace('"ca.crt"', '"ca.pem"').encode(), "unknown")
    return cases


@pytest.mark.parametrize("case", list(_damaged("file")))
def test_partial_or_corrupt_bundle_is_refused_and_left_byte_identical(kit, case):
    _refused_untouched(kit, case)


@pytest.mark.parametrize("kit", ["s3", "secretsmanager"], indirect=True)
@pytest.mark.parametrize("case", ["not JSON", "unknown item"])
def test_corrupt_bundle_document_is_refused_and_left_byte_identical(kit, case):
    """The stores that keep the bundle as one JSON document."""
    _refused_untouched(kit, case)


def _refused_untouched(kit, case: str) -> None:
    data, words = _damaged(kit.kind)[case]
    kit.write_raw(data)
    before = kit.raw()
    generated = []
    with pytest.raises(BundleError) as e:
        load_or_create(kit.store(), lambda: generated.append(1) or make_bundle())
    assert words in str(e.value) and kit.url.split("://", 1)[1].split("?")[0] in str(e.value)
    assert not generated
    assert kit.raw() == before


# -- races between processes --------------------------------------------------------------------


def _race_worker(urls: list[str], env: dict[str, str], kubeconfig: str | None, barrier, results) -> None:
    os.environ.update(env)
    for round_no, url in enumerate(urls):
        barrier.wait()
        bundle, _, created = load_or_create(open_store(url, kubeconfig=kubeconfig), make_bundle)
        results.put((round_no, bundle.anchors_pem, created))


@pytest.mark.slow
def test_eight_processes_racing_on_an_empty_store_end_with_one_bundle(kit, request):
    env = request.getfixturevalue("aws_env") if kit.kind in ("s3", "secretsmanager") else {}
    rounds, n = 3, 8
    kits = [
        Kit(kit.kind, Path(str(kit.dir.parent)) if kit.kind == "file" else Path(), kit.endpoint, kit.kube)
        for _ in range(rounds)
    ]
    if kit.kind == "kubernetes":
        kits[1].write_empty()  # one round against an empty Secret (Dapr's Helm chart), the others absent
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=([k.url for k in kits], env, kit.kubeconfig, barrier, results))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(n * rounds)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for round_no, k in enumerate(kits):
        mine = [(anchors, created) for r, anchors, created in outcomes if r == round_no]
        assert len(mine) == n
        assert sum(created for _, created in mine) == 1, f"round {round_no}: not exactly one creator"
        assert len({anchors for anchors, _ in mine}) == 1, f"round {round_no}: replicas disagree"
        assert k.store().load().items["ca.crt"] == mine[0][0]
        assert k.store().load_public().items["ca.crt"] == mine[0][0]  # the public part agrees


# -- faults ---------------------------------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["s3", "secretsmanager"])
def test_unreachable_store_is_retried_with_backoff_then_reported_never_generated(kind, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = f"s3://{TEST_BUCKET}/k.json" if kind == "s3" else "secretsmanager://unreachable"
    delays, generated = [], []
    retry = Retry(sleep=delays.append, random=lambda: 1.0, attempts=4, base_delay=0.5, max_delay=1.5)
    with pytest.raises(Unavailable) as e:
        load_or_create(open_store(url), lambda: generated.append(1) or make_bundle(), retry)
    assert e.value.reason == "store_unreachable" and "gave up after 4 attempts" in str(e.value)
    assert delays == [0.5, 1.0, 1.5]  # exponential, capped (jitter drawn as 1.0 here)
    assert not generated


@pytest.mark.parametrize("kind", ["s3", "secretsmanager"])
def test_missing_credentials_are_reported_as_such_without_retries(kind, aws_env, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    url = f"s3://{TEST_BUCKET}/k.json" if kind == "s3" else "secretsmanager://nocreds"
    delays, generated = [], []
    with pytest.raises(Unavailable) as e:
        load_or_create(
            open_store(url), lambda: generated.append(1) or make_bundle(), Retry(delays.append, lambda: 1.0)
        )
    assert e.value.reason == "store_denied" and "credentials" in str(e.value)
    assert not delays and not generated


def test_a_missing_bucket_is_a_configuration_problem(aws_env):
    delays = []
    with pytest.raises(Unavailable) as e:
        load_or_create(
            open_store("s3://no-such-bucket-here/k.json"), make_bundle, Retry(delays.append, lambda: 1.0)
        )
    assert e.value.reason == "store_misconfigured" and "NoSuchBucket" in str(e.value) and not delays


# -- backend specifics ------------------------------------------------------------------------------


def test_s3_objects_are_encrypted_and_the_public_part_is_repaired(aws_env):
    endpoint = aws_env["AWS_ENDPOINT_URL"]
    s3 = aws_client("s3", endpoint)
    store = open_store(f"s3://{TEST_BUCKET}/kms.json?kms-key-id=alias/sentryca")
    assert store.create(make_bundle().to_items())
    head = s3.head_object(Bucket=TEST_BUCKET, Key="kms.json")
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"].endswith("alias/sentryca")
    public = s3.get_object(Bucket=TEST_BUCKET, Key="kms.json.public")
    assert public["ServerSideEncryption"] == "AES256"
    assert set(json.loads(public["Body"].read())) == {"ca.crt", "issuer.crt"}
    plain = open_store(f"s3://{TEST_BUCKET}/sse-s3.json")
    assert plain.create(make_bundle().to_items())
    assert s3.head_object(Bucket=TEST_BUCKET, Key="sse-s3.json")["ServerSideEncryption"] == "AES256"
    s3.put_object(Bucket=TEST_BUCKET, Key="sse-s3.json.public", Body=b"stale")
    loaded = plain.load()
    assert (
        s3.get_object(Bucket=TEST_BUCKET, Key="sse-s3.json.public")["Body"].read() == b"stale"
    )  # load reads
    plain.publish_public(loaded)
    assert plain.load_public().items == {k: loaded.items[k] for k in ("ca.crt", "issuer.crt")}
    assert plain.load_public().version == loaded.version


def test_secrets_manager_keeps_the_previous_bundle_and_uses_the_kms_key(aws_env):
    sm = aws_client("secretsmanager", aws_env["AWS_ENDPOINT_URL"])
    store = open_store("secretsmanager://sentryca/with-kms?kms-key-id=alias/sentryca")
    first, second = make_bundle().to_items(), make_bundle().to_items()
    assert store.create(first)
    assert sm.describe_secret(SecretId="sentryca/with-kms")["KmsKeyId"].endswith("alias/sentryca")
    v1 = store.load().version
    assert store.replace(second, v1)
    store.publish_public(store.load())  # accepted: the public part follows
    stages = sm.describe_secret(SecretId="sentryca/with-kms")["VersionIdsToStages"]
    assert stages[v1] == ["AWSPREVIOUS"]
    previous = sm.get_secret_value(SecretId="sentryca/with-kms", VersionStage="AWSPREVIOUS")
    assert json.loads(previous["SecretString"])["ca.crt"].encode() == first["ca.crt"]
    public = sm.get_secret_value(SecretId="sentryca/with-kms.public", VersionStage="AWSCURRENT")
    assert json.loads(public["SecretString"]) == {k: second[k].decode() for k in ("ca.crt", "issuer.crt")}


def test_secrets_manager_arn_names_the_public_secret(aws_env):
    sm = aws_client("secretsmanager", aws_env["AWS_ENDPOINT_URL"])
    arn = sm.create_secret(Name="sentryca/by-arn", SecretString=encode_document(make_bundle().to_items()))[
        "ARN"
    ]
    store = open_store(f"secretsmanager://{arn}")
    bundle, _, created = load_or_create(store, make_bundle)
    assert not created
    assert (
        store.load_public().items["ca.crt"] == bundle.anchors_pem
    )  # sentryca/by-arn.public, repaired when load_or_create accepted the bundle


@pytest.mark.parametrize("kit", ["s3", "secretsmanager"], indirect=True)
def test_public_part_repair_never_installs_an_older_bundle(kit):
    """A CA publishes bundle v1; another writer replaces it with v2 (bundle and public part) while
    the publish checks the public part; the repair must not write v1's public part over v2's.
    The other writer is interleaved with botocore's own event hook (``before-parameter-build``) on the
    loader's client, just before it reads the public part; requests still go to moto."""
    store, other = kit.store(), kit.store()
    assert store.create(make_bundle().to_items())
    v1 = store.load().version
    newer = make_bundle().to_items()
    if kit.kind == "s3":
        event, param, public_name = "before-parameter-build.s3.GetObject", "Key", store.public_key
    else:
        event, param, public_name = (
            "before-parameter-build.secrets-manager.GetSecretValue",
            "SecretId",
            store.public_id,
        )
    replaced = []

    def other_writer(params, **_kwargs):  # writes v2 and publishes it as accepted
        if params.get(param) == public_name and not replaced:
            token = other.replace_version(newer, v1)
            other.publish_public(StoredBundle(newer, token))
            replaced.append(token is not None)

    loaded = store.load()
    store.client.meta.events.register(event, other_writer)
    store.publish_public(loaded)
    assert replaced == [True] and loaded.version == v1  # the publish had v1, then v2 landed
    assert store.load_public().items == {k: newer[k] for k in ("ca.crt", "issuer.crt")}


@pytest.mark.parametrize("kit", ["s3", "secretsmanager", "kubernetes"], indirect=True)
def test_a_new_root_written_directly_is_published_only_once_the_ca_accepts_it(kit, tmp_path):
    """design §5: an operator writes a bundle with a new root straight into the store. The running
    CA refuses it (trust continuity), so the public part (relying parties' trust anchors) keeps
    the old anchors byte for byte; a forced restart accepts it and publishes the new anchors."""
    from handlers.server import CertificateAuthority

    from support.ca import ca_config

    flags = {"trust_bundle_store": kit.url} | ({"kubeconfig": kit.kubeconfig} if kit.kubeconfig else {})
    config = ca_config(tmp_path / "unused", **flags)
    ca = CertificateAuthority()
    ca.start(config)
    try:
        old_public = kit.raw()[-1]
        old_anchors = kit.store().load_public().items["ca.crt"]
        new = make_bundle().to_items()
        kit.write_truth(new)
        with pytest.raises(BundleError, match="active root"):
            ca.restart(config)
        assert kit.raw()[-1] == old_public  # byte-identical, same version marker
        assert ca.signer.bundle.anchors_pem == old_anchors  # still serving the old bundle
        ca.restart(config, force=True)
        public = kit.store().load_public()
        assert public.items == {k: new[k] for k in ("ca.crt", "issuer.crt")}
        if kit.kind != "secretsmanager":  # its public secret has versions of its own
            assert public.version == kit.store().load().version
    finally:
        ca.stop(grace=0)


@pytest.mark.parametrize("kit", ["s3", "secretsmanager", "kubernetes"], indirect=True)
def test_load_never_writes_the_public_part(kit):
    """The store poll calls ``load`` on every poll: it must not publish what it read."""
    store = kit.store()
    assert store.create(make_bundle().to_items())
    before = kit.raw()[-1]
    kit.write_truth(make_bundle().to_items())
    assert parse_bundle(store.load().items, store.labels())  # it parses, and still nothing is written
    assert kit.raw()[-1] == before


# -- retries ----------------------------------------------------------------------------------------


def test_retry_delays_are_exponential_capped_and_scaled_by_the_jitter_draw():
    delays, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 5:
            raise Unavailable("down", reason="store_unreachable")
        return "ok"

    retry = Retry(sleep=delays.append, random=lambda: 0.25, attempts=5, base_delay=1.0, max_delay=3.0)
    assert retry.run("read", flaky) == "ok"
    assert delays == [0.25, 0.5, 0.75, 0.75]  # 0.25 × min(3, 1·2**n)
    delays.clear()
    default = Retry(sleep=delays.append, random=lambda: 0.25)
    with pytest.raises(Unavailable, match="gave up after 5 attempts"):
        default.run("read", lambda: (_ for _ in ()).throw(Unavailable("down", reason="store_unreachable")))
    assert delays == [0.125, 0.25, 0.5, 1.0]  # defaults: base 0.5 s, cap 8 s, 5 attempts


# -- AWS errors and SDK retries against a loopback HTTP endpoint ----------------------------------


class _ScriptedS3:
    """A loopback HTTP endpoint answering S3 requests from a script: ``answers`` is a list of
    (status, S3 error code) consumed one per request; once empty, GETs are answered with
    ``documents[path suffix]``. Records every request's method and path."""

    def __init__(self, answers: list[tuple[int, str]], documents: dict[str, bytes] | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.answers, self.documents, self.requests = list(answers), documents or {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                outer.requests.append((self.command, self.path))
                if int(self.headers.get("Content-Length") or 0):
                    self.rfile.read(int(self.headers["Content-Length"]))
                if outer.answers:
                    status, code = outer.answers.pop(0)
                    body = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{code}</Message><RequestId>r1</RequestId></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                else:
                    body = next(
                        (d for suffix, d in outer.documents.items() if self.path.endswith(suffix)), b""
                    )
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("ETag", '"e1"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        import threading

        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_s3(aws_env, monkeypatch):
    servers = []

    def start(answers, documents=None):
        servers.append(_ScriptedS3(answers, documents))
        monkeypatch.setenv("AWS_ENDPOINT_URL", servers[-1].url)
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_access_denied_is_a_permission_error_without_retries_and_nothing_generated(scripted_s3):
    endpoint = scripted_s3([(403, "AccessDenied")] * 10)
    delays, generated = [], []
    store = open_store(f"s3://{TEST_BUCKET}/denied.json")
    with pytest.raises(Unavailable) as e:
        load_or_create(store, lambda: generated.append(1) or make_bundle(), Retry(delays.append, lambda: 1.0))
    assert e.value.reason == "store_denied" and "AccessDenied" in str(e.value)
    assert endpoint.requests == [("GET", f"/{TEST_BUCKET}/denied.json")]  # one request: no SDK retry
    assert not delays and not generated


def test_sdk_retry_mode_is_standard_unless_aws_retry_mode_says_otherwise(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    assert open_store(f"s3://{TEST_BUCKET}/k.json").client.meta.config.retries["mode"] == "standard"
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert open_store(f"s3://{TEST_BUCKET}/k.json").client.meta.config.retries["mode"] == "adaptive"
    assert open_store("secretsmanager://k").client.meta.config.retries["mode"] == "adaptive"


def test_throttling_is_retried_by_the_sdk_and_the_read_then_succeeds(scripted_s3, monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    items = make_bundle().to_items()
    public = {k: items[k] for k in ("ca.crt", "issuer.crt")}
    endpoint = scripted_s3(
        [(503, "SlowDown"), (503, "SlowDown")],
        {".json.public": encode_document(public).encode(), ".json": encode_document(items).encode()},
    )
    stored = open_store(f"s3://{TEST_BUCKET}/slow.json").load()
    assert stored is not None and dict(stored.items) == items
    bundle_reads = [r for r in endpoint.requests if r == ("GET", f"/{TEST_BUCKET}/slow.json")]
    assert len(bundle_reads) == 3  # two SlowDown answers retried by the SDK, then the bundle


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_aws_max_attempts_is_the_number_of_requests_in_all(scripted_s3, monkeypatch, attempts):
    # AWS_MAX_ATTEMPTS counts the first request too (as the AWS SDKs and CLI read it)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
    endpoint = scripted_s3([(503, "SlowDown")] * 5, {})
    with pytest.raises(Unavailable):
        open_store(f"s3://{TEST_BUCKET}/busy.json").load()
    bundle_reads = [r for r in endpoint.requests if r == ("GET", f"/{TEST_BUCKET}/busy.json")]
    assert len(bundle_reads) == attempts


# -- a store that lost its bundle (design §5.2: held_before, --bootstrap-policy) ---------------------


def _ca_flags(kit, **flags: str) -> dict[str, str]:
    return (
        {"trust_bundle_store": kit.url} | ({"kubeconfig": kit.kubeconfig} if kit.kubeconfig else {}) | flags
    )


def test_a_store_that_lost_its_bundle_says_it_held_one(kit):
    store = kit.store()
    assert store.held_before() is None  # never used: nothing to show
    assert store.create(make_bundle().to_items())
    kit.remove_bundle()
    assert store.load() is None  # empty now, as far as loading goes
    evidence = store.held_before()
    assert evidence, "the store forgot that it held a bundle"
    name = {"file": ".sentryca-held", "s3": kit.url[5:], "secretsmanager": "scheduled for deletion"}
    assert name.get(kit.kind, "sentryca/bundle-version=") in evidence, evidence


def test_a_start_on_a_store_that_lost_its_bundle_is_refused_and_writes_nothing(kit, tmp_path):
    """The tester's case: the bundle is gone, the CA restarts. It must not generate a new root
    (every workload holds the old anchors); it says what it found and how to restore."""
    from handlers.server import CertificateAuthority

    from support.ca import ca_config

    config = ca_config(tmp_path / "unused", **_ca_flags(kit))
    ca = CertificateAuthority()
    ca.start(config)
    ca.stop(grace=0)
    kit.remove_bundle()
    before = kit.trace()
    with pytest.raises(BundleError) as e:
        CertificateAuthority().start(config)
    message = str(e.value)
    assert "refusing to start" in message and "held one before" in message
    assert kit.store().held_before() in message  # what was found
    assert f"sentryca bundle import --trust-bundle-store {kit.store().description} --from DIR" in message
    assert "bundle init" in message and "--force" in message  # how to start anew, deliberately
    assert kit.trace() == before  # no new root, not a byte written
    assert kit.store().load() is None


def test_bootstrap_policy_never_refuses_even_a_fresh_store_and_the_default_bootstraps(kit, tmp_path):
    from handlers.server import CertificateAuthority

    from support.ca import ca_config

    with pytest.raises(BundleError, match="--bootstrap-policy is never") as e:
        CertificateAuthority().start(
            ca_config(tmp_path / "unused", **_ca_flags(kit, bootstrap_policy="never"))
        )
    assert "sentryca bundle init --trust-bundle-store" in str(e.value) and "--from DIR" in str(e.value)
    assert kit.store().load() is None and kit.store().held_before() is None  # nothing written
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "unused", **_ca_flags(kit)))  # if-never-held: a first start
    try:
        assert kit.store().load().items["ca.crt"] == ca.signer.bundle.anchors_pem
    finally:
        ca.stop(grace=0)


def test_bundle_init_creates_whatever_the_policy_and_over_evidence_only_with_force(kit, capsys, monkeypatch):
    from handlers.cli import main

    monkeypatch.setenv("SENTRY_BOOTSTRAP_POLICY", "never")  # no matter: init is the explicit way
    args = ["bundle", "init", "--trust-bundle-store", kit.url]
    args += ["--kubeconfig", kit.kubeconfig] if kit.kubeconfig else []
    assert main(args) == 0
    first = kit.store().load().items["ca.crt"]
    kit.remove_bundle()
    before = kit.trace()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "held one before" in err and "--force" in err and "--from DIR" in err
    assert kit.trace() == before
    if kit.kind == "secretsmanager":  # a secret scheduled for deletion must be restored, not replaced
        assert main([*args, "--force"]) == 1
        assert "scheduled for deletion" in capsys.readouterr().err
        return
    assert main([*args, "--force"]) == 0
    assert kit.store().load().items["ca.crt"] != first  # a new CA, as asked


def test_other_ways_of_losing_the_bundle_leave_evidence_too_but_a_deleted_directory_none(kit):
    """What each backend still shows when the bundle goes another way; and the documented limit:
    a file store's directory deleted whole leaves nothing (hence --bootstrap-policy never)."""
    import hashlib

    store = kit.store()
    items = make_bundle().to_items()
    assert store.create(items)
    if kit.kind == "file":
        from adapters.stores.files import HELD_MARKER

        (kit.dir / HELD_MARKER).unlink()  # marker gone too; the visible files deleted
        for name in ("ca.crt", "issuer.crt", "issuer.key", "root.key"):
            (kit.dir / name).unlink()
        assert store.load() is None and "..data" in store.held_before()
        shutil.rmtree(kit.dir)
        assert store.held_before() is None  # nothing left to tell a first start from a loss
        return
    if kit.kind == "kubernetes":  # the Secret emptied of its bundle keys, the ConfigMap deleted
        secret = kit.kube.server.get("v1", "secrets", KUBE_NAMESPACE, kit.name)
        secret["data"] = {}
        kit.kube.server.put("v1", "secrets", KUBE_NAMESPACE, secret)
        kit.kube.server.delete("v1", "configmaps", KUBE_NAMESPACE, kit.name)
        digest = "sha256:" + hashlib.sha256(items["ca.crt"]).hexdigest()  # `sha256sum ca.crt`
        assert store.load() is None and f"sentryca/bundle-anchors={digest}" in store.held_before()
    elif kit.kind == "secretsmanager":  # deleted at once, without recovery: its public part stays
        aws_client("secretsmanager", kit.endpoint).delete_secret(
            SecretId=kit.name, ForceDeleteWithoutRecovery=True
        )
        assert store.load() is None and f"{kit.name}.public" in store.held_before()
    else:  # every version of the bundle object deleted: the public object stays
        s3 = aws_client("s3", kit.endpoint)
        for v in s3.list_object_versions(Bucket=TEST_BUCKET, Prefix=kit.key)["Versions"]:
            if v["Key"] == kit.key:
                s3.delete_object(Bucket=TEST_BUCKET, Key=kit.key, VersionId=v["VersionId"])
        assert store.load() is None and f"{kit.key}.public" in store.held_before()


def test_a_polling_ca_whose_store_loses_its_bundle_says_so_and_keeps_signing(kit, tmp_path):
    """Every store kind: the bundle removed under a polling CA (design §8.4) → ``degraded`` in
    /healthz (still 200 and ready), the gauge at 1, a client still served; restored → cleared."""
    from handlers.server import CertificateAuthority

    from support.ca import ca_config
    from support.probe import healthz, metric, signs
    from support.wait import wait_until

    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path / "unused", **_ca_flags(kit, store_poll_interval="200ms")))
    try:
        backup = dict(kit.store().load().items)
        anchors = ca.signer.bundle.anchors_pem
        assert "degraded" not in healthz(ca)[1] and metric(ca, "sentryca_store_degraded") == 0
        kit.remove_bundle()
        wait_until(lambda: healthz(ca)[1].get("degraded"), f"degraded in /healthz ({kit.kind})")
        status, body = healthz(ca)
        assert status == 200 and body["ready"] is True
        assert body["degraded"]["problem"] == "store_empty", body["degraded"]
        assert metric(ca, "sentryca_store_degraded") == 1
        assert signs(ca, anchors)
        if kit.kind == "secretsmanager":
            sm = aws_client("secretsmanager", kit.endpoint)
            for name in (kit.name, f"{kit.name}.public"):
                sm.restore_secret(SecretId=name)
            sm.put_secret_value(SecretId=kit.name, SecretString=encode_document(backup))
        else:
            assert kit.store().create(backup)
        wait_until(lambda: "degraded" not in healthz(ca)[1], f"degraded cleared ({kit.kind})")
        assert metric(ca, "sentryca_store_degraded") == 0 and signs(ca, anchors)
    finally:
        ca.stop(grace=0)


# -- the JWT items (design §5.1, §11) -------------------------------------------------------------


def test_a_bundle_with_jwt_items_round_trips_and_only_the_jwks_is_public(kit):
    from ca_core.jwt_svid import JwtAlgorithm

    bundle = make_bundle(jwt=JwtAlgorithm.RS256)
    items = bundle.to_items()
    store = kit.store()
    _, _, created = load_or_create(store, lambda: bundle)
    assert created and dict(store.load().items) == items
    again = parse_bundle(store.load().items)
    assert (
        again.jwks == items["jwks.json"]
        and again.jwt_key.private_numbers() == bundle.jwt_key.private_numbers()
    )
    public = store.load_public().items
    assert public == {k: items[k] for k in ("ca.crt", "issuer.crt", "jwks.json")}  # never jwt.key
    assert parse_public_bundle(public).jwks == items["jwks.json"]
    if kit.kind == "kubernetes":  # Dapr's names: the Secret holds both, the ConfigMap jwks.json
        s = kit.kube.server.get("v1", "secrets", KUBE_NAMESPACE, kit.name)
        assert base64.b64decode(s["data"]["jwt.key"]) == items["jwt.key"]
        assert base64.b64decode(s["data"]["jwks.json"]) == items["jwks.json"]
        cm = kit.kube.server.get("v1", "configmaps", KUBE_NAMESPACE, kit.name)
        assert cm["data"]["jwks.json"] == items["jwks.json"].decode() and "jwt.key" not in cm["data"]
    if kit.kind == "file":
        assert (kit.dir / "jwt.key").stat().st_mode & 0o777 == 0o600
        assert (kit.dir / "jwks.json").read_bytes() == items["jwks.json"]
    # a replacement without the JWT items drops jwks.json from the public part once accepted
    plain = make_bundle().to_items()
    assert store.replace(plain, store.load().version)
    store.publish_public(store.load())
    assert set(store.load_public().items) == {"ca.crt", "issuer.crt"}


def _dapr_jwt_items(key) -> dict[str, bytes]:
    """jwt.key and jwks.json as Dapr's Sentry writes them (``bundle.GenerateJWT``): PKCS#8 RSA-2048,
    one JWK with kid = standard base64 of its SHA-256 thumbprint, alg RS256, use sig (jwx sorts
    the members)."""
    import hashlib

    pub = key.public_key().public_numbers()

    def b64url(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    e, n = b64url(pub.e), b64url(pub.n)
    kid = base64.b64encode(hashlib.sha256(f'{{"e":"{e}","kty":"RSA","n":"{n}"}}'.encode()).digest()).decode()
    jwk = {"alg": "RS256", "e": e, "kid": kid, "kty": "RSA", "n": n, "use": "sig"}
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"jwt.key": pem, "jwks.json": json.dumps({"keys": [jwk]}).encode()}


def test_a_dapr_written_bundle_with_jwt_items_loads_as_is(kit):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ca_core.config import load_config
    from ca_core.policy import jwt_issuer

    key = rsa.generate_private_key(65537, 2048)
    items = make_bundle().to_items() | _dapr_jwt_items(key)
    del items["root.key"]
    kit.write_raw(items)
    before = kit.source_of_truth()
    bundle, _, created = load_or_create(kit.store(), make_bundle)
    assert not created and bundle.jwt_key.private_numbers() == key.private_numbers()
    assert kit.source_of_truth() == before
    issuer = jwt_issuer(load_config({"jwt_enabled": "true"}, {}), bundle)
    assert issuer.key_id == json.loads(items["jwks.json"])["keys"][0]["kid"]


def test_a_start_with_jwt_on_adds_the_key_once_and_a_racing_replica_loads_the_winners(kit):
    """design §5.2: composition.ensure_jwt_key on each store: a conditional replace that keeps
    every X.509 item byte for byte; the replica that read the same version and lost loads the key
    the winner wrote."""
    from ca_core.config import load_config
    from handlers import composition

    plain = make_bundle().to_items()
    store = kit.store()
    assert store.create(plain)
    cfg = load_config({"jwt_enabled": "true", "jwt_signing_algorithm": "ES256"}, {})
    first = composition.load_bundle(cfg, store, NOW, publish=False)
    second = composition.load_bundle(cfg, kit.store(), NOW, publish=False)  # same version read
    assert first.bundle.jwt_key is None and first.version == second.version
    won = composition.ensure_jwt_key(cfg, store, first, NOW)
    lost = composition.ensure_jwt_key(cfg, kit.store(), second, NOW)
    assert won.bundle.jwks is not None and lost.bundle.jwks == won.bundle.jwks
    assert lost.version == won.version == store.load().version
    items = dict(store.load().items)
    assert {k: items[k] for k in plain} == plain and set(items) == {*plain, "jwt.key", "jwks.json"}
    again = composition.ensure_jwt_key(
        cfg, store, composition.load_bundle(cfg, store, NOW, publish=False), NOW
    )
    assert again.version == won.version  # nothing to add: nothing written
