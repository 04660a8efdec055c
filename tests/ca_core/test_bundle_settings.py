"""ca_core.bundle_settings (design §5.15): what a bundle says about its trust domain, issuer ID and
key algorithm, and when an explicit setting contradicting it is refused. Real certificates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ca_core.bundle import TrustBundle, generate_bundle
from ca_core.bundle_settings import (
    FROM_ISSUER,
    FROM_ROOT,
    UNKNOWN,
    Change,
    Given,
    settings_of,
    settings_of_items,
    settle,
)
from ca_core.config import explicit_source, load_config
from ca_core.errors import ConfigError
from ca_core.keys import KeyAlgorithm, key_algorithm_of, signature_hash
from ca_core.spiffe_id import SpiffeId

from support.pki import NOW, make_bundle, make_key

WHERE = "s3://bucket/bundle.json"
DEFAULTS = load_config({}, {})  # trust domain localhost, ecdsa-p256, namespace default


def ca_cert(subject: x509.Name, key, issuer_name: x509.Name, signer, *, uri: str | None = None):
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=300))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(signer, signature_hash(signer))


def operator_bundle(root_o: str | None, issuer_o: str | None, *, uri=None, root_kind="p256") -> TrustBundle:
    """An operator's PKI: a root and an issuer with the given subjects O= (None: no O=)."""

    def name(o: str | None, cn: str) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)] if o else []
        return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    root_key, issuer_key = make_key(root_kind), make_key()
    root = ca_cert(name(root_o, "root"), root_key, name(root_o, "root"), root_key)
    issuer = ca_cert(name(issuer_o, "issuer"), issuer_key, root.subject, root_key, uri=uri)
    return TrustBundle((root,), (issuer,), issuer_key, None)


# --- what a bundle says -------------------------------------------------------------------------


def test_a_generated_bundle_names_its_trust_domain_issuer_id_and_algorithm():
    bundle = generate_bundle(
        "example.org", SpiffeId("example.org", "prod", "dapr-sentry"), NOW, algorithm=KeyAlgorithm.ECDSA_P384
    )
    s = settings_of(bundle)
    assert (s.trust_domain, s.trust_domain_from) == ("example.org", FROM_ROOT)
    assert s.ca_identity == SpiffeId("example.org", "prod", "dapr-sentry")
    assert s.root_algorithm is s.issuer_algorithm is KeyAlgorithm.ECDSA_P384
    assert s.prepared_algorithm is None


def test_the_issuer_id_names_the_trust_domain_when_the_root_o_is_not_one():
    s = settings_of(operator_bundle("Example Corp", "spiffe://corp.example/ns/ops/dapr-sentry"))
    assert (s.trust_domain, s.trust_domain_from) == ("corp.example", FROM_ISSUER)
    assert s.ca_identity == SpiffeId("corp.example", "ops", "dapr-sentry")
    # a URI SAN is a SPIFFE ID too (Dapr's issuers carry one)
    s = settings_of(operator_bundle(None, "Ops", uri="spiffe://san.example/ns/x/dapr-sentry"))
    assert (s.trust_domain, s.ca_identity) == ("san.example", SpiffeId("san.example", "x", "dapr-sentry"))


def test_a_bundle_naming_nothing_and_a_key_sentryca_does_not_make():
    s = settings_of(operator_bundle(None, "Issuing CA", root_kind="rsa2048"))
    assert s.trust_domain is None and s.ca_identity is None
    assert s.root_algorithm is None and s.root_key == "RSA 2048"
    assert s.issuer_algorithm is KeyAlgorithm.ECDSA_P256
    settled = settle(s, DEFAULTS, Change.NEW_ROOT, verb="rotate root", where=WHERE)
    assert (settled.trust_domain, settled.algorithm) == ("localhost", KeyAlgorithm.ECDSA_P256)
    assert settled.ca_identity == SpiffeId("localhost", "default", "dapr-sentry")
    assert "the default: the bundle names none" in settled.summary
    assert "the root's RSA 2048 key is not one sentryca makes" in settled.summary


def test_damaged_items_still_say_what_their_one_root_says():
    good = make_bundle(trust_domain="example.org", algorithm=KeyAlgorithm.ED25519)
    items = good.to_items()
    del items["issuer.crt"]
    s = settings_of_items(items)
    assert (s.trust_domain, s.root_algorithm, s.ca_identity) == ("example.org", KeyAlgorithm.ED25519, None)
    assert settings_of_items({**items, "ca.crt": b"garbage"}) == UNKNOWN
    assert settings_of_items({}) == UNKNOWN
    two = make_bundle().anchors_pem + good.anchors_pem  # which one is active is unknown
    assert settings_of_items({**items, "ca.crt": two}) == UNKNOWN
    assert settings_of_items(good.to_items()) == settings_of(good)


# --- settle: keep the bundle's, refuse a contradiction -----------------------------------------


def test_without_explicit_settings_the_bundle_wins_over_the_defaults():
    bundle = make_bundle(trust_domain="example.org", algorithm=KeyAlgorithm.ED25519)
    for change in Change:
        s = settle(settings_of(bundle), DEFAULTS, change, verb="v", where=WHERE)
        assert (s.trust_domain, s.algorithm) == ("example.org", KeyAlgorithm.ED25519)
        assert s.ca_identity == SpiffeId("example.org", "default", "dapr-sentry")
    assert s.summary == (
        "trust domain example.org (the bundle's: the root's O=), issuer ID "
        "spiffe://example.org/ns/default/dapr-sentry (the bundle's), key algorithm ed25519 "
        "(the bundle's root key), root lifetime 8760h0m0s (the bundle's), issuer lifetime "
        "8760h0m0s (the bundle's)"
    )


