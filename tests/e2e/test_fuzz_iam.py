"""Hostile AWS IAM proofs (issue 17, design §6.6) against a CA whose aws-iam validator sends proofs
to a loopback STS double: the ``tests/corpus/iam`` files, the same shapes made from a fresh proof for
this CA (``support.make_corpus.iam_cases``) and hypothesis cases, each in process through
``Signer.sign`` (the code the servicer runs) and through the real gRPC server over TLS.

Every case ends in a defined status of design §3 (OK, INVALID_ARGUMENT, PERMISSION_DENIED,
RESOURCE_EXHAUSTED), never INTERNAL, and the server keeps serving. A proof that must be refused
before any STS call never reaches the double; the CA only ever calls its configured endpoint (a
second double, the host the hostile proofs name, hears nothing), path ``/``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sentryca_client as client
from ca_core.config import read_config_file
from ca_core.errors import CAError
from ca_core.validators import SignRequest
from ca_core.validators.aws_iam import ALLOWED_HEADERS, GET_CALLER_IDENTITY_BODY, encode_proof
from handlers.grpc_service import status_for
from handlers.server import CertificateAuthority
from sentryca_client.aws_iam import aws_iam_token
from sentryca_proto.sentry.v1 import sentry_pb2

from support import CORPUS
from support.ca import ca_config
from support.make_corpus import iam_cases
from support.pki import make_csr
from support.sts_double import StsDouble

AWS_IAM = 100
ACCOUNT = "111122223333"
SERVER_ID = "spiffe://public/ns/default/dapr-sentry"
KEYS = {"AKIDORDERS": ("secret-orders", f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-task/i-0abc")}
SPIFFE_ID = "spiffe://public/ns/prod/orders"
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
KEY = ec.generate_private_key(ec.SECP256R1())
CSR = make_csr(KEY)
CASES = {"signer_proofs": 200, "grpc_proofs": 600}  # hypothesis examples, derandomized (grpc: slow)


def files() -> list[Path]:
    found = sorted((CORPUS / "iam").iterdir())
    assert len(found) >= 50, "tests/corpus/iam is missing: run tests/support/make_corpus.py"
    return found


def headers_of(token: str) -> dict[str, str]:
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["headers"]


class IamServed:
    """A CA with only the aws-iam validator, its STS double ``sts`` and ``decoy``, another double
    that hostile proofs name as their host."""

    def __init__(self, ca: CertificateAuthority, anchors: bytes, sts: StsDouble, decoy: StsDouble) -> None:
        self.ca, self.anchors, self.sts, self.decoy = ca, anchors, sts, decoy
        self.channel = client.channel(f"localhost:{ca.grpc_port}", anchors)
        self.raw = self.channel.unary_unary("/dapr.proto.sentry.v1.CA/SignCertificate")
        self.last_reason = ""  # the reason of the last in-process refusal

    def proof(self, endpoint: str | None = None, akid: str = "AKIDORDERS") -> str:
        """A fresh good proof for CSR's key, signed for ``endpoint`` (default: the CA's STS)."""
        secret = KEYS[akid][0]
        return aws_iam_token(
            KEY.public_key(),
            SERVER_ID,
            sts_endpoint=endpoint or self.sts.endpoint,
            credentials=Credentials(akid, secret),
        )

    def live_cases(self) -> dict[str, str]:
        return iam_cases(headers_of(self.proof()), headers_of(self.proof(self.decoy.endpoint)))

    def in_process(self, token: str) -> grpc.StatusCode:
        request = SignRequest("orders", "prod", CSR, token=token, token_validator=AWS_IAM)
        self.last_reason = ""
        try:
            signed = self.ca.signer.sign(request, datetime.now(UTC))
        except CAError as e:
            self.last_reason = e.reason or ""
            return status_for(e)
        assert str(signed.spiffe_id) == SPIFFE_ID
        return grpc.StatusCode.OK

    def over_grpc(self, token: str) -> grpc.StatusCode:
        body = sentry_pb2.SignCertificateRequest(
            id="orders",
            namespace="prod",
            certificate_signing_request=CSR,
            token=token,
            token_validator=AWS_IAM,
        ).SerializeToString()
        try:
            self.raw(body, timeout=20)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.INTERNAL, e.details()
            return e.code()

    def only_the_configured_endpoint_was_called(self) -> None:
        assert self.decoy.requests == []
        assert {r.get("Host") for r in self.sts.requests} <= {self.sts.host}
        assert set(self.sts.paths) <= {"/"}

    def still_serving(self) -> None:
        resp = client.sign(self.channel, CSR, "orders", "prod", token=self.proof(), token_validator=AWS_IAM)
        assert client.verify_response(resp, self.anchors).spiffe_id == SPIFFE_ID


@pytest.fixture(scope="module")
def iam_ca(tmp_path_factory):
    store = tmp_path_factory.mktemp("iam") / "credentials"
    with StsDouble(KEYS) as sts, StsDouble(KEYS) as decoy:
        text = (
            "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n"
            f"          stsEndpoint: {sts.endpoint}\n          requestTimeout: 5s\n"
            f"          serverId: {SERVER_ID}\n"
            f'          allowedAccounts: ["{ACCOUNT}"]\n'
            "          rules: [{name: orders, role: orders-task, namespace: prod, appId: orders}]\n"
        )
        cfg = ca_config(store, rate_limit="0").with_changes(
            aws_iam=read_config_file(text, "cfg.yaml")["aws_iam"]
        )
        ca = CertificateAuthority()
        ca.start(cfg)
        served = IamServed(ca, (store / "ca.crt").read_bytes(), sts, decoy)
        yield served
        served.channel.close()
        ca.stop(grace=0)


# --- the corpus files: proofs for STS's public endpoints, all refused before any call ------------


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_corpus_file(iam_ca, path):
    token = path.read_text()
    before = len(iam_ca.sts.requests)
    assert iam_ca.in_process(token) == grpc.StatusCode.PERMISSION_DENIED
    big = path.name.startswith("toolarge-")  # design §3 step 0: the gRPC layer's 64 KiB
    assert iam_ca.over_grpc(token) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED if big else grpc.StatusCode.PERMISSION_DENIED
    )
    assert len(iam_ca.sts.requests) == before  # signed for another host (and long expired)
    iam_ca.only_the_configured_endpoint_was_called()


# --- the same shapes around a fresh proof for this CA's STS -----------------------------------

EXPECTED = {
    "ok": (grpc.StatusCode.OK, grpc.StatusCode.OK, 1),
    "sts": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, 1),
    "local": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, 0),
    "toolarge": (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, 0),
}


# the refusals' reasons (design §6.6): each case is refused by the check it is about
LOCAL_REASONS = {
    "aws_iam_proof_malformed",
    "aws_iam_wrong_action",
    "aws_iam_wrong_host",
    "aws_iam_server_id",
    "aws_iam_proof_expired",
    # local-damaged-char-2 lands in the CSR key hash header of a fresh proof (a new key each run):
    # about a third of the time the changed character still decodes, to another key's hash
    "aws_iam_key_mismatch",
    "token_missing",
}
REASONS = {"ok": {""}, "sts": {"aws_iam_sts_refused"}, "local": LOCAL_REASONS, "toolarge": LOCAL_REASONS}


@pytest.mark.parametrize("name", [p.stem for p in files()])
def test_live_case(iam_ca, name):
    """(in process, over gRPC, STS calls per path) as the name's prefix states."""
    token = iam_ca.live_cases()[name]
    in_process, over_grpc, calls = EXPECTED[name.split("-")[0]]
    before = len(iam_ca.sts.requests)
    assert iam_ca.in_process(token) == in_process
    assert iam_ca.last_reason in REASONS[name.split("-")[0]], iam_ca.last_reason
    assert len(iam_ca.sts.requests) == before + calls
    assert iam_ca.over_grpc(token) == over_grpc
    assert len(iam_ca.sts.requests) == before + 2 * calls
    iam_ca.only_the_configured_endpoint_was_called()


