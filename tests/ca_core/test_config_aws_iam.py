"""The aws-iam entry of ``tokenValidators`` (design §6.6, §7.3): mapped names checked at start,
accounts, endpoint and options; the validator's selection and wire number."""

from __future__ import annotations

import pytest

from ca_core import policy
from ca_core.config import read_config_file
from ca_core.errors import ConfigError
from ca_core.validators import TokenValidatorKind

from support.ca import ca_config

ACCOUNT = "111122223333"


def entry(options: str) -> str:
    return "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n" + "".join(
        f"          {line}\n" for line in options.strip().splitlines()
    )


GOOD_RULES = 'allowedAccounts: ["111122223333"]\nrules:\n  - {role: r, namespace: prod, appId: orders}'


def test_defaults():
    settings = read_config_file(entry(GOOD_RULES), "f")["aws_iam"]
    assert settings.sts_endpoint == "https://sts.us-east-1.amazonaws.com" and settings.region == "us-east-1"
    assert settings.allowed_accounts == (ACCOUNT,) and settings.server_id is None
    rule = settings.rules[0]
    assert (rule.name, rule.trust_domain, rule.account, rule.session_name) == ("rule-0", "public", None, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('allowedAccounts: ["1"]\nrules: [{role: r, namespace: prod, appId: orders}]', "12-digit"),
        ("rules: [{role: r, namespace: prod, appId: orders}]", "allowedAccounts: required"),
        ('allowedAccounts: ["111122223333"]\nrules: []', "rules: required"),
        ('allowedAccounts: ["111122223333"]\nrules: [{role: r, namespace: prod, appId: "a.b"}]', "mapped"),
        ('allowedAccounts: ["111122223333"]\nrules: [{role: r, namespace: Prod_, appId: a}]', "mapped"),
        (
            'allowedAccounts: ["111122223333"]\n'
            'rules: [{role: r, namespace: p, appId: a, trustDomain: "a..b"}]',
            "mapped",
        ),
        (
            'allowedAccounts: ["111122223333"]\n'
            'rules: [{role: r, namespace: p, appId: a, account: "444455556666"}]',
            "not in allowedAccounts",
        ),
        ('allowedAccounts: ["111122223333"]\nrules: [{role: "r r", namespace: p, appId: a}]', "role"),
        ('allowedAccounts: ["111122223333"]\nrules: [{role: r, namespace: p, appId: a, url: x}]', "unknown"),
        ("stsEndpoint: http://sts.example.com\n" + GOOD_RULES, "loopback"),
        ("stsEndpoint: https://sts.example.com/path\n" + GOOD_RULES, "no path"),
        ("stsEndpoint: https://user@sts.example.com\n" + GOOD_RULES, "no path"),
        ("region: Mars\n" + GOOD_RULES, "region"),
        ("requestTimeout: 5m\n" + GOOD_RULES, "at most 1m"),
        ("endpoint: x\n" + GOOD_RULES, "unknown option"),
    ],
)
def test_bad_settings_stop_the_start(options, message):
    with pytest.raises(ConfigError, match=message):
        read_config_file(entry(options), "f")


def test_listed_twice_is_refused():
    text = entry(GOOD_RULES)
    text += "\n".join(text.splitlines()[3:]) + "\n"
    with pytest.raises(ConfigError, match="more than once"):
        read_config_file(text, "f")


def test_beside_jwks_and_selected_without_default(tmp_path):
    text = (
        entry(GOOD_RULES) + "      - name: jwks\n        options:\n          source: https://i.example/jwks\n"
    )
    read = read_config_file(text, "f")
    assert set(read) == {"aws_iam", "jwks"}
    cfg = ca_config(tmp_path).with_changes(aws_iam=read["aws_iam"])
    choice = policy.select_validators(cfg)
    assert choice.enabled == (TokenValidatorKind.AWS_IAM,) and choice.default is None  # INSECURE off


def test_wire_number_and_names():
    assert int(TokenValidatorKind.AWS_IAM) == 100  # outside Dapr's 0-3
    assert TokenValidatorKind.parse("aws-iam") is TokenValidatorKind.AWS_IAM
    assert TokenValidatorKind.parse("100") is TokenValidatorKind.AWS_IAM
