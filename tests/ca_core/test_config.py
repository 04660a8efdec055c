"""Configuration (design §7): flags > SENTRY_* env > --config file > defaults; Go durations."""

from datetime import timedelta

import pytest

from ca_core.config import Config, JwksSettings, load_config
from ca_core.errors import ConfigError
from ca_core.keys import KeyAlgorithm


def test_defaults_match_the_spec_table():
    cfg = load_config({}, {})
    assert (cfg.port, cfg.listen_address, cfg.healthz_port, cfg.metrics_port) == (
        50001,
        "127.0.0.1",
        8080,
        9090,
    )
    assert cfg.trust_domain == "localhost" and cfg.namespace == "default"
    assert cfg.store_url == "file://./.sentry/credentials"
    assert cfg.workload_cert_ttl == timedelta(hours=24) and cfg.allowed_clock_skew == timedelta(minutes=15)
    assert cfg.ca_key_algorithm is KeyAlgorithm.ECDSA_P256
    assert (cfg.log_level, cfg.log_as_json, cfg.enable_metrics) == ("info", False, True)
    assert cfg.effective_mode == "standalone"
    assert (cfg.issuer_ca_filename, cfg.issuer_certificate_filename, cfg.issuer_key_filename) == (
        "ca.crt",
        "issuer.crt",
        "issuer.key",
    )


def test_precedence_flag_over_env_over_file(tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text("kind: Configuration\nspec:\n  mtls:\n    workloadCertTTL: 2h\n    allowedClockSkew: 1m\n")
    files = {str(f): f.read_text()}
    read = files.__getitem__
    assert load_config({"config": str(f)}, {}, read).workload_cert_ttl == timedelta(hours=2)
    env = {"SENTRY_WORKLOAD_CERT_TTL": "3h"}
    assert load_config({"config": str(f)}, env, read).workload_cert_ttl == timedelta(hours=3)
    cfg = load_config({"config": str(f), "workload_cert_ttl": "4h"}, env, read)
    assert cfg.workload_cert_ttl == timedelta(hours=4)
    assert cfg.allowed_clock_skew == timedelta(minutes=1)  # only the file sets it


def test_config_path_from_env(tmp_path):
    read = {"c.yaml": "spec: {mtls: {workloadCertTTL: 90s}}"}.__getitem__
    assert load_config({}, {"SENTRY_CONFIG": "c.yaml"}, read).workload_cert_ttl == timedelta(seconds=90)


def test_env_names_follow_the_flag_names():
    env = {
        "SENTRY_PORT": "6000",
        "SENTRY_LISTEN_ADDRESS": "0.0.0.0",
        "SENTRY_HEALTHZ_PORT": "6001",
        "SENTRY_METRICS_PORT": "6002",
        "SENTRY_TRUST_DOMAIN": "example.org",
        "NAMESPACE": "dapr-system",
        "SENTRY_ISSUER_CREDENTIALS": "/var/run/creds",
        "SENTRY_ISSUER_CA_FILENAME": "root.pem",
        "SENTRY_ALLOWED_CLOCK_SKEW": "1m30s",
        "SENTRY_CA_KEY_ALGORITHM": "ed25519",
        "SENTRY_LOG_LEVEL": "warn",
        "SENTRY_LOG_AS_JSON": "true",
        "SENTRY_ENABLE_METRICS": "false",
        "SENTRY_MODE": "standalone",
    }
    cfg = load_config({}, env)
    assert (cfg.port, cfg.listen_address, cfg.healthz_port, cfg.metrics_port) == (6000, "0.0.0.0", 6001, 6002)
    assert (cfg.trust_domain, cfg.namespace) == ("example.org", "dapr-system")
    assert cfg.store_url == "file:///var/run/creds" and cfg.file_names.ca == "root.pem"
    assert cfg.allowed_clock_skew == timedelta(seconds=90)
    assert cfg.ca_key_algorithm is KeyAlgorithm.ED25519
    assert (cfg.log_level, cfg.log_as_json, cfg.enable_metrics) == ("warning", True, False)


def test_trust_bundle_store_wins_over_issuer_credentials():
    cfg = load_config({"trust_bundle_store": "file://elsewhere", "issuer_credentials": "here"}, {})
    assert cfg.store_url == "file://elsewhere"


def test_kubernetes_is_detected_from_the_environment():
    assert load_config({}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).effective_mode == "kubernetes"
    assert (
        load_config({"mode": "standalone"}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).effective_mode
        == "standalone"
    )


@pytest.mark.parametrize(
    "flags, env, words",
    [
        ({"workload_cert_ttl": "24"}, {}, "--workload-cert-ttl"),
        ({}, {"SENTRY_WORKLOAD_CERT_TTL": "1d"}, "SENTRY_WORKLOAD_CERT_TTL"),
        ({"port": "70000"}, {}, "--port"),
        ({"port": "abc"}, {}, "--port"),
        ({"trust_domain": "Not Valid"}, {}, "--trust-domain"),
        ({"trust_domain": "example.org."}, {}, "--trust-domain"),
        ({}, {"NAMESPACE": "Bad_NS"}, "NAMESPACE"),
        ({"ca_key_algorithm": "rsa"}, {}, "ecdsa-p256"),
        ({"mode": "cloud"}, {}, "--mode"),
        ({"log_as_json": "maybe"}, {}, "--log-as-json"),
        ({"workload_cert_ttl": "0s"}, {}, "positive"),
        ({"issuer_key_filename": "../key"}, {}, "plain file name"),
    ],
)
def test_bad_values_name_their_source(flags, env, words):
    with pytest.raises(ConfigError) as e:
        load_config(flags, env)
    assert words in str(e.value)


def test_bad_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: spec\.mtls\.workloadCertTTL"):
        load_config(
            {"config": "c.yaml"}, {}, {"c.yaml": "spec: {mtls: {workloadCertTTL: forever}}"}.__getitem__
        )
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config({"config": "c.yaml"}, {}, {"c.yaml": "spec: [unclosed"}.__getitem__)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"config": str(tmp_path / "missing.yaml")}, {}, lambda p: open(p).read())


