"""The template's identity parameters (issue 17 item 4): the AWS IAM validator and the OIDC issuer
list, rendered into the Configuration the stack keeps in SSM (``ConfigParameter``). The rendering is
resolved as ``support.stack`` resolves the template (every ``!Sub``, ``!If``, ``!Join``, ``!Split``
for the given parameters) and loaded with the CA's own loader beside the task's environment; the
validators it builds then map a real signed proof (checked by the loopback STS double) and a
GitHub-shaped token to the expected identities. The README's parameter file is what SAM reads, its
Lambda init code and its CI job's step get SVIDs from a CA started on the rendered Configuration."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from botocore.credentials import Credentials
from cryptography import x509

from ca_core.config import load_config
from ca_core.errors import ConfigError, PermissionDenied
from ca_core.validators.base import SignRequest, TokenValidatorKind
from handlers.composition import build_validators
from sentryca_client.aws_iam import aws_iam_token
from tools.local_invoke import load_template

from support import REPO_ROOT
from support.jwks_server import SigningKey, jwks
from support.pki import make_csr, make_key
from support.stack import Stack
from support.sts_double import StsDouble

TEMPLATE = load_template(REPO_ROOT / "template.yaml")
PARAMETERS = TEMPLATE["Parameters"]
README = (REPO_ROOT / "README.md").read_text()
IDENTITY = (
    "JwksSource",
    "JwksIssuers",
    "AwsIamAllowedAccounts",
    "AwsIamRules",
    "AwsIamServerId",
    "AwsIamStsRegion",
    "AwsIamStsEndpoint",
)
ACCOUNT = "111122223333"
AKID, SECRET = "AKIDORDERSFN", "secret-of-orders-fn"
LAMBDA_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-fn-role/orders-fn"  # Lambda: session = function
OTHER_FN = (
    "AKIDOTHERFN",
    "secret-of-other-fn",
    f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-fn-role/other-fn",
)
REPOSITORY_ID = "690847541"


def readme_block(name: str, lang: str) -> str:
    (text,) = re.findall(rf"<!-- test: {name} -->\n```{lang}\n(.*?)```", README, re.S)
    return text


def readme_parameters() -> dict[str, str]:
    """The README's parameter file (identity.yaml), as YAML reads it."""
    return yaml.safe_load(readme_block("identity-parameters", "yaml"))


def allowed(name: str, value: str) -> bool:
    """Whether CloudFormation takes ``value`` for parameter ``name`` (AllowedPattern, MaxLength)."""
    spec = PARAMETERS[name]
    if len(value) > spec.get("MaxLength", 4096):
        return False
    return "AllowedPattern" not in spec or re.fullmatch(spec["AllowedPattern"], value) is not None


def rendered(parameters: dict[str, str]) -> str:
    """ConfigParameter's value for a stack with ``parameters``."""
    return Stack(TEMPLATE, "sentryca", parameters).props("ConfigParameter")["Value"]


def deployed_config(parameters: dict[str, str]):
    """The Config a task of the stack starts with: the task definition's environment (the values
    of the given parameters) and the rendered Configuration as its ``--config`` file."""
    stack = Stack(TEMPLATE, "sentryca", parameters)
    env = {e["Name"]: str(e["Value"]) for e in stack.container()["Environment"]}
    text = stack.props("ConfigParameter")["Value"]
    return load_config({"config": "/tmp/config.yaml"}, env, read_file=lambda _path: text)


def rule_holds(rule: str, parameters: dict[str, str]) -> bool:
    """Whether the template's rule ``rule`` accepts ``parameters`` (each assertion, as
    CloudFormation evaluates it before creating anything)."""
    stack = Stack(TEMPLATE, "sentryca", parameters)
    spec = TEMPLATE["Rules"][rule]
    if "RuleCondition" in spec and not stack.resolve(spec["RuleCondition"]):
        return True
    return all(stack.resolve(a["Assert"]) for a in spec["Assertions"])


