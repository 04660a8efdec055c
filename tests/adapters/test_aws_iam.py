"""The AWS IAM validator (design §6.6) over real HTTP: proofs signed by botocore's SigV4 signer
(the client library's ``aws_iam_token``), sent by the CA's StsClient to a loopback STS double that
checks the signature with the known secret key, and to moto server's STS with AssumeRole
credentials. Every refusal has its status class and reason; hostile proofs never escape as an
unexpected exception."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.sts import StsClient
from ca_core.config import read_config_file
from ca_core.errors import CAError, InvalidRequest, PermissionDenied, Unavailable
from ca_core.validators import SignRequest
from ca_core.validators.aws_iam import AwsIamValidator, encode_proof, parse_proof
from sentryca_client.aws_iam import aws_iam_token

from support.sts_double import StsDouble

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
SERVER_ID = "spiffe://example.org/ns/sentry/dapr-sentry"
KEYS = {
    "AKIDORDERS": ("secret-orders", f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-task/i-0abc"),
    "AKIDFOREIGN": ("secret-foreign", f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/orders-task/i-0abc"),
    "AKIDBATCH": ("secret-batch", f"arn:aws:sts::{ACCOUNT}:assumed-role/batch/job-7"),
}


def config_text(endpoint: str, timeout: str = "2s") -> str:
    return f"""
spec:
  mtls:
    tokenValidators:
      - name: aws-iam
        options:
          stsEndpoint: {endpoint}
          requestTimeout: {timeout}
          serverId: {SERVER_ID}
          allowedAccounts: ["{ACCOUNT}", "{OTHER_ACCOUNT[:-1]}7"]
          rules:
            - name: orders
              account: "{ACCOUNT}"
              role: orders-task
              sessionName: "i-*"
              namespace: prod
              appId: orders
              trustDomain: example.org
