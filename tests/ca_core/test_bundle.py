"""Trust bundle parse/verify/serialise (design §5), including the key encodings older Sentry wrote."""

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from ca_core.bundle import ANCHORS, ISSUER_CHAIN, ISSUER_KEY, ROOT_KEY, parse_bundle, parse_public_bundle
from ca_core.certs import generate_issuer
from ca_core.errors import BundleError
from ca_core.keys import KeyAlgorithm
from ca_core.spiffe_id import SpiffeId

from support.pki import NOW, make_bundle, make_key


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm), ids=lambda a: a.value)
def test_round_trip(algorithm):
    bundle = make_bundle(algorithm=algorithm)
    items = bundle.to_items()
    assert set(items) == {ANCHORS, ISSUER_CHAIN, ISSUER_KEY, ROOT_KEY}
    assert items[ISSUER_KEY].startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    again = parse_bundle(items)
    assert again.trust_anchors == bundle.trust_anchors
    assert again.issuer_chain == bundle.issuer_chain
    assert again.to_items() == items


def _traditional(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_sec1_ec_private_key_is_read():
    bundle = make_bundle()
    items = bundle.to_items()
    items[ISSUER_KEY] = _traditional(bundle.issuer_key)
    assert items[ISSUER_KEY].startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert parse_bundle(items).issuer == bundle.issuer


def test_pkcs1_rsa_issuer_key_is_read():
    """An imported RSA issuer whose key is PKCS#1 ``RSA PRIVATE KEY`` (older Sentry / openssl genrsa)."""
    bundle = make_bundle()
    rsa_key = make_key("rsa2048")
    issuer = generate_issuer(
        bundle.trust_anchors[0],
        bundle.root_key,
        rsa_key,
        SpiffeId("localhost", "default", "dapr-sentry"),
        NOW,
    )
    items = {
        ANCHORS: bundle.anchors_pem,
        ISSUER_CHAIN: issuer.public_bytes(serialization.Encoding.PEM),
        ISSUER_KEY: _traditional(rsa_key),
    }
    assert items[ISSUER_KEY].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    parsed = parse_bundle(items)
    assert parsed.issuer == issuer and parsed.root_key is None


def test_root_appended_to_issuer_file_is_not_served_as_chain():
    bundle = make_bundle()
    items = bundle.to_items()
    items[ISSUER_CHAIN] = items[ISSUER_CHAIN] + items[ANCHORS]
    assert parse_bundle(items).issuer_chain == bundle.issuer_chain


def test_public_part_needs_no_key():
    bundle = make_bundle()
    public = parse_public_bundle({ANCHORS: bundle.anchors_pem, ISSUER_CHAIN: bundle.issuer_chain_pem})
    assert public.issuer == bundle.issuer


def _broken(mutate):
    items = make_bundle().to_items()
    mutate(items)
    with pytest.raises(BundleError) as e:
        parse_bundle(items, {k: f"/creds/{k}" for k in items} | {ISSUER_KEY: "/creds/issuer.key"})
    return str(e.value)


def test_missing_issuer_key_is_named():
    msg = _broken(lambda i: i.pop(ISSUER_KEY))
    assert "missing /creds/issuer.key" in msg


def test_mismatched_issuer_key_is_named():
    msg = _broken(lambda i: i.__setitem__(ISSUER_KEY, make_bundle().to_items()[ISSUER_KEY]))
    assert "/creds/issuer.key" in msg and "does not match" in msg


def test_garbage_anchors_are_named():
    msg = _broken(lambda i: i.__setitem__(ANCHORS, b"garbage\n"))
    assert "/creds/ca.crt" in msg and "not a PEM certificate" in msg


def test_empty_anchors_are_named():
    msg = _broken(lambda i: i.__setitem__(ANCHORS, b""))
    assert "/creds/ca.crt" in msg and "empty" in msg


def test_garbage_key_is_named():
    msg = _broken(
        lambda i: i.__setitem__(ISSUER_KEY, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    )
    assert "/creds/issuer.key" in msg


def test_issuer_from_another_ca_is_refused():
    other = make_bundle()
    msg = _broken(
        lambda i: (
            i.__setitem__(ISSUER_CHAIN, other.issuer_chain_pem),
            i.__setitem__(ISSUER_KEY, other.to_items()[ISSUER_KEY]),
        )
    )
    assert "does not verify to any trust anchor" in msg


def test_root_key_of_another_root_is_refused():
    msg = _broken(lambda i: i.__setitem__(ROOT_KEY, make_bundle().to_items()[ROOT_KEY]))
    assert "/creds/root.key" in msg and "does not match any trust anchor" in msg


def test_issuer_that_is_not_a_ca_is_refused():
    bundle = make_bundle()
    from ca_core.certs import sign_workload

    leaf_key = make_key()
    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, leaf_key.public_key(), SpiffeId("localhost", "a", "b"), NOW
    )
    items = bundle.to_items()
    items[ISSUER_CHAIN] = leaf.public_bytes(serialization.Encoding.PEM) + bundle.issuer_chain_pem
    items[ISSUER_KEY] = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BundleError, match="not a CA"):
        parse_bundle(items)


def test_chain_out_of_order_is_refused():
    bundle = make_bundle()
    # a second-level issuer under the first, listed in the wrong order
    sub_key = make_key()
    sub = generate_issuer(
        bundle.issuer, bundle.issuer_key, sub_key, SpiffeId("localhost", "default", "dapr-sentry"), NOW
    )
    items = bundle.to_items()
    items[ISSUER_CHAIN] = bundle.issuer_chain_pem + sub.public_bytes(serialization.Encoding.PEM)
    items[ISSUER_KEY] = sub_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BundleError):
        parse_bundle(items)


def test_non_self_signed_anchor_is_refused():
    bundle = make_bundle()
    items = bundle.to_items()
    items[ANCHORS] = bundle.issuer_chain_pem
    with pytest.raises(BundleError, match="self-signed"):
        parse_bundle(items)


def test_expired_bundle_is_structurally_fine():
    """Validity is not structural: an expired issuer loads (the CA then refuses to sign)."""
    old = make_bundle(NOW - timedelta(days=800))
    assert parse_bundle(old.to_items()).issuer == old.issuer
