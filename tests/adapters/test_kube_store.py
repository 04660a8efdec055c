"""The Kubernetes Secret store specifics, with the official client against the loopback fake API
server: Dapr's layout, the ConfigMap as a derived public part (repaired from the Secret, never
the reverse), conditional writes losing to a writer placed between read and write, error
mapping. The behaviour every store shares is proven in test_stores.py."""

from __future__ import annotations

import base64
import uuid

import pytest

from adapters.stores import FileNames, Retry, load_or_create, open_store
from adapters.stores.kubernetes_secret import VERSION_ANNOTATION, KubernetesSecretBundleStore
from ca_core.bundle import parse_public_bundle
from ca_core.errors import BundleError, Unavailable

from support.ca import ca_config
from support.kube import KUBE_NAMESPACE
from support.kube_api_server import KubeApiServer
from support.pki import make_bundle

NS = KUBE_NAMESPACE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def name() -> str:
    return f"bundle-{uuid.uuid4().hex[:10]}"


def secret(api: KubeApiServer, n: str) -> dict | None:
    return api.get("v1", "secrets", NS, n)


def config_map(api: KubeApiServer, n: str) -> dict | None:
    return api.get("v1", "configmaps", NS, n)


def dapr_layout(api: KubeApiServer, n: str, items: dict[str, bytes], **extra_secret: str) -> None:
    """What Dapr's Sentry leaves: Secret ca.crt/issuer.crt/issuer.key, ConfigMap ca.crt."""
    meta = {"name": n, "labels": {"app": "dapr-sentry"}}
    data = {k: b64(v) for k, v in items.items()} | extra_secret
    api.put("v1", "secrets", NS, {"metadata": meta, "type": "Opaque", "data": data})
    api.put("v1", "configmaps", NS, {"metadata": meta, "data": {"ca.crt": items["ca.crt"].decode()}})


def test_created_secret_and_config_map_have_dapr_layout(kube_api):
    n = name()
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    bundle, version, created = load_or_create(store, make_bundle)
    s, cm = secret(kube_api.server, n), config_map(kube_api.server, n)
    assert created and s["type"] == "Opaque" and version == s["metadata"]["resourceVersion"]
    assert set(s["data"]) == {"ca.crt", "issuer.crt", "issuer.key", "root.key"}
    assert base64.b64decode(s["data"]["ca.crt"]) == bundle.anchors_pem
    # The public part: anchors (what Dapr distributes) and the issuer chain, never a key.
    assert cm["data"] == {
        "ca.crt": bundle.anchors_pem.decode(),
        "issuer.crt": bundle.issuer_chain_pem.decode(),
    }
    assert cm["metadata"]["annotations"][VERSION_ANNOTATION] == version
    assert store.load_public().version == version


def test_key_names_follow_the_issuer_filename_options(kube_api):
    n = name()
    names = FileNames("root.pem", "issuer.pem", "issuer-key.pem")
    store = open_store(f"kubernetes://{NS}/{n}", names, kubeconfig=kube_api.kubeconfig)
    items = make_bundle().to_items() | {"rotation.json": b"{}\n"}
    assert store.create(items)
    assert set(secret(kube_api.server, n)["data"]) == {
        "root.pem",
        "issuer.pem",
        "issuer-key.pem",
        "root.key",
        "rotation.json",
    }
    assert set(config_map(kube_api.server, n)["data"]) == {"root.pem", "issuer.pem"}
    assert dict(store.load().items) == items
    partial = {"root.pem": b64(items["ca.crt"]), "issuer.pem": b64(items["issuer.crt"])}
    kube_api.server.put("v1", "secrets", NS, {"metadata": {"name": n}, "data": partial})
    with pytest.raises(BundleError, match=rf"kubernetes://{NS}/{n} key issuer-key\.pem"):
        load_or_create(store, make_bundle)


