"""Certificate profiles of design §4, checked field by field for every CA key algorithm."""

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_core.certs import check_issuer_valid, new_serial, sign_workload
from ca_core.errors import FailedPrecondition
from ca_core.keys import KeyAlgorithm
from ca_core.spiffe_id import SpiffeId

from support.pki import NOW, bundle_with_issuer_window, make_bundle, make_key

ALGORITHMS = list(KeyAlgorithm)
SID = SpiffeId("example.org", "prod", "orders")


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_serials_are_positive_128_bit_and_distinct():
    serials = {new_serial() for _ in range(2000)}
    assert len(serials) == 2000
    assert all(0 < s < 2**128 for s in serials)
    assert max(serials).bit_length() > 120  # really random across 128 bits


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_root_profile(algorithm):
    bundle = make_bundle(algorithm=algorithm)
    root = bundle.trust_anchors[0]
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "localhost"
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert root.not_valid_after_utc - NOW == timedelta(days=365)
    assert NOW - root.not_valid_before_utc == timedelta(minutes=15)
    root.verify_directly_issued_by(root)
    expected = {
        KeyAlgorithm.ECDSA_P256: (ec.EllipticCurvePublicKey, 256),
        KeyAlgorithm.ECDSA_P384: (ec.EllipticCurvePublicKey, 384),
        KeyAlgorithm.ED25519: (ed25519.Ed25519PublicKey, None),
    }[algorithm]
    assert isinstance(root.public_key(), expected[0])
    if expected[1]:
        assert root.public_key().curve.key_size == expected[1]


def test_rotated_roots_never_share_a_subject():
    subjects = {make_bundle().trust_anchors[0].subject for _ in range(5)}
    assert len(subjects) == 5


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
def test_issuer_profile(algorithm):
    bundle = make_bundle(algorithm=algorithm)
    root, issuer = bundle.trust_anchors[0], bundle.issuer
    issuer.verify_directly_issued_by(root)
    assert issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "spiffe://localhost/ns/default/dapr-sentry"
    )
    assert issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    bc = ext(issuer, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ext(issuer, x509.KeyUsage).value.key_cert_sign
    aki = ext(issuer, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ext(root, x509.SubjectKeyIdentifier).value.digest


def test_issuer_never_outlives_root():
    bundle = make_bundle(root_lifetime=timedelta(days=30), issuer_lifetime=timedelta(days=365))
    assert bundle.issuer.not_valid_after_utc == bundle.trust_anchors[0].not_valid_after_utc


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.value)
@pytest.mark.parametrize("leaf_kind", ["p256", "p384", "ed25519", "rsa2048"])
def test_leaf_profile(algorithm, leaf_kind):
    bundle = make_bundle(algorithm=algorithm)
    key = make_key(leaf_kind)
    leaf = sign_workload(bundle.issuer, bundle.issuer_key, key.public_key(), SID, NOW)
    leaf.verify_directly_issued_by(bundle.issuer)
    assert len(leaf.subject) == 0
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(SID)]
    assert len(list(san.value)) == 1
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        key.public_key()
    )
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(bundle.issuer, x509.SubjectKeyIdentifier).value.digest
    )
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=15)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=24)


def test_leaf_ttl_and_skew_are_honoured():
    bundle = make_bundle()
    leaf = sign_workload(
        bundle.issuer,
        bundle.issuer_key,
        make_key().public_key(),
        SID,
        NOW,
        ttl=timedelta(hours=1),
        clock_skew=timedelta(minutes=2),
    )
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=1)
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=2)


def test_leaf_not_after_is_capped_at_the_issuer():
    bundle = bundle_with_issuer_window(NOW - timedelta(days=10), NOW + timedelta(hours=2), NOW)
    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, make_key().public_key(), SID, NOW, ttl=timedelta(hours=24)
    )
    assert leaf.not_valid_after_utc == bundle.issuer.not_valid_after_utc == NOW + timedelta(hours=2)


def test_leaf_not_before_never_precedes_the_issuer():
    bundle = bundle_with_issuer_window(NOW - timedelta(minutes=1), NOW + timedelta(days=10), NOW)
    leaf = sign_workload(bundle.issuer, bundle.issuer_key, make_key().public_key(), SID, NOW)
    assert leaf.not_valid_before_utc == bundle.issuer.not_valid_before_utc


def test_control_plane_dns_sans_are_added():
    bundle = make_bundle()
    leaf = sign_workload(
        bundle.issuer, bundle.issuer_key, make_key().public_key(), SID, NOW, dns_names=("a.ns.svc",)
    )
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.ns.svc"]


@pytest.mark.parametrize(
    "window, reason",
    [
        ((NOW - timedelta(days=20), NOW - timedelta(seconds=1)), "issuer_expired"),
        ((NOW + timedelta(minutes=1), NOW + timedelta(days=20)), "issuer_not_yet_valid"),
    ],
)
def test_issuer_outside_its_validity_refuses_to_sign(window, reason):
    bundle = bundle_with_issuer_window(*window, NOW)
    with pytest.raises(FailedPrecondition) as e:
        sign_workload(bundle.issuer, bundle.issuer_key, make_key().public_key(), SID, NOW)
    assert e.value.reason == reason
    with pytest.raises(FailedPrecondition):
        check_issuer_valid(bundle.issuer, NOW)


def test_prepared_extensions_encode_exactly_like_the_typed_ones():
    """WorkloadSigner embeds pre-encoded extension bytes; they must equal cryptography's typed encoding."""
    bundle = make_bundle()
    key = make_key()
    leaf = sign_workload(bundle.issuer, bundle.issuer_key, key.public_key(), SID, NOW, dns_names=("a.b.svc",))
    expected = {
        x509.BasicConstraints(ca=False, path_length=None),
        x509.KeyUsage(True, False, False, False, False, False, False, False, False),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ext(bundle.issuer, x509.SubjectKeyIdentifier).value
        ),
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(SID)), x509.DNSName("a.b.svc")]),
    }
    assert not any(isinstance(e.value, x509.UnrecognizedExtension) for e in leaf.extensions)
    assert {e.value.public_bytes() for e in leaf.extensions} == {e.public_bytes() for e in expected}