"""


def csr_and_key():
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, SHA256())
    return csr.public_bytes(Encoding.PEM), key.public_key()


def validator_for(endpoint: str, timeout: str = "2s") -> AwsIamValidator:
    settings = read_config_file(config_text(endpoint, timeout), "cfg.yaml")["aws_iam"]
    return AwsIamValidator(settings, StsClient(settings), SERVER_ID, lambda: datetime.now(UTC))


def request(token: str, csr: bytes, app_id="orders", namespace="prod", td="example.org") -> SignRequest:
    return SignRequest(app_id, namespace, csr, trust_domain=td, token=token, token_validator=100)


def token_for(public_key, endpoint: str, akid="AKIDORDERS", server_id=SERVER_ID, session=None) -> str:
    secret = KEYS[akid][0] if akid in KEYS else "x"
    return aws_iam_token(
        public_key, server_id, sts_endpoint=endpoint, credentials=Credentials(akid, secret, session)
    )


def tampered(token: str, **changes: str | None) -> str:
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for name, value in changes.items():
        name = name.replace("_", "-")
        doc["headers"] = {k: v for k, v in doc["headers"].items() if k.lower() != name.lower()}
        if value is not None:
            doc["headers"][name] = value
    return encode_proof(doc["method"], doc["headers"], doc["body"])


@pytest.fixture
def sts():
    with StsDouble(KEYS) as double:
        yield double


def test_a_signed_proof_maps_through_the_rule(sts):
    csr, public_key = csr_and_key()
    identity = validator_for(sts.endpoint).validate(request(token_for(public_key, sts.endpoint), csr))
    assert str(identity.spiffe_id) == "spiffe://example.org/ns/prod/orders"
    assert identity.rule == "orders"
    assert len(sts.requests) == 1


def test_a_session_token_is_signed_and_forwarded(sts):
    csr, public_key = csr_and_key()
    token = token_for(public_key, sts.endpoint, session="session-token-value")
    assert validator_for(sts.endpoint).validate(request(token, csr)).rule == "orders"
    assert sts.requests[0]["X-Amz-Security-Token"] == "session-token-value"


@pytest.mark.parametrize(
    ("change", "reason", "reaches_sts"),
    [
        # a signed header changed after signing: STS (the double) finds the signature wrong
        # a signed header left out, or changed after signing
        ({"X-Sentryca-Csr-Key-Sha256": None}, "aws_iam_proof_malformed", False),
        ({"X-Amz-Date": "20200101T000000Z"}, "aws_iam_proof_malformed", False),
        ({"Content-Type": "text/plain"}, "aws_iam_sts_refused", True),
        ({"X-Sentryca-Server-Id": None}, "aws_iam_proof_malformed", False),
        ({"X-Sentryca-Server-Id": "spiffe://other/ns/x/dapr-sentry"}, "aws_iam_server_id", False),
        ({"Host": "sts.amazonaws.com"}, "aws_iam_wrong_host", False),
    ],
)
def test_tampered_proofs_are_refused(sts, change, reason, reaches_sts):
    csr, public_key = csr_and_key()
    token = tampered(token_for(public_key, sts.endpoint), **change)
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token, csr))
    assert e.value.reason == reason
    assert bool(sts.requests) == reaches_sts


def test_a_proof_signed_with_the_server_id_header_tampered_fails_at_sts(sts):
    csr, public_key = csr_and_key()
    token = token_for(public_key, sts.endpoint, server_id="spiffe://other.example/ns/x/dapr-sentry")
    token = tampered(token, X_Sentryca_Server_Id=SERVER_ID)  # now names this CA, but unsigned so
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token, csr))
    assert e.value.reason == "aws_iam_sts_refused"
    assert "SignatureDoesNotMatch" in str(e.value)


def test_a_proof_for_another_csr_key_is_refused_without_calling_sts(sts):
    csr, _ = csr_and_key()
    _, other_key = csr_and_key()
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token_for(other_key, sts.endpoint), csr))
    assert e.value.reason == "aws_iam_key_mismatch"
    assert sts.requests == []


def test_a_changed_body_is_refused(sts):
    csr, public_key = csr_and_key()
    doc = json.loads(base64.urlsafe_b64decode(token_for(public_key, sts.endpoint) + "=="))
    for body in ("Action=GetCallerIdentity&Version=2011-06-15&X=1", "Action=AssumeRole&Version=2011-06-15"):
        with pytest.raises(PermissionDenied) as e:
            validator_for(sts.endpoint).validate(request(encode_proof("POST", doc["headers"], body), csr))
        assert e.value.reason == "aws_iam_wrong_action"
    assert sts.requests == []


def test_an_expired_proof_is_refused(sts):
    csr, public_key = csr_and_key()
    token = token_for(public_key, sts.endpoint)
    later = AwsIamValidator(
        validator_for(sts.endpoint).settings,
        StsClient(validator_for(sts.endpoint).settings),
        SERVER_ID,
        lambda: datetime.now(UTC) + timedelta(minutes=16),
    )
    with pytest.raises(PermissionDenied) as e:
        later.validate(request(token, csr))
    assert e.value.reason == "aws_iam_proof_expired"


def test_a_foreign_account_and_an_unmapped_role_are_refused(sts):
    csr, public_key = csr_and_key()
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token_for(public_key, sts.endpoint, "AKIDFOREIGN"), csr))
    assert e.value.reason == "aws_iam_account"
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token_for(public_key, sts.endpoint, "AKIDBATCH"), csr))
    assert e.value.reason == "aws_iam_no_rule"
    with pytest.raises(PermissionDenied) as e:  # a key STS does not know
        validator_for(sts.endpoint).validate(request(token_for(public_key, sts.endpoint, "AKIDNONE"), csr))
    assert e.value.reason == "aws_iam_sts_refused"


def test_a_request_for_another_identity_names_expected_and_received(sts):
    csr, public_key = csr_and_key()
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(
            request(token_for(public_key, sts.endpoint), csr, app_id="billing")
        )
    assert e.value.reason == "app_id_mismatch"
    assert "expected 'orders', received 'billing'" in str(e.value)


@pytest.mark.parametrize("mode", ["throttle", "fail"])
def test_sts_throttling_or_failing_is_unavailable(sts, mode):
    csr, public_key = csr_and_key()
    sts.mode = mode
    with pytest.raises(Unavailable):
        validator_for(sts.endpoint).validate(request(token_for(public_key, sts.endpoint), csr))


def test_sts_unreachable_or_slow_is_unavailable(sts):
    csr, public_key = csr_and_key()
    sts.mode = "hang"
    with pytest.raises(Unavailable):
        validator_for(sts.endpoint, timeout="300ms").validate(
            request(token_for(public_key, sts.endpoint), csr)
        )
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(Unavailable):
        validator_for(dead).validate(request(token_for(public_key, dead), csr))


def test_the_proof_goes_only_to_the_configured_endpoint():
    """A proof signed for another host is refused before anything is sent; with two doubles, the
    one the proof names never hears of it."""
    with StsDouble(KEYS) as configured, StsDouble(KEYS) as named:
        csr, public_key = csr_and_key()
        with pytest.raises(PermissionDenied) as e:
            validator_for(configured.endpoint).validate(request(token_for(public_key, named.endpoint), csr))
        assert e.value.reason == "aws_iam_wrong_host"
        assert configured.requests == [] and named.requests == []


HOSTILE = [
    "",
    "not base64 !!",
    base64.urlsafe_b64encode(b"\xff\xfe\x00garbage").decode(),
    base64.urlsafe_b64encode(b"[" * 100000).decode()[:16000],
    "A" * 20000,
    encode_proof("POST", {"Host": "x"}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("GET", {"Host": "x"}, "Action=GetCallerIdentity&Version=2011-06-15"),
    base64.urlsafe_b64encode(
        json.dumps({"method": "POST", "headers": {}, "body": "", "url": "http://169.254.169.254/"}).encode()
    ).decode(),
    base64.urlsafe_b64encode(
        b'{"method":"POST","headers":{"Host":"a","host":"b"},"body":"Action=GetCallerIdentity&Version=2011-06-15"}'
    ).decode(),
    base64.urlsafe_b64encode(b'{"method":"POST","method":"POST","headers":{},"body":""}').decode(),
    encode_proof("POST", {"Host": "a" * 5000}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("POST", {"Host": "a\r\nX-Injected: 1"}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("POST", {"Host": ["a", "b"]}, "Action=GetCallerIdentity&Version=2011-06-15"),  # type: ignore[dict-item]
    encode_proof("POST", {f"X-H{i}": "v" for i in range(40)}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("POST", {"Transfer-Encoding": "chunked"}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("POST", {"Host": "é"}, "Action=GetCallerIdentity&Version=2011-06-15"),
    encode_proof("POST", {"Authorization": "AWS4-HMAC-SHA256 x"}, "Action=AssumeRole"),
]


@pytest.mark.parametrize("token", HOSTILE)
def test_hostile_proofs_are_refused_as_permission_denied(sts, token):
    csr, _ = csr_and_key()
    with pytest.raises(CAError) as e:
        validator_for(sts.endpoint).validate(request(token, csr))
    assert isinstance(e.value, PermissionDenied | InvalidRequest)
    assert sts.requests == []


def test_parse_proof_round_trips_the_client_token(sts):
    _, public_key = csr_and_key()
    proof = parse_proof(token_for(public_key, sts.endpoint))
    assert proof.region == "us-east-1" and proof.service == "sts"
    assert "x-sentryca-csr-key-sha256" in proof.signed_headers
    assert "secret" not in repr(proof) and "Signature" not in repr(proof)


def test_moto_sts_with_assume_role_credentials(moto_endpoint, monkeypatch):
    """moto server's STS answers GetCallerIdentity for AssumeRole credentials with the
    assumed-role ARN, which the rules map (moto checks no signature: the double does that)."""
    import boto3

    monkeypatch.delenv("AWS_PROFILE", raising=False)
    iam = boto3.client(
        "iam",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sts_client = boto3.client(
        "sts",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    account = sts_client.get_caller_identity()["Account"]
    role = iam.create_role(RoleName="orders-task", AssumeRolePolicyDocument="{}")["Role"]
    creds = sts_client.assume_role(RoleArn=role["Arn"], RoleSessionName="i-moto")["Credentials"]
    text = config_text(moto_endpoint).replace(ACCOUNT, account)
    settings = read_config_file(text, "cfg.yaml")["aws_iam"]
    validator = AwsIamValidator(settings, StsClient(settings), SERVER_ID, lambda: datetime.now(UTC))
    csr, public_key = csr_and_key()
    token = aws_iam_token(
        public_key,
        SERVER_ID,
        sts_endpoint=moto_endpoint,
        credentials=Credentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]),
    )
    identity = validator.validate(request(token, csr))
    assert str(identity.spiffe_id) == "spiffe://example.org/ns/prod/orders"
    assert identity.rule == "orders"


def test_a_proof_signed_without_the_sentryca_headers_is_refused(sts):
    """A GetCallerIdentity request signed for another service (no server-id header signed)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    csr, _ = csr_and_key()
    body = "Action=GetCallerIdentity&Version=2011-06-15"
    req = AWSRequest(
        method="POST", url=sts.endpoint + "/", data=body, headers={"Host": f"127.0.0.1:{sts.port}"}
    )
    SigV4Auth(Credentials("AKIDORDERS", "secret-orders"), "sts", "us-east-1").add_auth(req)
    token = encode_proof("POST", dict(req.headers.items()), body)
    with pytest.raises(PermissionDenied) as e:
        validator_for(sts.endpoint).validate(request(token, csr))
    assert e.value.reason == "aws_iam_server_id"
    assert sts.requests == []