def test_the_files_are_the_live_shapes(iam_ca):
    assert sorted(iam_ca.live_cases()) == sorted(p.stem for p in files())


def test_sts_refusals_are_the_doubles(iam_ca):
    """The ``sts-`` cases are refused by STS (the double checks the signature), not locally."""
    for name, token in iam_ca.live_cases().items():
        if name.startswith("sts-"):
            with pytest.raises(grpc.RpcError) as e:
                iam_ca.raw(
                    sentry_pb2.SignCertificateRequest(
                        id="orders",
                        namespace="prod",
                        certificate_signing_request=CSR,
                        token=token,
                        token_validator=AWS_IAM,
                    ).SerializeToString(),
                    timeout=20,
                )
            assert "STS refused the AWS IAM proof" in e.value.details(), name


# --- hypothesis: damaged fresh proofs, any JSON, any bytes ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
header_names = st.sampled_from(
    sorted({*ALLOWED_HEADERS, "Host", "HOST", "X-Forwarded-Host", "Transfer-Encoding", "url"})
)


@st.composite
def damage(draw) -> tuple[str, ...]:
    """A recipe, applied to a fresh proof when the case runs (the proof's date must be current)."""
    kind = draw(st.sampled_from(["set", "drop", "body", "char", "json", "bytes", "field", "sig"]))
    if kind == "sig":  # well formed, so STS is asked and finds the signature wrong
        return (kind, str(draw(st.integers(0, 63))), draw(st.sampled_from("0123456789abcdef")))
    if kind == "set":
        value = draw(st.text(max_size=80) | st.text(alphabet="abcAB09-;=/ ,:.", max_size=80))
        return (kind, draw(header_names), value)
    if kind == "drop":
        return (kind, draw(header_names))
    if kind == "body":
        return (kind, draw(st.sampled_from([GET_CALLER_IDENTITY_BODY, ""]) | st.text(max_size=60)))
    if kind == "char":
        return (kind, str(draw(st.integers(0, 10_000))), draw(st.characters(exclude_categories=("Cs",))))
    if kind == "json":
        return (kind, json.dumps(draw(json_values)))
    if kind == "bytes":
        return (kind, base64.urlsafe_b64encode(draw(st.binary(max_size=300))).decode())
    return (kind, draw(st.text(max_size=10)), json.dumps(draw(json_values)))


