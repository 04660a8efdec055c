"""STS over HTTPS (design §6.6): the STS double behind TLS with a certificate from a test CA, the
aws-iam ``caCertificate`` option as that CA. A good proof is accepted; a server certificate that
does not chain to the configured trust, or does not name the endpoint's host, is UNAVAILABLE
(``aws_sts_tls``, saying why) before anything is sent; trust that cannot be loaded, or given for a
plain http endpoint, stops the start; plain http is refused off loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import ec

import sentryca_client as client
from adapters.sts import StsClient
from ca_core.config import read_config_file
from ca_core.errors import ConfigError, PermissionDenied, Unavailable
from ca_core.validators import SignRequest
from ca_core.validators.aws_iam import AwsIamValidator
from handlers.server import CertificateAuthority
from sentryca_client.aws_iam import aws_iam_token

from support.ca import ca_config
from support.jwks_server import self_signed_tls
from support.pki import make_csr
from support.sts_double import StsDouble

ACCOUNT = "111122223333"
SERVER_ID = "spiffe://public/ns/default/dapr-sentry"
BAD_PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
KEYS = {"AKIDORDERS": ("secret-orders", f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-task/i-0abc")}


def config_text(endpoint: str, ca_certificate: str | None) -> str:
    trust = f"          caCertificate: {ca_certificate}\n" if ca_certificate is not None else ""
    return (
        "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n"
        f"          stsEndpoint: {endpoint}\n{trust}          requestTimeout: 5s\n"
        f"          serverId: {SERVER_ID}\n"
        f'          allowedAccounts: ["{ACCOUNT}"]\n'
        "          rules: [{name: orders, role: orders-task, namespace: prod, appId: orders}]\n"
    )


def settings_for(endpoint: str, ca_certificate: str | None):
    return read_config_file(config_text(endpoint, ca_certificate), "cfg.yaml")["aws_iam"]


def validate(endpoint: str, ca_certificate: str | None):
    key = ec.generate_private_key(ec.SECP256R1())
    token = aws_iam_token(
        key.public_key(),
        SERVER_ID,
        sts_endpoint=endpoint,
        credentials=Credentials("AKIDORDERS", "secret-orders"),
    )
    settings = settings_for(endpoint, ca_certificate)
    validator = AwsIamValidator(settings, StsClient(settings), SERVER_ID, lambda: datetime.now(UTC))
    request = SignRequest("orders", "prod", make_csr(key), token=token, token_validator=100)
    return validator.validate(request)


@pytest.fixture
def trusted(tmp_path):
    """(the double over TLS for localhost/127.0.0.1, its CA's PEM file)."""
    ca_pem, cert, key = self_signed_tls(tmp_path / "tls")
    with StsDouble(KEYS, tls=(cert, key)) as sts:
        yield sts, ca_pem


def test_a_good_proof_is_accepted_over_https(trusted):
    sts, ca_pem = trusted
    assert sts.endpoint.startswith("https://localhost:")
    assert str(validate(sts.endpoint, str(ca_pem)).spiffe_id) == "spiffe://public/ns/prod/orders"
    # the trust given as PEM text (a YAML block scalar) instead of a file path
    pem = ca_pem.read_text().strip().replace("\n", "\n            ")
    assert validate(sts.endpoint, f"|\n            {pem}").rule == "orders"
    assert len(sts.requests) == 2 and sts.requests[0]["Host"] == sts.host


def test_a_certificate_not_chaining_to_the_trust_is_unavailable(trusted, tmp_path):
    sts, _ = trusted
    other_ca, _, _ = self_signed_tls(tmp_path / "other")
    for trust in (str(other_ca), None):  # another CA; the system's store
        with pytest.raises(Unavailable) as e:
            validate(sts.endpoint, trust)
        assert e.value.reason == "aws_sts_tls"
        assert "certificate verify failed" in str(e.value) and "caCertificate" in str(e.value)
    assert sts.requests == []


def test_a_certificate_for_another_host_is_unavailable(tmp_path):
    ca_pem, cert, key = self_signed_tls(tmp_path / "tls", names=("sts.example.test",))
    with StsDouble(KEYS, tls=(cert, key)) as sts:
        with pytest.raises(Unavailable) as e:
            validate(sts.endpoint, str(ca_pem))
        assert e.value.reason == "aws_sts_tls"
        assert "Hostname mismatch" in str(e.value), str(e.value)
        assert sts.requests == []


def test_an_https_endpoint_that_speaks_http_is_unavailable():
    with StsDouble(KEYS) as sts:
        with pytest.raises(Unavailable) as e:
            validate(sts.endpoint.replace("http://", "https://"), None)
        assert e.value.reason == "aws_sts_tls"


@pytest.mark.parametrize(
    ("endpoint", "trust", "message"),
    [
        ("https://sts.example.com", "/nonexistent/ca.pem", "caCertificate: cannot be loaded"),
        (
            "https://sts.example.com",
            "|\n" + "\n".join(f"            {line}" for line in BAD_PEM.splitlines()),
            "caCertificate: cannot be loaded",
        ),
        ("http://127.0.0.1:8080", "/etc/ssl/ca.pem", "plain http"),
        ("http://sts.example.com", None, "loopback"),
        ("https://sts.example.com", "''", "PEM text or a file path"),
    ],
)
def test_bad_trust_or_plain_http_stops_the_start(endpoint, trust, message):
    with pytest.raises(ConfigError, match=message):
        StsClient(settings_for(endpoint, trust))


def test_the_composition_trusts_the_configured_ca_over_grpc(trusted, tmp_path):
    """``sentryca serve``'s validators (the composition root): a good proof over the wire is OK
    through an https STS; the same CA with trust that does not reach the double's certificate
    answers UNAVAILABLE naming the TLS failure (not PERMISSION_DENIED, not INTERNAL)."""
    sts, ca_pem = trusted
    other_ca, _, _ = self_signed_tls(tmp_path / "other")
    for trust, want in ((ca_pem, grpc.StatusCode.OK), (other_ca, grpc.StatusCode.UNAVAILABLE)):
        store = tmp_path / f"store-{want.name}"
        cfg = ca_config(store, rate_limit="0").with_changes(aws_iam=settings_for(sts.endpoint, str(trust)))
        ca = CertificateAuthority()
        ca.start(cfg)
        channel = client.channel(f"localhost:{ca.grpc_port}", (store / "ca.crt").read_bytes())
        try:
            key = ec.generate_private_key(ec.SECP256R1())
            token = aws_iam_token(
                key.public_key(),
                SERVER_ID,
                sts_endpoint=sts.endpoint,
                credentials=Credentials("AKIDORDERS", "secret-orders"),
            )
            try:
                client.sign(channel, make_csr(key), "orders", "prod", token=token, token_validator=100)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
            assert code == want, details
            if want is grpc.StatusCode.UNAVAILABLE:
                assert "no trusted TLS connection" in details and "certificate verify failed" in details
        finally:
            channel.close()
            ca.stop(grace=0)
    assert len(sts.requests) == 1


def test_a_refusal_by_sts_over_https_is_still_permission_denied(trusted):
    sts, ca_pem = trusted
    sts.keys = {}  # STS no longer knows the key: InvalidClientTokenId
    with pytest.raises(PermissionDenied) as e:
        validate(sts.endpoint, str(ca_pem))
    assert e.value.reason == "aws_iam_sts_refused"