def test_an_iam_user_maps_only_through_a_user_rule():
    """STS names an IAM user (``arn:aws:iam::ACCOUNT:user/PATH/NAME``, as for long-lived access
    keys): the role rules do not map it; a ``user`` rule naming it does."""
    keys = {"AKIDUSER": ("secret-user", f"arn:aws:iam::{ACCOUNT}:user/ci/ci-deployer")}
    with StsDouble(keys) as sts:
        csr, public_key = csr_and_key()
        token = aws_iam_token(
            public_key,
            SERVER_ID,
            sts_endpoint=sts.endpoint,
            credentials=Credentials("AKIDUSER", "secret-user"),
        )
        with pytest.raises(PermissionDenied) as e:
            validator_for(sts.endpoint).validate(request(token, csr))
        assert e.value.reason == "aws_iam_no_rule" and "IAM user 'ci-deployer'" in str(e.value)
        text = config_text(sts.endpoint) + (
            "            - {name: deployer, user: ci-deployer, namespace: ci, appId: deployer, "
            "trustDomain: example.org}\n"
        )
        settings = read_config_file(text, "cfg.yaml")["aws_iam"]
        validator = AwsIamValidator(settings, StsClient(settings), SERVER_ID, lambda: datetime.now(UTC))
        identity = validator.validate(request(token, csr, app_id="deployer", namespace="ci"))
        assert (
            str(identity.spiffe_id) == "spiffe://example.org/ns/ci/deployer" and identity.rule == "deployer"
        )
