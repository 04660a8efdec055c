"""Which ARNs the aws-iam rules map (design §6.6): the assumed roles that Lambda functions (session:
the function's name), ECS tasks (session: the task id) and EC2 instance profiles (session: the
instance id) present, IAM users through a ``user`` rule, and nothing else (root, federated users,
a role's own ARN)."""

from __future__ import annotations

import pytest

from ca_core.config import read_config_file
from ca_core.errors import ConfigError
from ca_core.validators.aws_iam import Principal, match_rule, parse_principal

ACCOUNT = "111122223333"
OTHER = "444455556666"


def rules(text: str):
    doc = (
        "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n"
        f'          allowedAccounts: ["{ACCOUNT}", "{OTHER}"]\n          rules:\n'
        + "".join(f"            {line}\n" for line in text.strip().splitlines())
    )
    return read_config_file(doc, "f")["aws_iam"].rules


TASK_ID = "?" * 32  # an ECS task id: 32 hex digits
RULES = rules(
    f"""
- {{name: lambda, role: orders-fn-role, sessionName: orders-fn, namespace: prod, appId: orders}}
- {{name: ecs, role: billing-task, sessionName: "{TASK_ID}", namespace: prod, appId: billing}}
- {{name: ec2, role: batch-host, sessionName: "i-*", namespace: batch, appId: worker}}
- {{name: deployer, user: ci-deployer, account: "{ACCOUNT}", namespace: ci, appId: deployer}}
"""
)


@pytest.mark.parametrize(
    ("arn", "principal", "rule"),
    [
        # Lambda: the execution role's session is the function's name
        (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-fn-role/orders-fn",
            ("orders-fn-role", "orders-fn", ""),
            "lambda",
        ),
        (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-fn-role/other-fn",
            ("orders-fn-role", "other-fn", ""),
            None,
        ),
        # ECS: the task role's session is the task id (32 hex digits)
        (
            f"arn:aws:sts::{ACCOUNT}:assumed-role/billing-task/0123456789abcdef0123456789abcdef",
            ("billing-task", "0123456789abcdef0123456789abcdef", ""),
            "ecs",
        ),
        # EC2: the instance profile's role, the instance id as session
        (
            f"arn:aws:sts::{OTHER}:assumed-role/batch-host/i-0abc1234def567890",
            ("batch-host", "i-0abc1234def567890", ""),
            "ec2",
        ),
        (f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/batch-host/i-0abc", ("batch-host", "i-0abc", ""), "ec2"),
        # IAM users, with or without a path: the name alone is matched (unique in an account)
        (f"arn:aws:iam::{ACCOUNT}:user/ci-deployer", ("", "", "ci-deployer"), "deployer"),
        (f"arn:aws:iam::{ACCOUNT}:user/division/team/ci-deployer", ("", "", "ci-deployer"), "deployer"),
        (f"arn:aws:iam::{OTHER}:user/ci-deployer", ("", "", "ci-deployer"), None),  # the rule's account only
        (
            f"arn:aws:iam::{ACCOUNT}:user/orders-fn-role",
            ("", "", "orders-fn-role"),
            None,
        ),  # a role rule's name
    ],
)
def test_mapped_principals(arn, principal, rule):
    parsed = parse_principal(arn)
    assert parsed is not None and (parsed.role, parsed.session, parsed.user) == principal
    matched = match_rule(RULES, parsed)
    assert (matched.name if matched else None) == rule


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:iam::{ACCOUNT}:root",
        f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
        f"arn:aws:iam::{ACCOUNT}:role/orders-fn-role",  # a role's ARN, not a session of it
        f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-fn-role",  # no session
        f"arn:aws:sts::{ACCOUNT}:user/ci-deployer",  # users are iam, not sts
        f"arn:aws:iam::{ACCOUNT}:user/",
        f"arn:aws:iam::{ACCOUNT}:user/path/" + "u" * 65,
        f"arn:aws:iam::{ACCOUNT}:group/admins",
    ],
)
def test_other_principals_are_not_mapped(arn):
    assert parse_principal(arn) is None


def test_a_role_rule_never_maps_a_user_of_that_name_nor_the_reverse():
    both = rules(
        """
- {name: as-user, user: same, namespace: a, appId: a}
- {name: as-role, role: same, namespace: b, appId: b}
"""
    )
    assert match_rule(both, Principal(ACCOUNT, "", "", user="same")).name == "as-user"
    assert match_rule(both, Principal(ACCOUNT, "same", "s")).name == "as-role"
    assert str(Principal(ACCOUNT, "", "", user="same")) == "IAM user 'same'"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("- {role: r, user: u, namespace: p, appId: a}", "exactly one of role"),
        ("- {namespace: p, appId: a}", "exactly one of role"),
        ("- {user: u, sessionName: 'i-*', namespace: p, appId: a}", "only with role"),
        ("- {user: 'a b', namespace: p, appId: a}", "not an IAM user name"),
        ("- {user: u, namespace: p, appId: 'a.b'}", "mapped identity is invalid"),
    ],
)
def test_bad_user_rules_stop_the_start(rule, message):
    with pytest.raises(ConfigError, match=message):
        rules(rule)
