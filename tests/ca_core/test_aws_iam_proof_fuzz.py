"""Hostile AWS IAM proofs (design §6.6): whatever the token holds — JSON of any shape, headers of
any name, type and value, non-UTF-8 bytes, damaged real proofs — ``parse_proof`` returns a proof or
refuses it as PermissionDenied, never another exception (which the server would answer INTERNAL)."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ca_core.errors import PermissionDenied
from ca_core.validators.aws_iam import ALLOWED_HEADERS, GET_CALLER_IDENTITY_BODY, encode_proof, parse_proof

GOOD_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKID/20261202/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;"
    "x-sentryca-csr-key-sha256;x-sentryca-server-id, Signature=" + "0" * 64
)
GOOD = {
    "Authorization": GOOD_AUTH,
    "Host": "sts.us-east-1.amazonaws.com",
    "X-Amz-Date": "20261202T050000Z",
    "X-Sentryca-Server-Id": "spiffe://td/ns/default/dapr-sentry",
    "X-Sentryca-Csr-Key-Sha256": "a" * 64,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
header_names = st.sampled_from([*sorted(ALLOWED_HEADERS), "Transfer-Encoding", "url", "HOST"]) | st.text(
    max_size=20
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def outcome(token: str) -> None:
    try:
        parse_proof(token)
    except PermissionDenied:
        pass


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json(doc):
    outcome(b64(json.dumps(doc).encode()))


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(header_names, json_values | st.text(max_size=300), max_size=20),
    method=st.sampled_from(["POST", "GET", "post"]) | st.text(max_size=5),
    body=st.sampled_from([GET_CALLER_IDENTITY_BODY, ""]) | st.text(max_size=60),
)
def test_any_headers(headers, method, body):
    outcome(b64(json.dumps({"method": method, "headers": headers, "body": body}).encode()))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_any_bytes(data):
    outcome(b64(data))
    outcome(data.decode("latin-1"))


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=10_000), char=st.characters())
def test_a_damaged_real_shape(position, char):
    token = encode_proof("POST", GOOD, GET_CALLER_IDENTITY_BODY)
    i = position % len(token)
    outcome(token[:i] + char + token[i + 1 :])


def test_the_real_shape_parses():
    proof = parse_proof(encode_proof("POST", GOOD, GET_CALLER_IDENTITY_BODY))
    assert proof.region == "us-east-1" and proof.header("host") == "sts.us-east-1.amazonaws.com"
