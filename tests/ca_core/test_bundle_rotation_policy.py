"""A running CA's own rotation steps keep the bundle's trust domain, issuer ID and key algorithm
(ca_core.policy.bundle_rotation_policy, design §5.15), whatever the configuration of the replica
that takes the step."""

from __future__ import annotations

from datetime import timedelta

from ca_core.bundle_settings import settings_of
from ca_core.keys import KeyAlgorithm
from ca_core.policy import bundle_rotation_policy, rotation_policy
from ca_core.rotation import rules
from ca_core.rotation.state import EMPTY

from support.ca import ca_config
from support.pki import NOW, make_bundle


def test_an_automatic_root_rotation_keeps_the_bundles_trust_domain_and_algorithm(tmp_path):
    # an example.org bundle (P-384) whose root is close to its end; the replica taking the step
    # runs with the defaults (trust domain localhost, P-256)
    bundle = make_bundle(
        NOW, trust_domain="example.org", algorithm=KeyAlgorithm.ECDSA_P384, root_lifetime=timedelta(days=20)
    )
    cfg = ca_config(tmp_path / "credentials", auto_rotate="true")
    assert rotation_policy(cfg).trust_domain == "localhost"  # what the configuration alone says
    policy = bundle_rotation_policy(cfg, settings_of(bundle))
    assert policy.trust_domain == "example.org"
    assert str(policy.ca_identity) == "spiffe://example.org/ns/default/dapr-sentry"
    assert policy.algorithm is KeyAlgorithm.ECDSA_P384
    result = rules.advance(bundle, EMPTY, NOW + timedelta(days=15), policy)
    assert result is not None and result.state.prepared_root is not None
    prepared = result.state.prepared_root.root
    assert "O=example.org" in prepared.subject.rfc4514_string()
    assert settings_of(result.bundle, prepared).prepared_algorithm is KeyAlgorithm.ECDSA_P384


def test_the_configuration_fills_in_what_the_bundle_does_not_say(tmp_path):
    cfg = ca_config(tmp_path / "credentials", trust_domain="cluster.local")
    from ca_core.bundle_settings import UNKNOWN

    policy = bundle_rotation_policy(cfg, UNKNOWN)
    assert policy == rotation_policy(cfg)