def with_inline_keys(issuers: str, key: SigningKey) -> str:
    """The issuer rules with the JWK Set of ``key`` as each rule's source, in place of OIDC
    discovery from GitHub (no test reaches the internet)."""
    rules = json.loads(issuers)
    for rule in rules:
        rule["source"] = json.dumps(jwks(key))
    return json.dumps(rules)


def github_claims(audience: str = "sentryca", **overrides) -> dict:
    """A GitHub Actions OIDC token's claims (their documented shape) for my-org/deploy's release."""
    now = int(time.time())
    return {
        "jti": "example-id",
        "sub": "repo:my-org/deploy:ref:refs/heads/main",
        "aud": audience,
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "my-org/deploy",
        "repository_owner": "my-org",
        "repository_owner_id": "65",
        "repository_id": REPOSITORY_ID,
        "repository_visibility": "private",
        "run_id": "example-run-id",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "self-hosted",
        "actor_id": "12",
        "actor": "octocat",
        "workflow": "release",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "workflow_ref": "my-org/deploy/.github/workflows/release.yml@refs/heads/main",
        "job_workflow_ref": "my-org/deploy/.github/workflows/release.yml@refs/heads/main",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": now - 5,
        "iat": now - 5,
        "exp": now + 300,
    } | overrides


# --- the parameters' shapes -------------------------------------------------------------------------


def test_the_readme_parameter_file_names_identity_parameters_with_values_they_accept():
    values = readme_parameters()
    assert set(values) <= set(IDENTITY)
    for name, value in values.items():
        assert isinstance(value, str) and allowed(name, value), name
        assert "\n" not in value, name  # the folded lines are one line: JSON with spaces