def apply(recipe: tuple[str, ...], token: str) -> str:
    kind, *args = recipe
    doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    headers = doc["headers"]
    if kind in ("set", "drop"):
        headers = {k: v for k, v in headers.items() if k.lower() != args[0].lower()}
        if kind == "set":
            headers[args[0]] = args[1]
        return encode_proof("POST", headers, doc["body"])
    if kind == "body":
        return encode_proof("POST", headers, args[0])
    if kind == "sig":
        name = next(k for k in headers if k.lower() == "authorization")
        auth, i = headers[name], len(headers[name]) - 64 + int(args[0])
        headers[name] = auth[:i] + args[1] + auth[i + 1 :]
        return encode_proof("POST", headers, doc["body"])
    if kind == "char":
        i = int(args[0]) % len(token)
        return token[:i] + args[1] + token[i + 1 :]
    if kind == "json":
        return base64.urlsafe_b64encode(args[0].encode()).decode()
    if kind == "bytes":
        return args[0]
    doc[args[0]] = json.loads(args[1])
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def fuzz_settings(name: str):
    return settings(
        max_examples=CASES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz_settings("signer_proofs")
@given(recipe=damage())
def test_signer_damaged_proofs(iam_ca, recipe):
    assert iam_ca.in_process(apply(recipe, iam_ca.proof())) in DEFINED
    iam_ca.only_the_configured_endpoint_was_called()


@pytest.mark.slow
@fuzz_settings("grpc_proofs")
@given(recipe=damage())
def test_grpc_damaged_proofs(iam_ca, recipe):
    assert iam_ca.over_grpc(apply(recipe, iam_ca.proof())) in DEFINED
    iam_ca.only_the_configured_endpoint_was_called()


def test_still_serving_after_everything(iam_ca):
    iam_ca.still_serving()
    iam_ca.only_the_configured_endpoint_was_called()