def _cfg(yaml_text: str):
    return load_config({"config": "c.yaml"}, {}, {"c.yaml": yaml_text}.__getitem__)


def test_jwks_validator_from_the_config_file():
    cfg = _cfg(
        "spec:\n  mtls:\n    tokenValidators:\n      - name: jwks\n        options:\n"
        "          source: https://issuer.example/jwks.json\n          caCertificate: /etc/ca.pem\n"
        "          minRefreshInterval: 2m\n          requestTimeout: 3s\n"
    )
    assert cfg.jwks == JwksSettings(
        "https://issuer.example/jwks.json", "/etc/ca.pem", timedelta(minutes=2), timedelta(seconds=3)
    )
    defaults = _cfg("spec: {mtls: {tokenValidators: [{name: jwks, options: {source: x}}]}}").jwks
    assert (defaults.min_refresh_interval, defaults.request_timeout) == (
        timedelta(minutes=10),
        timedelta(seconds=30),
    )
    assert _cfg("spec: {mtls: {tokenValidators: []}}").jwks is None


@pytest.mark.parametrize(
    ("validators", "words"),
    [
        ("[{name: kubernetes}]", "'kubernetes' cannot be configured here"),
        ("[{name: insecure}]", "'insecure' cannot be configured here"),
        ("[{name: oidc, options: {source: x}}]", "unknown token validator 'oidc'"),
        ("[{name: jwks}]", "options: expected a mapping"),
        ("[{name: jwks, options: {}}]", "options.source: required"),
        ("[{name: jwks, options: {source: x, refresh: 1m}}]", "unknown option(s) refresh"),
        ("[{name: jwks, options: {source: x, minRefreshInterval: soon}}]", "minRefreshInterval"),
        ("[{name: jwks, options: {source: x, requestTimeout: 0s}}]", "requestTimeout: must be positive"),
        ("[{name: jwks, options: {source: x}}, {name: jwks, options: {source: y}}]", "more than once"),
        ("{name: jwks}", "expected a list"),
    ],
)
def test_bad_token_validators_are_refused_clearly(validators, words):
    with pytest.raises(ConfigError) as e:
        _cfg(f"spec: {{mtls: {{tokenValidators: {validators}}}}}")
    assert "c.yaml: spec.mtls.tokenValidators" in str(e.value) and words in str(e.value)


