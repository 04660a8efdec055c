"""The client library as the slim distribution ships it (design §10.1): its side of the AWS IAM
proof agrees with the CA's (the client keeps its own copy so as not to import ca_core),
``request_x509_svid`` gets a verified SVID from a running CA in one call, and
``sentryca-client request`` writes it or refuses with the exit codes of ``sentryca request``."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from botocore.credentials import Credentials
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import ca_core.config.aws_iam as core_config
import ca_core.validators.aws_iam as core
from ca_core.validators import TokenValidatorKind
from sentryca_client import X509Svid, aws_iam, cli, request_x509_svid

from support.pki import verifies


def test_the_clients_proof_is_the_one_the_ca_reads():
    assert aws_iam.AWS_IAM_VALIDATOR == TokenValidatorKind.AWS_IAM
    for name in ("SERVER_ID_HEADER", "KEY_HASH_HEADER", "GET_CALLER_IDENTITY_BODY", "FORM_CONTENT_TYPE"):
        assert getattr(aws_iam, name) == getattr(core, name), name
    assert aws_iam.default_sts_endpoint("eu-west-3") == core_config.default_sts_endpoint("eu-west-3")
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert aws_iam.key_hash(key) == core.key_hash(key)
    token = aws_iam.aws_iam_token(
        key, "spiffe://example.org/ns/sentry/dapr-sentry", credentials=Credentials("AKID", "secret")
    )
    proof = core.parse_proof(token)  # the CA's strict parser takes the client's encoding
    assert proof.header(core.KEY_HASH_HEADER) == core.key_hash(key)
    assert proof.header(core.SERVER_ID_HEADER) == "spiffe://example.org/ns/sentry/dapr-sentry"
    assert proof.header("Host") == "sts.us-east-1.amazonaws.com" and proof.region == "us-east-1"
    assert core.encode_proof("POST", {"A": "b"}, "x") == aws_iam.encode_proof("POST", {"A": "b"}, "x")


@pytest.mark.parametrize(
    ("env", "region"),
    [
        ({"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-3"),
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
        ({}, "us-east-1"),
    ],
)
def test_a_proof_is_signed_for_the_environments_region_unless_told(monkeypatch, env, region):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    credentials = Credentials("AKID", "secret")
    proof = core.parse_proof(aws_iam.aws_iam_token(key, "spiffe://td/ns/x/y", credentials=credentials))
    assert proof.region == region and proof.header("Host") == f"sts.{region}.amazonaws.com"
    told = core.parse_proof(
        aws_iam.aws_iam_token(key, "spiffe://td/ns/x/y", region="ca-central-1", credentials=credentials)
    )
    assert told.region == "ca-central-1"


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ecdsa-p384", "ed25519"])
def test_one_call_gets_a_verified_svid(running_ca, store_dir, algorithm):
    anchors = (store_dir / "ca.crt").read_bytes()
    svid = request_x509_svid(
        f"localhost:{running_ca.grpc_port}", anchors, "orders", "prod", key_algorithm=algorithm
    )
    assert isinstance(svid, X509Svid) and svid.spiffe_id == "spiffe://public/ns/prod/orders"
    assert "PRIVATE" not in repr(svid) and "orders" in repr(svid)
    chain = x509.load_pem_x509_certificates(svid.chain_pem)
    key = serialization.load_pem_private_key(svid.private_key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert chain[0].public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert isinstance(key, ed25519.Ed25519PrivateKey) == (algorithm == "ed25519")
    assert svid.trust_anchors_pem.strip() == anchors.strip()
    if algorithm != "ed25519":  # pyca's Web PKI verifier refuses Ed25519 chains
        assert verifies(chain[0], chain[1:], anchors, datetime.now(UTC))
    assert svid.valid_until == chain[0].not_valid_after_utc


def test_one_call_passes_on_the_cas_refusal(running_ca, store_dir):
    anchors = (store_dir / "ca.crt").read_bytes()
    with pytest.raises(grpc.RpcError) as e:  # a validator the CA does not run
        request_x509_svid(f"localhost:{running_ca.grpc_port}", anchors, "orders", "prod", token_validator=3)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError, match="unknown key algorithm"):
        request_x509_svid("localhost:1", anchors, "orders", "prod", key_algorithm="rsa")
    with pytest.raises(ValueError, match="signs its own token"):
        request_x509_svid("localhost:1", anchors, "orders", "prod", token="t", aws_iam=True)


def test_the_script_writes_the_svid(running_ca, store_dir, tmp_path, capsys):
    out = tmp_path / "certs"
    common = ["--server", f"localhost:{running_ca.grpc_port}", "--trust-anchors", str(store_dir / "ca.crt")]
    assert cli.main(["request", "--id", "web", "--namespace", "default", *common, "--out", str(out)]) == 0
    assert "spiffe://public/ns/default/web" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"tls.key", "tls.crt", "ca.crt"}
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    # the CA's refusal: exit 1, its status named, nothing written
    refused = tmp_path / "refused"
    args = ["request", "--id", "web", "--namespace", "default", "--token-validator", "jwks"]
    assert cli.main([*args, *common, "--out", str(refused)]) == 1
    err = capsys.readouterr().err  # worded as `sentryca request` words it
    assert "the CA refused the request: INVALID_ARGUMENT" in err and not refused.exists()
    # nothing listening: the cause and the flag to check, not a status dump
    closed = ["--server", "localhost:1", "--trust-anchors", str(store_dir / "ca.crt"), "--timeout", "5"]
    assert cli.main(["request", "--id", "web", "--namespace", "default", *closed, "--out", str(refused)]) == 1
    assert "nothing is listening at --server localhost:1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "token_file", "message"),
    [
        (["--token", "t"], b"t2", "exclude each other"),
        ([], b"", "holds no token"),
        ([], b"two words", "holds no token"),
        ([], b"\xff", "not ASCII"),
        (["--token-validator", "nope"], None, "--token-validator"),
        (["--aws-iam", "--token", "t"], None, "signs its own token"),
        (["--server", "ca.internal"], None, "expected HOST:PORT"),
        ([], None, "no PEM certificates"),  # the anchors below
    ],
)
def test_the_script_refuses_bad_usage_before_any_call(tmp_path, capsys, extra, token_file, message):
    anchors = tmp_path / "ca.crt"
    anchors.write_text("not a certificate")
    args = ["request", "--id", "web", "--namespace", "default", "--server", "localhost:1"]
    if token_file is not None:
        (tmp_path / "token").write_bytes(token_file)
        extra = [*extra, "--token-file", str(tmp_path / "token")]
    assert cli.main([*args, *extra, "--trust-anchors", str(anchors), "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()