def test_sam_reads_the_readme_parameter_file_as_yaml_does(tmp_path):
    """``sam deploy --parameter-overrides file://identity.yaml`` takes the same values (SAM's own
    parameter reader, from the tools venv)."""
    python = REPO_ROOT / ".venv-tools" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-tools (make lint makes it)")
    path = tmp_path / "identity.yaml"
    path.write_text(readme_block("identity-parameters", "yaml"))
    code = (
        "import json, sys; from samcli.cli.types import CfnParameterOverridesType as T; "
        "print(json.dumps(T().convert((sys.argv[1],), None, None)))"
    )
    done = subprocess.run(
        [str(python), "-c", code, f"file://{path}"], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == readme_parameters()


def test_bad_values_are_refused_at_stack_creation():
    refused = {
        "AwsIamAllowedAccounts": ["11112222333", f"{ACCOUNT}, 444455556666", ",".join([ACCOUNT] * 11)],
        "AwsIamRules": ['{"role": "x"}', '[{"role": "x"},\n {"role": "y"}]', "[" + "x" * 1600 + "]"],
        # YAML breaks lines at U+2028 too: no value may start a line of its own in the document
        "JwksIssuers": ['{"issuer": "https://x"}', "[\n]", "[]\u2028      - name: jwks"],
        "JwksSource": ['https://x/"a', "https://x/ a", "/etc/jwks.json", "https://" + "x" * 1600],
        "AwsIamServerId": ['sentry"ca', "a b", "x\\y"],
        "AwsIamStsRegion": ["US-EAST-1", "useast1"],
        "AwsIamStsEndpoint": ["http://sts.us-east-1.amazonaws.com", "https://sts.example/path"],
    }
    for name, values in refused.items():
        for value in values:
            assert not allowed(name, value), (name, value)
    accepted = {
        "AwsIamAllowedAccounts": ["", ACCOUNT, ",".join([ACCOUNT] * 10)],
        "AwsIamServerId": ["", "spiffe://public/ns/default/dapr-sentry", "sentryca.example.com"],
        "AwsIamStsRegion": ["", "eu-central-1", "us-gov-west-1"],
        "AwsIamStsEndpoint": [
            "",
            "https://sts.cn-north-1.amazonaws.com.cn",
            "https://sts.us-east-1.amazonaws.com:443",
        ],
    }
    for name, values in accepted.items():
        for value in values:
            assert allowed(name, value), (name, value)
    rules = readme_parameters()["AwsIamRules"]
    # an identity source is required unless INSECURE is opted in: any of the three will do
    assert not rule_holds("IdentitySourceUnlessInsecure", {})
    assert rule_holds("IdentitySourceUnlessInsecure", {"AllowInsecure": "true"})
    for source in ({"JwksSource": "https://issuer.example/jwks.json"}, {"JwksIssuers": "[]"}):
        assert rule_holds("IdentitySourceUnlessInsecure", source)
    with_iam = {"AwsIamAllowedAccounts": ACCOUNT, "AwsIamRules": rules}
    assert rule_holds("IdentitySourceUnlessInsecure", with_iam)
    # accounts and rules together or not at all; JwksSource and the issuer rules exclude each other
    assert rule_holds("AwsIamAccountsWithRules", with_iam) and rule_holds("AwsIamAccountsWithRules", {})
    assert not rule_holds("AwsIamAccountsWithRules", {"AwsIamRules": rules})
    assert not rule_holds("AwsIamAccountsWithRules", {"AwsIamAllowedAccounts": ACCOUNT})
    both = {
        "JwksSource": "https://issuer.example/jwks.json",
        "JwksIssuers": readme_parameters()["JwksIssuers"],
    }
    assert not rule_holds("JwksSourceOrIssuers", both)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"AwsIamRules": '[{"role": "orders-fn-role", "namespace": "prod", "appId": "orders.v2"}]'},
            r"rules\[0\]",
        ),
        (
            {"AwsIamRules": '[{"role": "r", "account": "444455556666", "namespace": "prod", "appId": "a"}]'},
            r"rules\[0\]\.account: '444455556666' is not in allowedAccounts",
        ),
        ({"AwsIamRules": '[{"role": "r", "namespace": "prod", "appId": "a", "app": "x"}]'}, "unknown key"),
        ({"AwsIamRules": '[{"role": "r", "namespace": "prod", "appId": "a"'}, "not valid YAML"),
    ],
)
def test_a_bad_rule_stops_the_cas_start_naming_it(parameters, message):
    """What a pattern cannot see (a mapped name the CA refuses, an account not allowed, an
    unknown key, broken JSON) stops the task's start with the rule named, before any call."""
    base = {"AwsIamAllowedAccounts": ACCOUNT, "AwsIamRules": readme_parameters()["AwsIamRules"]}
    with pytest.raises(ConfigError, match=message):
        deployed_config(base | parameters)


def test_a_bad_issuer_rule_stops_the_cas_start_naming_it():
    bad = json.loads(readme_parameters()["JwksIssuers"])
    bad[0]["namespace"] = "Gh_{/repository_owner}"  # capitals and _ are never a namespace
    with pytest.raises(ConfigError, match=r"issuers\[0\]"):
        deployed_config({"JwksIssuers": json.dumps(bad)})


def test_the_longest_values_fit_a_standard_parameter():
    """A standard SSM parameter holds 4 KB: the parameters' MaxLength and patterns keep the
    longest Configuration under it (an advanced parameter would be needed otherwise)."""
    longest = {
        "WorkloadCertTTL": "9" * 20 + "h",
        "JwksIssuers": "[" + "x" * (PARAMETERS["JwksIssuers"]["MaxLength"] - 2) + "]",
        "AwsIamAllowedAccounts": ",".join([ACCOUNT] * 10),
        "AwsIamRules": "[" + "x" * (PARAMETERS["AwsIamRules"]["MaxLength"] - 2) + "]",
        "AwsIamServerId": "s" * 200,
        "AwsIamStsRegion": "ap-southeast-99",
        "AwsIamStsEndpoint": "https://" + "h" * (PARAMETERS["AwsIamStsEndpoint"]["MaxLength"] - 8),
    }
    assert all(allowed(k, v) for k, v in longest.items() if k != "WorkloadCertTTL")
    assert len(rendered(longest).encode()) <= 4096
    # JwksSource excludes JwksIssuers (rule JwksSourceOrIssuers) and is no longer than it
    assert PARAMETERS["JwksSource"]["MaxLength"] <= PARAMETERS["JwksIssuers"]["MaxLength"]