def test_kubeconfig_and_token_audience_options():
    cfg = load_config({"kubeconfig": "/k/config", "token_audience": " a, b ,,c"}, {})
    assert cfg.kubeconfig == "/k/config" and cfg.token_audience == ("a", "b", "c")
    env = {"SENTRY_KUBECONFIG": "/e/config", "SENTRY_TOKEN_AUDIENCE": "x"}
    assert load_config({}, env).token_audience == ("x",) and load_config({}, env).kubeconfig == "/e/config"
    assert load_config({}, {}).token_audience is None
    with pytest.raises(ConfigError, match="--token-audience"):
        load_config({"token_audience": " , "}, {})


def test_config_is_immutable_and_changes_are_validated():
    cfg = load_config({}, {})
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]
    assert cfg.with_changes(workload_cert_ttl=timedelta(hours=1)).workload_cert_ttl == timedelta(hours=1)
    with pytest.raises(ConfigError):
        cfg.with_changes(trust_domain="")
    assert isinstance(cfg, Config)


def test_store_poll_interval_is_off_by_default_and_bounded():
    assert load_config({}, {}).store_poll_interval == timedelta(0)
    assert load_config({}, {"SENTRY_STORE_POLL_INTERVAL": "30s"}).store_poll_interval == timedelta(seconds=30)
    with pytest.raises(ConfigError, match="--store-poll-interval must be between 0s"):
        load_config({"store_poll_interval": "48h"}, {})


def test_rotation_options_are_off_by_default_bounded_and_feed_the_policy():
    from ca_core.policy import rotation_policy

    cfg = load_config({}, {})
    assert cfg.auto_rotate is False and cfg.root_propagation_window == timedelta(hours=24)
    cfg = load_config(
        {"root_propagation_window": "48h", "store_poll_interval": "30s"},
        {"SENTRY_AUTO_ROTATE": "true", "SENTRY_WORKLOAD_CERT_TTL": "1h"},
    )
    policy = rotation_policy(cfg)
    assert policy.auto is True and policy.propagation_window == timedelta(hours=48)
    # a leaf of a retired issuer may live its TTL, plus the skew, plus one poll of another replica
    assert policy.leaf_bound == timedelta(hours=1, minutes=15, seconds=30)
    # without polling, another replica notices an activation only at its own rotation check,
    # which runs every --expiry-check-interval: that bounds it instead of the (zero) poll interval
    cfg = load_config({}, {"SENTRY_WORKLOAD_CERT_TTL": "1h"})
    assert rotation_policy(cfg).leaf_bound == timedelta(hours=2, minutes=15)
    cfg = load_config({"expiry_check_interval": "10m"}, {"SENTRY_WORKLOAD_CERT_TTL": "1h"})
    assert rotation_policy(cfg).leaf_bound == timedelta(hours=1, minutes=25)
    with pytest.raises(ConfigError, match="--root-propagation-window must be between 0s and 720h"):
        load_config({"root_propagation_window": "721h"}, {})
    with pytest.raises(ConfigError, match="SENTRY_AUTO_ROTATE"):
        load_config({}, {"SENTRY_AUTO_ROTATE": "sometimes"})