def test_dapr_layout_loads_gains_issuer_crt_and_keeps_foreign_keys(kube_api):
    n = name()
    items = make_bundle().to_items()
    del items["root.key"]
    dapr_layout(kube_api.server, n, items, **{"other.key": b64(b"not ours")})
    before = secret(kube_api.server, n)
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    bundle, version, created = load_or_create(store, make_bundle)
    assert not created and bundle.anchors_pem == items["ca.crt"] and secret(kube_api.server, n) == before
    cm = config_map(kube_api.server, n)
    assert cm["data"] == {"ca.crt": items["ca.crt"].decode(), "issuer.crt": items["issuer.crt"].decode()}
    assert cm["metadata"]["labels"] == {"app": "dapr-sentry"}  # the Helm chart's object, updated in place
    # A replacement keeps what is not ours (another key, the labels) and the Secret's identity.
    new = make_bundle().to_items()
    assert store.replace(new, version)
    after = secret(kube_api.server, n)
    assert after["data"]["other.key"] == b64(b"not ours") and after["metadata"]["labels"] == {
        "app": "dapr-sentry"
    }
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert base64.b64decode(after["data"]["issuer.key"]) == new["issuer.key"]
    store.publish_public(store.load())  # accepted: the ConfigMap, updated in place, follows
    assert config_map(kube_api.server, n)["data"]["ca.crt"] == new["ca.crt"].decode()


@pytest.mark.parametrize("edit", ["other ca.crt", "deleted", "no issuer.crt"])
def test_config_map_is_repaired_from_the_secret_at_start_never_the_reverse(kube_api, tmp_path, edit):
    from handlers.server import CertificateAuthority

    n = name()
    url = f"kubernetes://{NS}/{n}"
    store = open_store(url, kubeconfig=kube_api.kubeconfig)
    bundle, _, _ = load_or_create(store, make_bundle)
    cm = config_map(kube_api.server, n)
    if edit == "other ca.crt":
        cm["data"]["ca.crt"] = make_bundle().anchors_pem.decode()
        kube_api.server.put("v1", "configmaps", NS, cm)
    elif edit == "deleted":
        kube_api.server.delete("v1", "configmaps", NS, n)
    else:
        del cm["data"]["issuer.crt"]
        kube_api.server.put("v1", "configmaps", NS, cm)
    truth = secret(kube_api.server, n)
    ca = CertificateAuthority()
    ca.start(ca_config(tmp_path, trust_bundle_store=url, kubeconfig=kube_api.kubeconfig))
    try:
        assert secret(kube_api.server, n) == truth  # byte-identical, same resourceVersion
        repaired = config_map(kube_api.server, n)["data"]
        assert repaired == {
            "ca.crt": bundle.anchors_pem.decode(),
            "issuer.crt": bundle.issuer_chain_pem.decode(),
        }
    finally:
        ca.stop(grace=0)


def test_a_refused_bundle_is_never_distributed(kube_api):
    n = name()
    items = make_bundle().to_items()
    dapr_layout(kube_api.server, n, items | {"issuer.key": make_bundle().to_items()["issuer.key"]})
    stale = config_map(kube_api.server, n)
    stale["data"]["ca.crt"] = "stale"
    kube_api.server.put("v1", "configmaps", NS, stale)
    before = (secret(kube_api.server, n), config_map(kube_api.server, n))
    with pytest.raises(BundleError, match="does not match"):
        load_or_create(open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig), make_bundle)
    assert (secret(kube_api.server, n), config_map(kube_api.server, n)) == before


def test_load_public_needs_only_the_config_map(kube_api, tmp_path):
    n = name()
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    assert store.load_public() is None
    bundle, version, _ = load_or_create(store, make_bundle)
    with KubeApiServer() as api:  # a reader that may read ConfigMaps only
        api.put("v1", "configmaps", NS, config_map(kube_api.server, n))
        api.fail(403, path="/secrets/")
        reader = KubernetesSecretBundleStore(NS, n, kubeconfig=str(api.write_kubeconfig(tmp_path / "kc")))
        public = reader.load_public()
        assert public.version == version and "issuer.key" not in public.items
        assert parse_public_bundle(public.items).trust_anchors == bundle.trust_anchors
        with pytest.raises(Unavailable) as e:
            reader.load()
        assert e.value.reason == "store_denied" and "403" in str(e.value) and "secrets" in str(e.value)


# -- writers between a read and a write ------------------------------------------------------------