# --- the rendered Configuration, loaded by the CA ---------------------------------------------------


def test_without_identity_parameters_the_configuration_is_as_before():
    jwks_only = deployed_config({"JwksSource": "https://issuer.example/jwks.json"})
    assert jwks_only.jwks.source == "https://issuer.example/jwks.json" and jwks_only.aws_iam is None
    assert jwks_only.workload_cert_ttl.total_seconds() == 86400
    insecure = deployed_config({"AllowInsecure": "true"})
    assert insecure.jwks is None and insecure.aws_iam is None
    validators, default = build_validators(insecure)  # tokenValidators empty: INSECURE, opted in
    assert set(validators) == {TokenValidatorKind.INSECURE} and default is TokenValidatorKind.INSECURE
    assert "workloadCertTTL: 24h" in rendered({})  # what the stack test rewrites


def test_the_aws_iam_parameters_map_a_lambda_functions_role_to_its_identity():
    """The README's parameters, rendered and loaded: the validator the CA builds sends a proof
    signed with the function's credentials to STS (the double checks the signature) and maps the
    returned assumed-role ARN by the rule; another function of the same role is refused."""
    with StsDouble({AKID: (SECRET, LAMBDA_ARN), OTHER_FN[0]: OTHER_FN[1:]}) as sts:
        # the endpoint is the double's (plain http on loopback: the loader takes it for tests;
        # the parameter's pattern, for a stack, takes https only)
        parameters = readme_parameters() | {"AwsIamStsEndpoint": sts.endpoint}
        parameters["JwksIssuers"] = with_inline_keys(parameters["JwksIssuers"], SigningKey("k1", "ES256"))
        cfg = deployed_config(parameters)
        assert cfg.aws_iam.region == "us-east-1"  # the stack's region by default
        assert cfg.aws_iam.allowed_accounts == (ACCOUNT,)
        validators, default = build_validators(cfg)
        assert set(validators) == {TokenValidatorKind.JWKS, TokenValidatorKind.AWS_IAM} and default is None
        iam = validators[TokenValidatorKind.AWS_IAM]
        assert iam.server_id == "spiffe://public/ns/default/dapr-sentry"  # AwsIamServerId empty

        def request(akid: str, secret: str, app_id: str = "orders") -> SignRequest:
            key = make_key()
            token = aws_iam_token(
                key.public_key(),
                iam.server_id,
                region="us-east-1",
                sts_endpoint=sts.endpoint,
                credentials=Credentials(akid, secret),
            )
            return SignRequest(app_id, "prod", make_csr(key), token=token, token_validator=100)

        identity = iam.validate(request(AKID, SECRET))
        assert str(identity.spiffe_id) == "spiffe://public/ns/prod/orders" and identity.rule == "orders-fn"
        with pytest.raises(PermissionDenied) as refused:
            iam.validate(request(*OTHER_FN[:2]))
        assert refused.value.reason == "aws_iam_no_rule" and "session 'other-fn'" in str(refused.value)
        with pytest.raises(PermissionDenied) as refused:
            iam.validate(request(AKID, SECRET, app_id="billing"))
        assert "expected 'orders', received 'billing'" in str(refused.value)
        assert len(sts.requests) == 3


