"""Inputs an attacker's test found accepted, each refused with the status of design §3.2, over a
real CA on loopback."""

import json

import grpc
import pytest

import sentryca_client as client
from ca_core.config import JwksSettings
from ca_core.validators import TokenValidatorKind
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2

from support.ca import ca_config
from support.jwks_server import SigningKey, claims, jwks
from support.openssl import run_openssl
from support.pki import make_bundle, make_csr


@pytest.mark.parametrize("trust_domain", [".", "-", "_", "a..b", "example.org."])
def test_a_trust_domain_that_is_not_dns_shaped_is_denied(running_ca, channel_to, trust_domain):
    with pytest.raises(grpc.RpcError) as e:
        client.sign(channel_to(running_ca), make_csr(), "orders", "prod", trust_domain=trust_domain)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "DNS-shaped" in e.value.details()


@pytest.mark.parametrize("trust_domain", ["public", "localhost", "example.org", "cluster.local"])
def test_dns_shaped_trust_domains_are_still_signed(running_ca, channel_to, store_dir, trust_domain):
    resp = client.sign(channel_to(running_ca), make_csr(), "orders", "prod", trust_domain=trust_domain)
    signed = client.verify_response(resp, (store_dir / "ca.crt").read_bytes(), trust_domain=trust_domain)
    assert signed.spiffe_id == f"spiffe://{trust_domain}/ns/prod/orders"


# --- token_validator: only a number that is exactly a known one (design §3.1 step 1) -----------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


def raw_request(token_validator_varint: bytes) -> bytes:
    """A SignCertificateRequest for orders/prod whose field 6 (token_validator) is sent as given."""
    body = sentry_pb2.SignCertificateRequest(
        id="orders", namespace="prod", certificate_signing_request=make_csr()
    ).SerializeToString()
    return body + b"\x30" + token_validator_varint


def test_protobuf_alone_wraps_2_to_the_32_to_the_default_validator():
    assert sentry_pb2.SignCertificateRequest.FromString(raw_request(varint(2**32))).token_validator == 0


def call_raw(channel, body: bytes):
    send = channel.unary_unary("/dapr.proto.sentry.v1.CA/SignCertificate")  # bytes in, bytes out
    return send(body, timeout=30)


@pytest.mark.parametrize("number", [2**32, 2**32 + 1, 2**33 + 3, 2**31, 2**63, 2**64 - 2**31 - 1, 2**64 + 1])
def test_a_token_validator_beyond_int32_is_unknown_not_wrapped(running_ca, channel_to, number):
    with pytest.raises(grpc.RpcError) as e:
        call_raw(channel_to(running_ca), raw_request(varint(number)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"unknown token validator {number}" in e.value.details()


def test_token_validator_numbers_that_are_int32_keep_their_meaning(running_ca, channel_to):
    chan = channel_to(running_ca)
    response = sentry_pb2.SignCertificateResponse.FromString(call_raw(chan, raw_request(varint(1))))
    assert response.workload_certificate  # INSECURE, sent as 1
    with pytest.raises(grpc.RpcError) as e:
        call_raw(chan, raw_request(varint(2**64 - 1)))  # -1, sign-extended as protobuf sends it
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown token validator -1" in e.value.details()


# --- JWT dates must be NumericDates (RFC 7519 §2) -------------------------------------------------


@pytest.fixture
def jwks_ca(store_dir):
    key = SigningKey("key-1", "ES256")
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir).with_changes(jwks=JwksSettings(json.dumps(jwks(key)))))
    try:
        yield ca, key
    finally:
        ca.stop(grace=0)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_a_jwt_date_given_as_a_string_is_denied(jwks_ca, channel_to, claim):
    ca, key = jwks_ca
    good = claims("spiffe://public/ns/prod/orders", "spiffe://localhost/ns/default/dapr-sentry")
    chan = channel_to(ca)
    jwks_number = int(TokenValidatorKind.JWKS)
    client.sign(chan, make_csr(), "orders", "prod", token=key.token(good), token_validator=jwks_number)
    bad = good | {claim: str(good.get(claim, good["iat"]))}
    with pytest.raises(grpc.RpcError) as e:
        client.sign(chan, make_csr(), "orders", "prod", token=key.token(bad), token_validator=jwks_number)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"token claim {claim} is not a NumericDate" in e.value.details()


# --- an RSASSA-PSS key would lose its restriction in the leaf (design §3.1 step 4) --------------


def test_a_csr_with_an_rsa_pss_key_is_an_invalid_argument(running_ca, channel_to, tmp_path):
    r = run_openssl(
        "req", "-new", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
        "-keyout", str(tmp_path / "key.pem"), "-subj", "/CN=orders", "-out", str(tmp_path / "csr.pem"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    with pytest.raises(grpc.RpcError) as e:
        client.sign(channel_to(running_ca), (tmp_path / "csr.pem").read_bytes(), "orders", "prod")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RSASSA-PSS" in e.value.details()


# --- a credentials directory others may write to is refused (design §5.6) -----------------------


def test_a_ca_refuses_a_world_writable_credentials_directory(store_dir):
    from ca_core.errors import Unavailable

    from support.pki import write_bundle

    write_bundle(store_dir, make_bundle())
    store_dir.chmod(0o777)
    ca = CertificateAuthority()
    with pytest.raises(Unavailable, match=f"mode 0777.*chmod 700 {store_dir}"):
        ca.start(ca_config(store_dir))
    assert not ca.running