def test_filling_an_empty_secret_loses_to_a_writer_in_between(kube_api):
    n = name()
    meta = {"name": n}
    kube_api.server.put("v1", "secrets", NS, {"metadata": meta, "type": "Opaque"})  # as the Helm chart
    theirs = make_bundle().to_items()

    def other_replica(_req):
        kube_api.server.put(
            "v1", "secrets", NS, {"metadata": meta, "data": {k: b64(v) for k, v in theirs.items()}}
        )

    kube_api.server.before("PUT", "v1", "secrets", other_replica)
    try:
        store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
        bundle, _, created = load_or_create(store, make_bundle)
    finally:
        kube_api.server.handle("PUT", "v1", "secrets", lambda _r: None)
    assert not created and bundle.anchors_pem == theirs["ca.crt"]  # the loser loads the winner's
    assert base64.b64decode(secret(kube_api.server, n)["data"]["issuer.key"]) == theirs["issuer.key"]


def test_replace_loses_to_a_writer_in_between_and_the_config_map_follows_the_secret(kube_api):
    n = name()
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    assert store.create(make_bundle().to_items())
    v1 = store.load().version
    theirs = make_bundle().to_items()

    def other_writer(_req):
        s = secret(kube_api.server, n)
        s["data"] = {k: b64(v) for k, v in theirs.items()}
        kube_api.server.put("v1", "secrets", NS, s)

    kube_api.server.before("PUT", "v1", "secrets", other_writer)
    try:
        assert not store.replace(make_bundle().to_items(), v1)
    finally:
        kube_api.server.handle("PUT", "v1", "secrets", lambda _r: None)
    assert base64.b64decode(secret(kube_api.server, n)["data"]["ca.crt"]) == theirs["ca.crt"]
    # The other writer did not update the ConfigMap; publishing the accepted Secret mirrors it.
    assert store.load_public().items["ca.crt"] != theirs["ca.crt"]
    store.publish_public(store.load())
    assert store.load_public().items["ca.crt"] == theirs["ca.crt"]


def test_a_replace_leaves_the_config_map_to_whoever_accepts_the_bundle(kube_api):
    """design §5.5: the ConfigMap is the record of the last accepted bundle. A replace writes the
    Secret only; the ConfigMap follows once the bundle is published as accepted."""
    from adapters.stores import StoredBundle

    n = name()
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    first = make_bundle().to_items()
    assert store.create(first)
    newer = make_bundle().to_items()
    version = store.replace_version(newer, store.load().version)
    assert version is not None
    assert config_map(kube_api.server, n)["data"]["ca.crt"] == first["ca.crt"].decode()
    assert store.load_accepted().items["ca.crt"] == first["ca.crt"]
    store.publish_public(StoredBundle(newer, version))
    assert config_map(kube_api.server, n)["data"]["ca.crt"] == newer["ca.crt"].decode()
    assert config_map(kube_api.server, n)["metadata"]["annotations"][VERSION_ANNOTATION] == version


# -- errors ----------------------------------------------------------------------------------------


@pytest.fixture
def own_api(tmp_path):
    """A fake API server of the test's own (faults are forced on it), and a store on it."""
    with KubeApiServer(bearer_token="t") as api:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "kubeconfig"))
        yield api, kubeconfig


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_throttling_are_retried_then_reported_never_generated(own_api, status):
    api, kubeconfig = own_api
    api.fail(status, path="/secrets/")
    delays, generated = [], []
    with pytest.raises(Unavailable) as e:
        load_or_create(
            open_store(f"kubernetes://{NS}/b", kubeconfig=kubeconfig),
            lambda: generated.append(1) or make_bundle(),
            Retry(delays.append, lambda: 1.0, attempts=3),
        )
    assert e.value.reason == "store_unreachable" and str(status) in str(e.value)
    assert "gave up after 3 attempts" in str(e.value) and len(delays) == 2 and not generated