def test_the_issuer_parameter_maps_a_github_actions_token_to_its_identity():
    key = SigningKey("gh-1", "RS256")
    parameters = {"JwksIssuers": with_inline_keys(readme_parameters()["JwksIssuers"], key)}
    cfg = deployed_config(parameters)
    (rule,) = cfg.jwks.issuers
    assert rule.issuer == "https://token.actions.githubusercontent.com" and rule.audiences == ("sentryca",)
    validators, _ = build_validators(cfg)
    oidc = validators[TokenValidatorKind.JWKS]

    def request(claims: dict, app_id: str = f"repo-{REPOSITORY_ID}") -> SignRequest:
        return SignRequest(app_id, "gh-my-org", make_csr(), token=key.token(claims), token_validator=3)

    identity = oidc.validate(request(github_claims()))
    assert str(identity.spiffe_id) == f"spiffe://public/ns/gh-my-org/repo-{REPOSITORY_ID}"
    assert identity.rule == "github"
    other_workflow = "my-org/deploy/.github/workflows/ci.yml@refs/heads/main"
    for claims, reason in (
        (github_claims(job_workflow_ref=other_workflow), "token_claims"),  # another workflow
        (github_claims(repository="my-org/other"), "token_claims"),
        (github_claims(audience="https://github.com/my-org"), "token_audience"),  # the default aud
        (github_claims(iss="https://gitlab.com"), "token_issuer"),
    ):
        with pytest.raises(PermissionDenied) as refused:
            oidc.validate(request(claims))
        assert refused.value.reason == reason, (claims, refused.value)
    with pytest.raises(PermissionDenied) as refused:
        oidc.validate(request(github_claims(), app_id="repo-1"))
    assert refused.value.reason == "token_mapping"


# --- STS reachable from the tasks -------------------------------------------------------------------


