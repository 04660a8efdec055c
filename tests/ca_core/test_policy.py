"""The bootstrap rule (design §5.2): when an empty store may get a newly generated CA; the cluster
domain of the scheduler's DNS SANs (design §3.4)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ca_core.bundle import generate_bundle
from ca_core.config import load_config
from ca_core.errors import ConfigError
from ca_core.policy import (
    cluster_domain,
    key_option_warnings,
    may_generate,
    needs_cluster_domain_lookup,
    signing_policy,
)
from ca_core.spiffe_id import SpiffeId

from support.remote_key import ElsewhereKey

STORE = "s3://bucket/sentry/bundle.json"
EVIDENCE = "s3://bucket/sentry/bundle.json held a trust bundle: it was deleted (a delete marker)"


@pytest.mark.parametrize(
    "policy, evidence, by_operator, force, allowed",
    [
        ("if-never-held", None, False, False, True),  # a first start
        ("if-never-held", EVIDENCE, False, False, False),  # a store that lost its bundle
        ("if-never-held", EVIDENCE, False, True, False),  # force is the operator's, not a start's
        ("never", None, False, False, False),
        ("never", EVIDENCE, False, False, False),
        ("never", None, True, False, True),  # `bundle init` is the explicit way, whatever the policy
        ("if-never-held", EVIDENCE, True, False, False),  # ... but over evidence
        ("never", EVIDENCE, True, True, True),  # only with --force
    ],
)
def test_the_decision_table(policy, evidence, by_operator, force, allowed):
    verdict = may_generate(policy, evidence, STORE, by_operator=by_operator, force=force)
    assert verdict.allowed is allowed
    if not allowed:
        assert STORE in verdict.message and "nothing was written" in verdict.message.lower()


def test_a_refused_start_names_the_store_the_evidence_and_both_ways_out():
    message = may_generate("if-never-held", EVIDENCE, STORE).message
    assert message.startswith(
        f"refusing to start: {STORE} holds no trust bundle, but it held one before: {EVIDENCE}"
    )
    assert f"`sentryca bundle import --trust-bundle-store {STORE} --from DIR`" in message
    assert f"`sentryca bundle init --trust-bundle-store {STORE} --force`" in message
    never = may_generate("never", None, STORE).message
    assert "--bootstrap-policy is never" in never and f"bundle init --trust-bundle-store {STORE}`" in never
    init = may_generate("if-never-held", EVIDENCE, STORE, by_operator=True).message
    assert EVIDENCE in init and "--force" in init and "--from DIR" in init
    forced = may_generate("if-never-held", EVIDENCE, STORE, by_operator=True, force=True)
    assert forced.allowed and EVIDENCE in forced.message  # logged as a warning


def test_the_option_takes_the_two_policies_only():
    assert load_config({}, {}).bootstrap_policy == "if-never-held"
    assert load_config({"bootstrap_policy": "NEVER"}, {}).bootstrap_policy == "never"
    with pytest.raises(ConfigError, match="SENTRY_BOOTSTRAP_POLICY: unknown bootstrap policy 'always'"):
        load_config({}, {"SENTRY_BOOTSTRAP_POLICY": "always"})


# --- the cluster domain (design §3.4) -----------------------------------------------------------


@pytest.mark.parametrize(
    "flags, env, derived, lookup, domain",
    [
        # the option wins, in either mode, and nothing is looked up
        (
            {"kube_cluster_domain": "corp.example", "mode": "kubernetes"},
            {},
            "k8s.example",
            False,
            "corp.example",
        ),
        ({"kube_cluster_domain": "corp.example"}, {}, None, False, "corp.example"),
        ({}, {"SENTRY_KUBE_CLUSTER_DOMAIN": "Corp.Example."}, None, False, "corp.example"),
        # kubernetes mode without it: the lookup's domain, else the trust domain
        ({"mode": "kubernetes"}, {}, "k8s.example", True, "k8s.example"),
        ({"mode": "kubernetes"}, {}, None, True, "td.example"),
        ({}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None, True, "td.example"),  # auto → kubernetes
        # standalone: the trust domain, as Dapr's Sentry (a derived value is not used)
        ({"mode": "standalone"}, {}, "k8s.example", False, "td.example"),
        ({}, {}, None, False, "td.example"),
    ],
)
def test_the_cluster_domain(flags, env, derived, lookup, domain):
    cfg = load_config({"trust_domain": "td.example", **flags}, env)
    assert needs_cluster_domain_lookup(cfg) is lookup
    assert cluster_domain(cfg, derived) == domain
    assert signing_policy(cfg, derived).dns_cluster_domain == domain


@pytest.mark.parametrize("value", ["a..b", "-x.example", "10.0.0.1", "has space", ""])
def test_a_cluster_domain_that_is_not_a_dns_name_is_refused(value):
    with pytest.raises(ConfigError, match="--kube-cluster-domain"):
        load_config({"kube_cluster_domain": value}, {})


ROOT_ARN = "kms://arn:aws:kms:us-east-1:111122223333:key/1111aaaa-0000-4000-8000-000000000001"
ISSUER_ARN = "kms://arn:aws:kms:us-east-1:111122223333:key/2222bbbb-0000-4000-8000-000000000002"
OTHER_ARN = "kms://arn:aws:kms:us-east-1:111122223333:key/3333cccc-0000-4000-8000-000000000003"


def _bundle(root_uri=None, issuer_uri=None):
    return generate_bundle(
        "example.org",
        SpiffeId("example.org", "default", "dapr-sentry"),
        datetime.now(UTC),
        root_key=ElsewhereKey(root_uri) if root_uri else None,
        issuer_key=ElsewhereKey(issuer_uri) if issuer_uri else None,
    )


def test_key_options_an_existing_bundle_does_not_follow_are_warned_about():
    def warnings(bundle, **options):
        return key_option_warnings(load_config(options, {}), bundle)

    local, in_kms = _bundle(), _bundle(ROOT_ARN, ISSUER_ARN)
    assert warnings(local) == [] and warnings(in_kms) == []  # nothing asked: nothing to say
    # the same keys, by ARN or by a form only KMS resolves (an alias, a key id): no warning
    assert warnings(in_kms, root_key=ROOT_ARN, issuer_key=ISSUER_ARN) == []
    assert warnings(in_kms, root_key="kms://alias/sentry-root", issuer_key="kms://2222bbbb") == []
    # a local bundle asked for KMS keys: both named, with the verb that moves each
    root, issuer = warnings(local, root_key=ROOT_ARN, issuer_key=ISSUER_ARN)
    assert f"--root-key {ROOT_ARN} is not the bundle's root key (a local key)" in root
    assert f"`sentryca rotate root --root-key {ROOT_ARN}`" in root
    assert f"--issuer-key {ISSUER_ARN} is not the bundle's issuer key (a local key)" in issuer
    assert f"`sentryca rotate issuer --issuer-key {ISSUER_ARN}`" in issuer
    # another KMS key than the bundle's
    (other,) = warnings(in_kms, issuer_key=OTHER_ARN)
    assert f"({ISSUER_ARN})" in other and OTHER_ARN in other