def test_the_issuer_id_is_kept_with_its_namespace():
    bundle = generate_bundle("example.org", SpiffeId("example.org", "prod", "dapr-sentry"), NOW)
    s = settle(settings_of(bundle), DEFAULTS, Change.ISSUER, verb="rotate issuer", where=WHERE)
    assert s.ca_identity == SpiffeId("example.org", "prod", "dapr-sentry")


@pytest.mark.parametrize("change", list(Change))
@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("--trust-domain", "--trust-domain example.com"),
        ("SENTRY_TRUST_DOMAIN", "SENTRY_TRUST_DOMAIN=example.com"),
    ],
)
def test_a_contradicting_trust_domain_is_refused_whatever_the_verb(change, source, said):
    settings = settings_of(make_bundle(trust_domain="example.org"))
    with pytest.raises(ConfigError) as e:
        settle(
            settings,
            DEFAULTS,
            change,
            verb="rotate root",
            where=WHERE,
            trust_domain=Given("example.com", source),
        )
    assert str(e.value) == (
        f"{said} contradicts the trust bundle in {WHERE}: its trust domain is example.org (the "
        "root's O=). `rotate root` cannot move a CA to another trust domain; nothing was changed. Run "
        "it with the bundle's trust domain (example.org) or with none; a CA in another trust domain is "
        "a new CA, in a new store (`sentryca bundle init`)"
    )
    agreeing = Given("example.org", source)
    assert settle(settings, DEFAULTS, change, verb="v", where=WHERE, trust_domain=agreeing).trust_domain == (
        "example.org"
    )


def test_another_key_algorithm_only_for_a_new_root():
    settings = settings_of(make_bundle())  # ecdsa-p256
    p384 = Given(KeyAlgorithm.ECDSA_P384, "SENTRY_CA_KEY_ALGORITHM")
    s = settle(settings, DEFAULTS, Change.NEW_ROOT, verb="rotate root", where=WHERE, algorithm=p384)
    assert s.algorithm is KeyAlgorithm.ECDSA_P384
    assert "key algorithm ecdsa-p384 (SENTRY_CA_KEY_ALGORITHM; the current root's is ecdsa-p256)" in s.summary
    with pytest.raises(ConfigError) as e:
        settle(settings, DEFAULTS, Change.ISSUER, verb="rotate issuer", where=WHERE, algorithm=p384)
    assert str(e.value) == (
        f"SENTRY_CA_KEY_ALGORITHM=ecdsa-p384 contradicts the trust bundle in {WHERE}: its issuer's key "
        "is ecdsa-p256. `rotate issuer` keeps the bundle's key algorithm; nothing was changed. Run it "
        "with the bundle's key algorithm (ecdsa-p256) or with none; a new key algorithm comes with a "
        "new root (`sentryca rotate root --ca-key-algorithm ecdsa-p384`)"
    )
    with pytest.raises(ConfigError, match=r"its root's key is ecdsa-p256\. `rotate advance` keeps"):
        settle(settings, DEFAULTS, Change.STEPS, verb="rotate advance", where=WHERE, algorithm=p384)


def test_the_algorithm_of_a_prepared_root_is_the_bundles_too():
    bundle = make_bundle()
    prepared = make_bundle(algorithm=KeyAlgorithm.ECDSA_P384).trust_anchors[0]
    settings = settings_of(bundle, prepared)
    assert settings.prepared_algorithm is KeyAlgorithm.ECDSA_P384
    p384 = Given(KeyAlgorithm.ECDSA_P384, "--ca-key-algorithm")
    s = settle(settings, DEFAULTS, Change.STEPS, verb="rotate advance", where=WHERE, algorithm=p384)
    assert s.algorithm is KeyAlgorithm.ECDSA_P384
    ed = Given(KeyAlgorithm.ED25519, "--ca-key-algorithm")
    with pytest.raises(ConfigError, match=r"^--ca-key-algorithm ed25519 contradicts"):
        settle(settings, DEFAULTS, Change.STEPS, verb="rotate advance", where=WHERE, algorithm=ed)


# --- the pieces -----------------------------------------------------------------------------------


def test_explicit_source_follows_the_precedence_and_ignores_empty_variables():
    env = {"SENTRY_TRUST_DOMAIN": "env.example", "SENTRY_CA_KEY_ALGORITHM": ""}
    assert explicit_source({"trust_domain": "flag.example"}, env, "trust_domain") == "--trust-domain"
    assert explicit_source({"trust_domain": None}, env, "trust_domain") == "SENTRY_TRUST_DOMAIN"
    assert explicit_source({}, env, "ca_key_algorithm") is None
    with pytest.raises(KeyError):
        explicit_source({}, env, "namespace")  # no option sets it


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("p256", KeyAlgorithm.ECDSA_P256),
        ("p384", KeyAlgorithm.ECDSA_P384),
        ("ed25519", KeyAlgorithm.ED25519),
        ("p521", None),
        ("rsa2048", None),
    ],
)
def test_key_algorithm_of_private_and_public_keys(kind, algorithm):
    key = make_key(kind)
    assert key_algorithm_of(key) is algorithm and key_algorithm_of(key.public_key()) is algorithm
