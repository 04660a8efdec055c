"""The root key in AWS KMS (design §5.18), against moto in server mode on loopback: `sentryca
serve`, `bundle init`, `rotate issuer|root|advance`, `inspect` and `bundle export` with
``--root-key kms://...``. The root is self-signed through KMS ``Sign`` and the store holds only
the key's reference; the chain and leaves are checked with OpenSSL (``-x509_strict``), pyca's
verifier and pkilint; the store's bytes are searched for the root key (moto holds it in this
process: its key objects are read directly)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store
from e2e.test_conformance import pkilint_errors

import sentryca_client as client
from adapters import kms
from adapters.stores import FileBundleStore
from ca_core.bundle import ROOT_KEY, ROOT_KEY_REF, certificates_pem, parse_bundle
from ca_core.errors import Unavailable
from ca_core.keys import public_key_der
from ca_core.rotation.codec import parse_state

from support.aws import aws_client
from support.cli import run_sentryca as run
from support.cli import serve
from support.openssl import run_openssl

pytestmark = pytest.mark.slow
ACCOUNT, REGION = "123456789012", "us-east-1"  # moto's default account, the tests' region


def kms_key(endpoint: str, spec: str, alias: str | None = None) -> tuple[str, str]:
    """A new SIGN_VERIFY key of ``spec`` in moto: (its id, its ARN); with ``alias``, named so."""
    c = aws_client("kms", endpoint)
    meta = c.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]
    if alias:
        c.create_alias(AliasName=f"alias/{alias}", TargetKeyId=meta["KeyId"])
    return meta["KeyId"], meta["Arn"]


def moto_private_key(key_id: str):
    """The private key moto keeps for ``key_id`` (what must never reach the store)."""
    from moto.kms.models import kms_backends

    return kms_backends[ACCOUNT][REGION].keys[key_id].private_key.private_key


def secret_forms(key) -> list[bytes]:
    """Every encoding of ``key``'s private half a store could hold: PKCS#8 and traditional DER
    and PEM, and the raw private scalar (EC) or exponent (RSA)."""
    forms = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        for enc in (serialization.Encoding.DER, serialization.Encoding.PEM):
            forms.append(key.private_bytes(enc, fmt, serialization.NoEncryption()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        forms.append(key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big"))
    if isinstance(key, rsa.RSAPrivateKey):
        d = key.private_numbers().d
        forms.append(d.to_bytes((d.bit_length() + 7) // 8, "big"))
    return forms


def assert_no_key_in(directory: Path, key) -> None:
    forms = secret_forms(key)
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, f"{path} holds the root key"


def strict_verify(tmp_path: Path, leaf: x509.Certificate, chain, anchors_pem: bytes) -> None:
    """OpenSSL -x509_strict, pyca's client verifier, pkilint on leaf, issuer(s) and anchors."""
    (tmp_path / "anchors.pem").write_bytes(anchors_pem)
    (tmp_path / "chain.pem").write_bytes(certificates_pem(list(chain)))
    (tmp_path / "leaf.pem").write_bytes(certificates_pem([leaf]))
    r = run_openssl(
        "verify",
        "-x509_strict",
        "-CAfile",
        str(tmp_path / "anchors.pem"),
        "-untrusted",
        str(tmp_path / "chain.pem"),
        "-purpose",
        "sslclient",
        str(tmp_path / "leaf.pem"),
    )
    assert r.returncode == 0 and b"OK" in r.stdout, r.stdout + r.stderr
    verifier = (
        PolicyBuilder()
        .store(Store(x509.load_pem_x509_certificates(anchors_pem)))
        .time(datetime.now(UTC))
        .build_client_verifier()
    )
    verifier.verify(leaf, list(chain))
    for name in ("leaf.pem", "chain.pem", "anchors.pem"):
        for n, cert in enumerate(x509.load_pem_x509_certificates((tmp_path / name).read_bytes())):
            one = tmp_path / f"lint-{name}-{n}.pem"
            one.write_bytes(certificates_pem([cert]))
            assert pkilint_errors(one) == [], (name, n)


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_NIST_P384", "RSA_2048"])
def test_serve_with_a_kms_root_signs_leaves_that_verify_strictly(spec, moto_endpoint, aws_env, tmp_path):
    key_id, arn = kms_key(moto_endpoint, spec, alias=f"sentryca-root-{spec.lower()}")
    ca = serve(
        tmp_path,
        "--mode",
        "standalone",
        "--root-key",
        f"kms://alias/sentryca-root-{spec.lower()}",
        env=aws_env,
    )
    try:
        resp = ca.sign("orders", "prod")
        signed = client.verify_response(resp, ca.anchors)
    finally:
        ca.stop()
    items = FileBundleStore(ca.creds).load().items
    assert ROOT_KEY not in items
    assert items[ROOT_KEY_REF] == f"kms://{arn}\n".encode()  # the ARN: an alias could move
    root = x509.load_pem_x509_certificate(ca.anchors)
    assert public_key_der(root.public_key()) == public_key_der(moto_private_key(key_id).public_key())
    chain = x509.load_pem_x509_certificates(signed.chain_pem)
    assert chain[0] == signed.leaf and signed.spiffe_id == "spiffe://public/ns/prod/orders"
    strict_verify(tmp_path, signed.leaf, chain[1:], ca.anchors)
    assert_no_key_in(ca.creds, moto_private_key(key_id))