def test_the_tasks_reach_sts_without_any_iam_permission():
    endpoint = TEMPLATE["Resources"]["StsEndpoint"]
    assert endpoint["Condition"] == "MakeStsEndpoint"
    assert TEMPLATE["Conditions"]["MakeStsEndpoint"] == {
        "Fn::And": [{"Fn::Condition": "MakeVpcEndpoints"}, {"Fn::Condition": "UseAwsIam"}]
    }
    props = endpoint["Properties"]
    assert props["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.sts"}
    assert props["PrivateDnsEnabled"] is True and props["VpcEndpointType"] == "Interface"
    on = {"CreateVpcEndpoints": "true", "RouteTableIds": ["rtb-1"], "AwsIamAllowedAccounts": ACCOUNT}
    assert Stack(TEMPLATE, "s", on | {"AwsIamRules": readme_parameters()["AwsIamRules"]}).included(
        "StsEndpoint"
    )
    assert not Stack(TEMPLATE, "s", on).included("StsEndpoint")
    # private DNS: the default endpoint's host is the one the interface endpoint answers for
    cfg = deployed_config(
        {"AwsIamAllowedAccounts": ACCOUNT, "AwsIamRules": readme_parameters()["AwsIamRules"]}
    )
    assert cfg.aws_iam.sts_endpoint == "https://sts.us-east-1.amazonaws.com"
    # the tasks may open HTTPS anywhere (the endpoint's security group admits them), and their role
    # has no STS action: the CA forwards each caller's own signed request
    egress = TEMPLATE["Resources"]["ServiceSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert any(r["FromPort"] == 443 and r["CidrIp"] == "0.0.0.0/0" for r in egress)
    assert '"sts:' not in json.dumps(TEMPLATE["Resources"]["TaskRole"]["Properties"]["Policies"])


# --- the README's Lambda function and CI job, against a CA on the rendered Configuration ------------


class _ActionsTokenService:
    """Stands in for GitHub's token service of a job with ``id-token: write``: answers
    ``ACTIONS_ID_TOKEN_REQUEST_URL&audience=A`` with ``{"value": TOKEN}`` when the request bears
    ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``."""

    def __init__(self, key: SigningKey, bearer: str) -> None:
        service = self
        self.audiences: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                from urllib.parse import parse_qs, urlsplit

                if self.headers.get("Authorization") != f"bearer {bearer}":
                    self.send_response(401)
                    self.end_headers()
                    return
                (audience,) = parse_qs(urlsplit(self.path).query)["audience"]
                service.audiences.append(audience)
                body = json.dumps({"value": key.token(github_claims(audience))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token?api-version=2.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _spiffe_ids(pem: bytes) -> list[str]:
    leaf = x509.load_pem_x509_certificates(pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


@pytest.mark.slow
def test_the_readme_lambda_and_ci_job_get_svids_from_a_ca_on_the_rendered_configuration(tmp_path):
    from support.cli import serve

    if shutil.which("curl") is None:
        pytest.skip("the CI step runs curl, which is not installed here")
    key = SigningKey("gh-1", "RS256")
    with StsDouble({AKID: (SECRET, LAMBDA_ARN)}) as sts:
        parameters = readme_parameters() | {"AwsIamStsEndpoint": sts.endpoint}
        parameters["JwksIssuers"] = with_inline_keys(parameters["JwksIssuers"], key)
        config = tmp_path / "config.yaml"
        config.write_text(rendered(parameters))
        ca = serve(tmp_path, "--mode", "standalone", "--trust-domain", "public", "--config", str(config))
        try:
            assert sorted(ca.wait_ready()["validators"]) == ["aws_iam", "jwks"]
            anchors = ca.creds / "ca.crt"
            # the Lambda function's init phase, as the README writes it, with the role's credentials
            svid_file = tmp_path / "lambda-chain.pem"
            code = readme_block("lambda-init-svid", "python") + (
                "\nimport json, sys\nPath(sys.argv[1]).write_bytes(SVID.chain_pem)\n"
                "print(json.dumps(handler({}, None)))\n"
            )
            lambda_env = {
                "PATH": os.environ["PATH"],
                "PYTHONPATH": os.pathsep.join(sys.path),
                "SENTRYCA_SERVER": f"localhost:{ca.port}",
                "SENTRYCA_TRUST_ANCHORS": str(anchors),
                "SENTRYCA_STS_ENDPOINT": sts.endpoint,  # AwsIamStsEndpoint, here the double
                "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": AKID,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
            done = subprocess.run(
                [sys.executable, "-c", code, str(svid_file)],
                env=lambda_env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout.splitlines()[-1])["spiffe_id"] == "spiffe://public/ns/prod/orders"
            assert _spiffe_ids(svid_file.read_bytes()) == ["spiffe://public/ns/prod/orders"]
            # the CI job's step, as the README's workflow writes it, on a runner that reaches the CA
            workflow = yaml.safe_load(readme_block("github-workflow", "yaml"))
            assert workflow["permissions"]["id-token"] == "write"
            (step,) = workflow["jobs"]["release"]["steps"]
            service = _ActionsTokenService(key, bearer="runner-request-token")
            runner_temp = tmp_path / "runner-temp"
            runner_temp.mkdir()
            script = step["run"].replace("/etc/sentryca/ca.crt", str(anchors))
            ci_env = {
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "ACTIONS_ID_TOKEN_REQUEST_URL": service.url,
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-request-token",
                "GITHUB_REPOSITORY": "my-org/deploy",
                "GITHUB_REPOSITORY_ID": REPOSITORY_ID,
                "GITHUB_REPOSITORY_OWNER": "my-org",
                "RUNNER_TEMP": str(runner_temp),
                "SENTRYCA_SERVER": f"localhost:{ca.port}",  # the step's env, this CA's address
            }
            try:
                job = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", script],
                    env=ci_env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            finally:
                service.close()
            assert job.returncode == 0, job.stderr
            assert service.audiences == ["sentryca"]
            wanted = f"spiffe://public/ns/gh-my-org/repo-{REPOSITORY_ID}"
            assert _spiffe_ids((runner_temp / "svid" / "tls.crt").read_bytes()) == [wanted]
            from spiffe import X509Svid  # the SPIFFE X509-SVID rules, independently

            svid = X509Svid.parse(
                (runner_temp / "svid" / "tls.crt").read_bytes(),
                (runner_temp / "svid" / "tls.key").read_bytes(),
            )
            assert str(svid.spiffe_id) == wanted
            metrics = ca.metrics()
            assert (
                'sentryca_validator_rule_matches_total{rule="orders-fn",validator="aws_iam"} 1.0' in metrics
            )
            assert 'sentryca_validator_rule_matches_total{rule="github",validator="jwks"} 1.0' in metrics
        finally:
            log = ca.stop()
    assert SECRET not in log and "Signature=" not in log