def test_a_transient_failure_is_retried_and_then_the_store_works(own_api):
    api, kubeconfig = own_api
    api.fail(503, path="/secrets/", times=2)
    delays = []
    _, _, created = load_or_create(
        open_store(f"kubernetes://{NS}/b", kubeconfig=kubeconfig),
        make_bundle,
        Retry(delays.append, lambda: 0.0),
    )
    assert created and len(delays) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_denied_is_a_permission_error_without_retries(own_api, status, tmp_path):
    api, kubeconfig = own_api
    if status == 401:
        kubeconfig = str(api.write_kubeconfig(tmp_path / "wrong", token="wrong-token"))
    else:
        api.fail(403, path="/secrets/")
    delays = []
    with pytest.raises(Unavailable) as e:
        load_or_create(
            open_store(f"kubernetes://{NS}/b", kubeconfig=kubeconfig),
            make_bundle,
            Retry(delays.append, lambda: 1.0),
        )
    assert e.value.reason == "store_denied" and str(status) in str(e.value)
    assert "secrets and configmaps" in str(e.value) and not delays
    assert api.get("v1", "secrets", NS, "b") is None


def test_unreachable_and_hanging_api_are_unavailable(own_api):
    api, kubeconfig = own_api
    api.fail(hang=True, path="/secrets/")
    store = KubernetesSecretBundleStore(NS, "b", kubeconfig=kubeconfig, request_timeout=0.5)
    with pytest.raises(Unavailable) as e:
        store.load()
    assert e.value.reason == "store_unreachable" and "unreachable" in str(e.value)
    api.stop()
    with pytest.raises(Unavailable) as e:
        open_store(f"kubernetes://{NS}/b", kubeconfig=kubeconfig).load()
    assert e.value.reason == "store_unreachable"


def test_a_config_map_that_cannot_be_written_does_not_fail_the_bundle_write(own_api, caplog):
    api, kubeconfig = own_api
    api.fail(403, path="/configmaps")
    store = open_store(f"kubernetes://{NS}/b", kubeconfig=kubeconfig)
    assert store.create(make_bundle().to_items())
    assert api.get("v1", "secrets", NS, "b") is not None and api.get("v1", "configmaps", NS, "b") is None
    assert "ConfigMap" in caplog.text and "403" in caplog.text
    api.clear_failures()
    store.publish_public(store.load())  # repaired by the next publish
    assert api.get("v1", "configmaps", NS, "b") is not None


def test_unloadable_kubeconfig_is_a_configuration_error(tmp_path):
    from ca_core.errors import ConfigError

    (tmp_path / "kubeconfig").write_text("not: [a kubeconfig")
    store = open_store(f"kubernetes://{NS}/b", kubeconfig=str(tmp_path / "kubeconfig"))
    with pytest.raises(ConfigError, match="--kubeconfig"):
        load_or_create(store, make_bundle, Retry(lambda _s: None, lambda: 0.0))


def test_config_map_repair_never_mirrors_an_older_bundle(kube_api):
    """A CA publishes Secret v1; another writer replaces the Secret and its ConfigMap with v2 just
    before the publish reads the ConfigMap; the repair must not write v1 over v2."""
    n = name()
    store = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)
    assert store.create(make_bundle().to_items())
    v1 = store.load().version
    newer = make_bundle().to_items()
    other = open_store(f"kubernetes://{NS}/{n}", kubeconfig=kube_api.kubeconfig)

    def newer_writer(_req):  # a whole replace by another writer, Secret then ConfigMap
        s = secret(kube_api.server, n)
        s["data"] = {k: b64(v) for k, v in newer.items()}
        s = kube_api.server.put("v1", "secrets", NS, s)
        cm = config_map(kube_api.server, n)
        cm["data"] = {k: newer[k].decode() for k in ("ca.crt", "issuer.crt")}
        cm["metadata"]["annotations"] = {VERSION_ANNOTATION: s["metadata"]["resourceVersion"]}
        kube_api.server.put("v1", "configmaps", NS, cm)

    stored = store.load()
    assert stored.version == v1
    kube_api.server.before("GET", "v1", "configmaps", newer_writer)
    try:
        store.publish_public(stored)  # v1, read before the other writer's replace
    finally:
        kube_api.server.handle("GET", "v1", "configmaps", lambda _r: None)
    assert other.load_public().items == {k: newer[k] for k in ("ca.crt", "issuer.crt")}
    assert (
        config_map(kube_api.server, n)["metadata"]["annotations"][VERSION_ANNOTATION]
        == (secret(kube_api.server, n)["metadata"]["resourceVersion"])
    )