def test_rotations_sign_through_kms_and_no_store_item_holds_a_root_key(moto_endpoint, aws_env, tmp_path):
    store = tmp_path / "store"
    key_id, arn = kms_key(moto_endpoint, "ECC_NIST_P256")
    r = run(
        "bundle", "init", "--issuer-credentials", str(store), "--root-key", f"kms://{key_id}", env=aws_env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("inspect", "--issuer-credentials", str(store), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"root key in KMS: kms://{arn}" in r.stdout
    assert "issuer key in the store" in r.stdout
    # KMS out of reach: inspect still says where the keys live, and that they cannot be read here
    away = aws_env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    r = run("inspect", "--issuer-credentials", str(store), env=away)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"root key in KMS: kms://{arn}" in r.stdout and "the keys cannot be read here" in r.stdout
    assert "Traceback" not in r.stderr

    # An issuer rotation: the new issuer is signed by KMS (no root key exists locally).
    before = parse_bundle(FileBundleStore(store).load().items).issuer
    r = run("rotate", "issuer", "--issuer-credentials", str(store), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    bundle = parse_bundle(FileBundleStore(store).load().items, open_key=kms.open_key)
    assert bundle.issuer != before and bundle.root_key_uri == f"kms://{arn}"
    bundle.issuer.verify_directly_issued_by(bundle.trust_anchors[0])

    # A root rotation to a new KMS key; the same key is refused.
    r = run("rotate", "root", "--issuer-credentials", str(store), "--root-key", f"kms://{arn}", env=aws_env)
    assert r.returncode == 2 and "is the active root's KMS key" in r.stderr, r.stdout + r.stderr
    new_id, new_arn = kms_key(moto_endpoint, "ECC_NIST_P384")
    r = run(
        "rotate",
        "root",
        "--issuer-credentials",
        str(store),
        "--root-key",
        f"kms://{new_arn}",
        "--root-propagation-window",
        "0s",
        env=aws_env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    items = FileBundleStore(store).load().items
    state = parse_state(items, parse_bundle(items), open_key=kms.open_key)
    assert state.prepared_root is not None and state.prepared_root.root_key.key_uri == f"kms://{new_arn}"
    r = run("inspect", "--issuer-credentials", str(store), env=aws_env)
    assert f"prepared root's key in KMS: kms://{new_arn}" in r.stdout, r.stdout
    r = run(
        "rotate",
        "advance",
        "--issuer-credentials",
        str(store),
        "--root-propagation-window",
        "0s",
        env=aws_env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    bundle = parse_bundle(FileBundleStore(store).load().items, open_key=kms.open_key)
    assert bundle.root_key_uri == f"kms://{new_arn}" and len(bundle.trust_anchors) == 2
    new_root = bundle.anchor_for(bundle.issuer)
    assert new_root is not None
    assert public_key_der(new_root.public_key()) == public_key_der(moto_private_key(new_id).public_key())

    from ca_core.certs import sign_workload

    from support.pki import make_key

    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, make_key().public_key(), "spiffe://public/ns/p/a", datetime.now(UTC)
    )
    strict_verify(tmp_path, leaf, bundle.issuer_chain, bundle.anchors_pem)
    for kid in (key_id, new_id):
        assert_no_key_in(store, moto_private_key(kid))

    # bundle export never pretends to export a KMS key.
    out = tmp_path / "backup"
    r = run("bundle", "export", "--issuer-credentials", str(store), "--out", str(out), env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"not exported: the key(s) held by KMS (kms://{new_arn})" in r.stdout
    assert (out / ROOT_KEY_REF).read_bytes() == f"kms://{new_arn}\n".encode()
    assert not (out / ROOT_KEY).exists()

    # bundle regenerate with a third key: a new KMS root, the old bundle (its reference) backed up
    third_id, third_arn = kms_key(moto_endpoint, "RSA_2048")
    backup = tmp_path / "before-regenerate"
    r = run(
        "bundle",
        "regenerate",
        "--issuer-credentials",
        str(store),
        "--root-key",
        f"kms://{third_id}",
        "--backup-to",
        f"file://{backup}",
        env=aws_env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    bundle = parse_bundle(FileBundleStore(store).load().items, open_key=kms.open_key)
    assert bundle.root_key_uri == f"kms://{third_arn}" and len(bundle.trust_anchors) == 1
    assert (backup / ROOT_KEY_REF).read_bytes() == f"kms://{new_arn}\n".encode()
    assert_no_key_in(store, moto_private_key(third_id))


def test_kms_key_options_on_an_existing_local_bundle_are_warned_about_and_change_nothing(
    moto_endpoint, aws_env, tmp_path
):
    _, root_arn = kms_key(moto_endpoint, "ECC_NIST_P256")
    _, issuer_arn = kms_key(moto_endpoint, "ECC_NIST_P256")
    creds = tmp_path / "creds"
    r = run("bundle", "init", "--issuer-credentials", str(creds), env=aws_env)  # local keys
    assert r.returncode == 0, r.stdout + r.stderr
    before = FileBundleStore(creds).load().items
    ca = serve(
        tmp_path,
        "--mode",
        "standalone",
        "--root-key",
        f"kms://{root_arn}",
        "--issuer-key",
        f"kms://{issuer_arn}",
        env=aws_env,
    )
    try:  # it serves the bundle as it is, its local issuer signing
        client.verify_response(ca.sign("orders", "prod"), ca.anchors)
    finally:
        log = ca.start_log + ca.stop()
    assert f"--root-key kms://{root_arn} is not the bundle's root key (a local key)" in log
    assert f"`sentryca rotate root --root-key kms://{root_arn}`" in log
    assert f"--issuer-key kms://{issuer_arn} is not the bundle's issuer key (a local key)" in log
    assert f"`sentryca rotate issuer --issuer-key kms://{issuer_arn}`" in log
    assert FileBundleStore(creds).load().items == before  # nothing moved


def test_a_disabled_or_missing_kms_key_refuses_bundle_init_and_writes_nothing(
    moto_endpoint, aws_env, tmp_path
):
    key_id, _ = kms_key(moto_endpoint, "ECC_NIST_P256")
    # A bundle made while the key was enabled still loads once it is disabled: its issuer signs
    # leaves (only issuer signing needs the root key); the CA says why rotations will fail.
    running = tmp_path / "running"
    creds = str(running / "creds")
    r = run("bundle", "init", "--issuer-credentials", creds, "--root-key", f"kms://{key_id}", env=aws_env)
    assert r.returncode == 0, r.stdout + r.stderr
    aws_client("kms", moto_endpoint).disable_key(KeyId=key_id)
    ca = serve(running, "--mode", "standalone", env=aws_env)
    try:
        client.verify_response(ca.sign("orders", "prod"), ca.anchors)
    finally:
        log = ca.stop()
    assert "is Disabled: nothing can be signed with it until it is enabled" in ca.start_log + log
    store = tmp_path / "store"
    r = run(
        "bundle", "init", "--issuer-credentials", str(store), "--root-key", f"kms://{key_id}", env=aws_env
    )
    assert r.returncode != 0
    assert "is Disabled: nothing can be signed with it" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert not store.exists() or not any(store.iterdir())
    r = run(
        "bundle", "init", "--issuer-credentials", str(store), "--root-key", "kms://alias/none", env=aws_env
    )
    assert r.returncode != 0 and "NotFoundException" in r.stderr, r.stdout + r.stderr
    assert not store.exists() or not any(store.iterdir())
    enc = aws_client("kms", moto_endpoint).create_key(KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    with pytest.raises(Unavailable, match="cannot sign certificates") as e:
        kms.open_key(f"kms://{enc}")
    assert e.value.reason == "kms_key_invalid"


def test_kms_sign_errors_map_to_operator_messages():
    from botocore.exceptions import ClientError

    def refused(code: str, status: int) -> ClientError:
        error = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(error, "Sign")  # type: ignore[arg-type]

    cases = {
        ("DisabledException", 400): ("kms_key_disabled", "Enable it (aws kms enable-key"),
        ("KMSInvalidStateException", 400): ("kms_key_disabled", "pending deletion"),
        ("ThrottlingException", 400): ("kms_unreachable", "after the SDK's retries"),
        ("KMSInternalException", 500): ("kms_unreachable", "after the SDK's retries"),
        ("AccessDeniedException", 400): ("kms_denied", "access denied"),
        ("NotFoundException", 400): ("kms_key_invalid", "NotFoundException"),
    }
    for (code, status), (reason, words) in cases.items():
        e = kms.kms_error(refused(code, status), "KMS key arn:k", "sign")
        assert e.reason == reason and words in str(e), (code, str(e))
        assert "KMS key arn:k: cannot sign" in str(e)


def test_kms_unreachable_is_unavailable_with_the_key_named(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Unavailable, match="KMS key alias/unreachable: cannot describe the key") as e:
        kms.open_key("kms://alias/unreachable")
    assert e.value.reason == "kms_unreachable"