def test_the_upstream_call_bounds_are_options_with_defaults_and_sane_limits():
    cfg = load_config({}, {})
    assert cfg.upstream_timeout == timedelta(seconds=5) and cfg.upstream_max_attempts == 2
    cfg = load_config({"upstream_timeout": "1500ms"}, {"SENTRY_UPSTREAM_MAX_ATTEMPTS": "4"})
    assert cfg.upstream_timeout == timedelta(seconds=1.5) and cfg.upstream_max_attempts == 4
    cfg = load_config({}, {"SENTRY_UPSTREAM_TIMEOUT": "60s"})
    assert cfg.upstream_timeout == timedelta(seconds=60)
    for flags, env, says in [
        ({"upstream_timeout": "0s"}, {}, "--upstream-timeout must be positive and at most 60s"),
        ({"upstream_timeout": "61s"}, {}, "--upstream-timeout must be positive and at most 60s"),
        ({"upstream_timeout": "5"}, {}, "--upstream-timeout: invalid duration"),
        ({}, {"SENTRY_UPSTREAM_TIMEOUT": "soon"}, "SENTRY_UPSTREAM_TIMEOUT: invalid duration"),
        ({"upstream_max_attempts": "0"}, {}, "--upstream-max-attempts: 0 must be at least 1"),
        ({"upstream_max_attempts": "11"}, {}, "--upstream-max-attempts must be between 1 and 10"),
        ({}, {"SENTRY_UPSTREAM_MAX_ATTEMPTS": "two"}, "SENTRY_UPSTREAM_MAX_ATTEMPTS: 'two' is not a whole"),
    ]:
        with pytest.raises(ConfigError) as raised:
            load_config(flags, env)
        assert says in str(raised.value), (flags, env, str(raised.value))


# --- the option table is the single source of the settings (design §7) -----------------------


def test_every_option_is_a_config_field_and_every_field_an_option_or_documented():
    from dataclasses import fields

    from ca_core.config import FIELDS_WITHOUT_OPTION, SERVE_OPTIONS, STORE_OPTIONS

    options = (*SERVE_OPTIONS, *STORE_OPTIONS)
    dests = [opt.dest for opt in options]
    assert len(set(dests)) == len(dests), "an option is listed twice"
    assert len({opt.env_name for opt in options}) == len(options), "two options share a variable"
    config_fields = {f.name for f in fields(Config)}
    assert set(dests) - config_fields == set(), "options without a Config field"
    assert config_fields - set(dests) == set(FIELDS_WITHOUT_OPTION), "fields without an option or reason"
    assert set(FIELDS_WITHOUT_OPTION) & set(dests) == set()
    assert all(reason.strip() for reason in FIELDS_WITHOUT_OPTION.values())


def test_the_default_each_help_line_states_is_the_config_default():
    import re

    from ca_core.config import SERVE_OPTIONS, STORE_OPTIONS

    stated = 0
    for opt in (*SERVE_OPTIONS, *STORE_OPTIONS):
        m = re.search(r"(?:\(|; )default ([^\s:;)]+)[):]", opt.help)  # "(default X)", "; default X)"
        if m:
            stated += 1
            assert opt.parse(m.group(1)) == getattr(Config(), opt.dest), opt.flag
    assert stated >= 20


def test_the_config_file_fills_only_config_fields():
    from dataclasses import fields

    from ca_core.config import read_config_file

    values = read_config_file(
        "spec: {mtls: {workloadCertTTL: 1h, allowedClockSkew: 1m,"
        " tokenValidators: [{name: jwks, options: {source: x}}]}}",
        "c.yaml",
    )
    assert set(values) == {"workload_cert_ttl", "allowed_clock_skew", "jwks"}
    assert set(values) <= {f.name for f in fields(Config)}


def test_oidc_settings_against_jwt_issuance():
    """design §9.9: OIDC needs JWT issuance, and the federation's provider URL is the tokens' ``iss``."""
    url = "https://docs.s3.us-east-1.amazonaws.com/sentryca"
    federation = {"oidc_federation_bucket": "docs", "oidc_federation_provider_url": url}
    for issuer in (url, url + "/"):
        assert (
            load_config(federation | {"jwt_enabled": "true", "jwt_issuer": issuer}, {}).jwt_issuer == issuer
        )
    with pytest.raises(ConfigError, match=r"--jwt-issuer \(unset\) must be --oidc-federation-provider-url"):
        load_config(federation | {"jwt_enabled": "true"}, {})
    with pytest.raises(ConfigError, match="--oidc-federation-bucket needs --jwt-enabled"):
        load_config(federation, {})
    server = {"oidc_enabled": "true", "oidc_server_tls_enabled": "false"}
    assert (
        load_config(server | {"jwt_enabled": "true"}, {}).jwt_issuer is None
    )  # the issuer follows the request
    with pytest.raises(ConfigError, match="--oidc-enabled needs --jwt-enabled"):
        load_config(server, {})
