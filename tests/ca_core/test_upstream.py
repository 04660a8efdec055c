"""ca_core.upstream and rule 5 with an upstream-signed issuer (design §5.16), pure: the request,
the checks of what an upstream answers, and ``rules.advance(..., upstream_issuer=...)`` preparing
and activating an issuer with no root key held."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from ca_core.bundle_settings import settings_of
from ca_core.config import load_config
from ca_core.errors import BundleError, ConfigError
from ca_core.keys import KeyAlgorithm
from ca_core.policy import bundle_rotation_policy
from ca_core.rotation import rules
from ca_core.rotation.issuer_rule import issuer_prepare_due
from ca_core.rotation.state import EMPTY, RotationPolicy
from ca_core.spiffe_id import SpiffeId
from ca_core.upstream import accept_issued, issuer_request, upstream_bundle

from support.pki import make_key, verifies

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ID = SpiffeId("example.org", "default", "dapr-sentry")
SKEW = timedelta(minutes=15)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject,
    public_key,
    issuer_name,
    signer,
    *,
    ca=True,
    path_length=0,
    start=NOW - SKEW,
    end=NOW + timedelta(hours=24),
):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return b.sign(signer, hashes.SHA256())


class Upstream:
    """A root and a subordinate (the Private CA) that sign as the pathlen-0 template says."""

    def __init__(self, root_kind: str = "p256") -> None:
        self.root_key, self.ca_key = make_key(root_kind), make_key()
        self.root = _cert(
            _name("Root"),
            self.root_key.public_key(),
            _name("Root"),
            self.root_key,
            path_length=None,
            start=NOW - timedelta(days=1),
            end=NOW + timedelta(days=365),
        )
        self.ca = _cert(
            _name("PCA"),
            self.ca_key.public_key(),
            _name("Root"),
            self.root_key,
            path_length=None,
            start=NOW - timedelta(days=1),
            end=NOW + timedelta(days=300),
        )

    def sign(self, request, **kw) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(request.csr_pem)
        kw.setdefault("start", request.not_before)
        kw.setdefault("end", request.not_after)
        return _cert(csr.subject, csr.public_key(), self.ca.subject, self.ca_key, **kw)


def request(now=NOW, lifetime=timedelta(hours=24)):
    return issuer_request(ID, KeyAlgorithm.ECDSA_P256, now, lifetime=lifetime, backdate=SKEW)


def test_the_request_names_the_ca_and_asks_for_the_lifetime():
    req = request()
    csr = x509.load_pem_x509_csr(req.csr_pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == str(ID)
    assert (req.not_before, req.not_after) == (NOW - SKEW, NOW + timedelta(hours=24))


def test_ed25519_is_refused_for_an_upstream():
    with pytest.raises(ConfigError, match="ecdsa-p256 or ecdsa-p384"):
        issuer_request(ID, KeyAlgorithm.ED25519, NOW, lifetime=timedelta(hours=24), backdate=SKEW)
    with pytest.raises(
        ConfigError, match="--ca-key-algorithm ed25519 cannot be used with --upstream-authority"
    ):
        load_config(
            {
                "upstream_authority": "acm-pca://arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/x",
                "ca_key_algorithm": "ed25519",
            },
            {},
        )


def test_the_option_takes_an_acm_pca_arn():
    arn = "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/0f1e"
    assert (
        load_config({"upstream_authority": f"acm-pca://{arn}"}, {}).upstream_authority == f"acm-pca://{arn}"
    )
    with pytest.raises(ConfigError, match="acm-pca://arn:aws:acm-pca:REGION"):
        load_config({"upstream_authority": arn}, {})


def test_an_answer_is_split_into_issuer_chain_and_root_in_any_order():
    up, req = Upstream(), request()
    cert = up.sign(req)
    for chain in ((up.ca, up.root), (up.root, up.ca)):
        assert accept_issued(req, cert, chain, NOW) == ((cert, up.ca), (up.root,))
    bundle = upstream_bundle(req, cert, (up.ca, up.root), NOW)
    assert bundle.trust_anchors == (up.root,) and bundle.root_key is None


@pytest.mark.parametrize(
    ("problem", "match"),
    [
        ("other key", "does not hold the key"),
        ("pathlen 1", "path length 0"),
        ("not a CA", "path length 0"),
        ("expired", "not valid now"),
        ("no root", "does not end at a self-signed root"),
    ],
)
def test_answers_that_are_not_the_issuer_asked_for_are_refused(problem, match):
    up, req = Upstream(), request()
    chain = (up.ca, up.root)
    if problem == "other key":
        cert = up.sign(request())
    elif problem == "pathlen 1":
        cert = up.sign(req, path_length=1)
    elif problem == "not a CA":
        cert = up.sign(req, ca=False)
    elif problem == "expired":
        cert = up.sign(req, start=NOW - timedelta(days=2), end=NOW - timedelta(days=1))
    else:
        cert, chain = up.sign(req), (up.ca,)
    with pytest.raises(BundleError, match=match):
        accept_issued(req, cert, chain, NOW)


def test_rule_5_prepares_the_upstream_issuer_and_activates_it_with_no_root_key():
    up, first = Upstream(), request()
    bundle = upstream_bundle(first, up.sign(first), (up.ca, up.root), NOW)
    policy = RotationPolicy(
        trust_domain="example.org",
        ca_identity=ID,
        auto=True,
        clock_skew=SKEW,
        issuer_lifetime=timedelta(hours=24),
        upstream="acm-pca://test",
    )
    early = NOW + timedelta(hours=6)
    assert not issuer_prepare_due(bundle, EMPTY, early, policy)
    assert rules.advance(bundle, EMPTY, early, policy) is None
    due = NOW + timedelta(hours=13)
    assert issuer_prepare_due(bundle, EMPTY, due, policy)
    assert rules.advance(bundle, EMPTY, due, policy) is None  # nothing to prepare it with
    assert rules.advance(bundle, EMPTY, due, replace(policy, upstream=None)) is None
    second = request(due)
    cert = up.sign(second)
    rotation = rules.advance(bundle, EMPTY, due, policy, upstream_issuer=((cert, up.ca), second.key))
    assert rotation is not None and [(s.kind, s.action) for s in rotation.steps] == [("issuer", "prepare")]
    assert rotation.steps[0].fields["signed_by"] == "acm-pca://test"
    assert rotation.state.prepared_issuer.issuer_chain == (cert, up.ca)
    later = NOW + timedelta(hours=21)
    active = rules.advance(rotation.bundle, rotation.state, later, policy)
    assert active is not None and active.bundle.issuer == cert and active.bundle.root_key is None
    assert active.bundle.issuer_chain == (cert, up.ca) and active.bundle.trust_anchors == (up.root,)
    # a leaf under the new issuer verifies to the upstream's root
    leaf_key = make_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(later - SKEW)
        .not_valid_after(later + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/a")]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key()), critical=False)
        .sign(second.key, hashes.SHA256())
    )
    assert verifies(leaf, [cert, up.ca], active.bundle.anchors_pem, later)


def test_an_upstream_issuer_that_ends_sooner_or_under_another_root_is_not_prepared():
    up, first = Upstream(), request()
    bundle = upstream_bundle(first, up.sign(first), (up.ca, up.root), NOW)
    policy = RotationPolicy(ca_identity=ID, auto=True, issuer_lifetime=timedelta(hours=24), upstream="u")
    due = NOW + timedelta(hours=13)
    short = request(due)
    sooner = up.sign(short, end=NOW + timedelta(hours=20))
    assert rules.advance(bundle, EMPTY, due, policy, upstream_issuer=((sooner, up.ca), short.key)) is None
    other = Upstream()
    elsewhere = other.sign(short)
    assert (
        rules.advance(bundle, EMPTY, due, policy, upstream_issuer=((elsewhere, other.ca), short.key)) is None
    )


def test_with_an_upstream_new_issuers_keep_the_issuer_s_key_algorithm_not_the_root_s():
    up, first = Upstream("p384"), request()
    bundle = upstream_bundle(first, up.sign(first), (up.ca, up.root), NOW)
    arn = "acm-pca://arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/x"
    with_upstream = load_config({"upstream_authority": arn}, {})
    assert bundle_rotation_policy(with_upstream, settings_of(bundle)).algorithm == KeyAlgorithm.ECDSA_P256
    assert (
        bundle_rotation_policy(load_config({}, {}), settings_of(bundle)).algorithm == KeyAlgorithm.ECDSA_P384
    )
    assert bundle_rotation_policy(with_upstream, settings_of(bundle)).upstream == arn


def test_a_kms_root_key_and_an_upstream_authority_exclude_each_other():
    from ca_core.config import load_config
    from ca_core.errors import ConfigError

    arn = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555"
    with pytest.raises(ConfigError, match=r"--root-key and --upstream-authority exclude each other"):
        load_config({"upstream_authority": f"acm-pca://{arn}", "root_key": "kms://alias/root"}, {})
