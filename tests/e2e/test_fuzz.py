"""Hostile input (issue 7, hardening 1): the corpus in ``tests/corpus/`` and property-based
cases (hypothesis) for every parser of untrusted bytes — the request message, its fields, the
CSR, the JWKS and KUBERNETES tokens.

Every case must end in a defined status of design §3: success, INVALID_ARGUMENT,
PERMISSION_DENIED or RESOURCE_EXHAUSTED. Never INTERNAL, never a crash; the server keeps
serving. The bulk runs in process through ``Signer.sign`` (the same code the servicer calls);
several thousand cases go through the real gRPC server over TLS.

Generated cases per run (derandomized, so CI sees the same ones every time): see ``CASES``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sentryca_client as client
from ca_core.config import JwksSettings
from ca_core.errors import CAError, InvalidRequest, PermissionDenied
from ca_core.validators import SignRequest
from ca_core.validators.kubernetes import pod_name_claim
from handlers.grpc_service import status_for
from handlers.server import CertificateAuthority
from sentryca_proto.sentry.v1 import sentry_pb2

from support import CORPUS
from support.ca import ca_config
from support.jwks_server import SigningKey, claims, jwks
from support.kube import Cluster
from support.kube_api_server import KubeApiServer
from support.pki import make_csr

INSECURE, KUBERNETES, JWKS = 1, 2, 3
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# hypothesis examples per property (the corpus adds its files on top)
CASES = {
    "signer_fields": 2500,
    "signer_csr_bytes": 2500,
    "signer_jwks_tokens": 1200,
    "signer_issuer_rule_tokens": 600,
    "kubernetes_pod_claim": 1000,
    "grpc_fields": 1200,
    "grpc_raw_messages": 800,
    "grpc_csr_bytes": 600,
    "grpc_tokens": 600,
}
SUB = "spiffe://public/ns/prod/orders"
AUD = "spiffe://localhost/ns/default/dapr-sentry"


def fuzz_settings(name: str):
    return settings(
        max_examples=CASES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- the CAs under test ------------------------------------------------------------------------


class Served:
    def __init__(self, ca: CertificateAuthority, anchors: bytes) -> None:
        self.ca, self.anchors = ca, anchors
        self.channel = client.channel(f"localhost:{ca.grpc_port}", anchors)
        self.raw = self.channel.unary_unary("/dapr.proto.sentry.v1.CA/SignCertificate")

    def call(self, **fields) -> grpc.StatusCode:
        try:
            stub_req = sentry_pb2.SignCertificateRequest(**fields)
            self.raw(stub_req.SerializeToString(), timeout=20)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.INTERNAL, e.details()
            return e.code()

    def call_raw(self, body: bytes) -> grpc.StatusCode:
        try:
            self.raw(body, timeout=20)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.INTERNAL, e.details()
            return e.code()

    def still_serving(self) -> None:
        resp = client.sign(self.channel, make_csr(), "orders", "prod", token_validator=INSECURE)
        assert client.verify_response(resp, self.anchors).spiffe_id == SUB


@pytest.fixture(scope="module")
def insecure_ca(tmp_path_factory):
    store = tmp_path_factory.mktemp("insecure") / "credentials"
    ca = CertificateAuthority()
    ca.start(ca_config(store, rate_limit="0"))
    served = Served(ca, (store / "ca.crt").read_bytes())
    yield served
    served.channel.close()
    ca.stop(grace=0)


@pytest.fixture(scope="module")
def idp_key():
    return SigningKey("key-1", "ES256")


@pytest.fixture(scope="module")
def idp_ca(tmp_path_factory, idp_key):
    """A CA in kubernetes mode (the loopback API server) that also has JWKS (inline)."""
    tmp = tmp_path_factory.mktemp("idp")
    with KubeApiServer(bearer_token="admin") as api:
        cluster = Cluster(api)
        cluster.pod("prod", "orders")
        kubeconfig = str(api.write_kubeconfig(tmp / "kubeconfig"))
        cfg = ca_config(tmp / "credentials", mode="kubernetes", kubeconfig=kubeconfig, rate_limit="0")
        cfg = cfg.with_changes(jwks=JwksSettings(json.dumps(jwks(idp_key))))
        ca = CertificateAuthority()
        ca.start(cfg)
        served = Served(ca, (tmp / "credentials" / "ca.crt").read_bytes())
        served.cluster = cluster
        yield served
        served.channel.close()
        ca.stop(grace=0)


# --- the corpus, through the real server -----------------------------------------------------


def corpus(kind: str) -> list[Path]:
    files = sorted((CORPUS / kind).iterdir())
    assert len(files) >= 20, "tests/corpus is missing: run tests/support/make_corpus.py"
    return files


@pytest.mark.parametrize("path", corpus("csr"), ids=lambda p: p.name)
def test_corpus_csr_over_grpc(insecure_ca, path):
    expected = {
        "ok": grpc.StatusCode.OK,
        "invalid": grpc.StatusCode.INVALID_ARGUMENT,
        "toolarge": grpc.StatusCode.RESOURCE_EXHAUSTED,
    }[path.name.split("-")[0]]
    code = insecure_ca.call(
        id="orders", namespace="prod", certificate_signing_request=path.read_bytes(), token_validator=INSECURE
    )
    assert code == expected
    insecure_ca.still_serving()


def test_corpus_tokens_over_grpc(idp_ca):
    """Every corpus token, to JWKS and to KUBERNETES (registered with the TokenReview as a
    valid service account token, so the pod claim parser sees it too)."""
    for path in corpus("token"):
        token = path.read_text()
        idp_ca.cluster.reviews.tokens[token] = "system:serviceaccount:prod:default"
        big = len(token) > 64 * 1024  # design §3 step 0
        for validator in (JWKS, KUBERNETES):
            code = idp_ca.call(
                id="orders",
                namespace="prod",
                certificate_signing_request=make_csr(),
                token=token,
                token_validator=validator,
            )
            want = {grpc.StatusCode.RESOURCE_EXHAUSTED} if big else {grpc.StatusCode.PERMISSION_DENIED}
            if validator == KUBERNETES and not big:
                # the TokenReview vouched for it: a readable claim naming the pod prod/orders is
                # a valid identity whatever the rest of the token looks like
                want.add(grpc.StatusCode.OK)
            assert code in want, (path.name, validator, code)


def signs_a_good_token(idp_ca, idp_key) -> bool:
    token = idp_key.token(claims(SUB, AUD))
    call = {"id": "orders", "namespace": "prod", "token": token, "token_validator": JWKS}
    return idp_ca.call(certificate_signing_request=make_csr(), **call) == grpc.StatusCode.OK


def test_the_idp_ca_does_sign_good_tokens(idp_ca, idp_key):
    """The control case: the refusals above are not the CA refusing everything."""
    assert signs_a_good_token(idp_ca, idp_key)


# --- strategies ------------------------------------------------------------------------------

GOOD_CSR = make_csr(ec.generate_private_key(ec.SECP256R1()))
GOOD_DER = base64.b64decode(b"".join(GOOD_CSR.splitlines()[1:-1]))

hostile_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.text(alphabet="./\\\x00\n\r\t:%-_aA0é", max_size=70),
    st.sampled_from(["", ".", "..", "../etc", "a/b", "a\\b", "orders", "prod", "dapr-sentry", "default"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "/", "\x00", "-"]), st.integers(60, 10_000)),
)
trust_domains = st.one_of(hostile_text, st.sampled_from(["", "public", "example.org", "EXAMPLE", "a..b"]))


@st.composite
def mutated_csr(draw) -> bytes:
    """A real CSR, damaged: bit flips, truncation, insertions, re-wrapping, or random bytes."""
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return draw(st.binary(max_size=3000))
    base = bytearray(draw(st.sampled_from([GOOD_CSR, GOOD_DER])))
    if choice == 1:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << draw(st.integers(0, 7))
    elif choice == 2:
        base = base[: draw(st.integers(0, len(base)))]
    elif choice == 3:
        i = draw(st.integers(0, len(base)))
        base[i:i] = draw(st.binary(min_size=1, max_size=200))
    elif choice == 4:
        der = bytearray(GOOD_DER)
        i = draw(st.integers(0, len(der) - 1))
        der[i] = draw(st.integers(0, 255))
        b64 = base64.encodebytes(bytes(der))
        base = bytearray(
            b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64 + b"-----END CERTIFICATE REQUEST-----\n"
        )
    elif choice == 5:
        label = draw(st.sampled_from([b"CERTIFICATE", b"NEW CERTIFICATE REQUEST", b"PRIVATE KEY", b"X"]))
        base = bytearray(GOOD_CSR.replace(b"CERTIFICATE REQUEST", label))
    else:
        base = bytearray(GOOD_CSR + draw(st.binary(max_size=100)))
    return bytes(base)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def hostile_token(draw) -> str:
    """Malformed JWTs: random text, random segments, JSON headers and payloads of any shape
    (alg/kid of any type, real claim names), or a real signed token damaged."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(st.text(max_size=300))
    if choice == 1:
        parts = draw(st.lists(st.text(alphabet="abcAB0-_=+/.", max_size=40), min_size=1, max_size=5))
        return ".".join(parts)
    header = draw(
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]),
            st.one_of(st.sampled_from(["ES256", "RS256", "none", "HS256", "EdDSA", "key-1"]), json_values),
            max_size=4,
        )
    )
    payload = draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "sub": st.one_of(st.just(SUB), json_values),
                    "aud": st.one_of(st.just(AUD), json_values),
                    "exp": json_values,
                    "nbf": json_values,
                    "iat": json_values,
                    "kubernetes.io": json_values,
                },
            ),
        )
    )
    if choice == 2:
        return (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{b64url(b'sig')}"
        )
    if choice == 3:
        return f"{b64url(draw(st.binary(max_size=60)))}.{b64url(draw(st.binary(max_size=60)))}.c2ln"
    key = SIGNER
    token = key.token(claims(SUB, AUD) | (payload if isinstance(payload, dict) else {}), headers=None)
    chars = list(token)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(chars) - 1))
        chars[i] = draw(st.sampled_from(list("AZaz09-_.=")))
    return "".join(chars)


SIGNER = SigningKey("key-1", "ES256")


# --- in process: Signer.sign, the code the servicer runs -------------------------------------


def defined_outcome(signer, request: SignRequest) -> None:
    """Sign and accept only a certificate or the design §3 refusals; anything else fails."""
    from datetime import UTC, datetime

    try:
        result = signer.sign(request, datetime.now(UTC))
    except (InvalidRequest, PermissionDenied) as e:
        assert status_for(e) in DEFINED
        return
    except CAError as e:  # Unavailable / FailedPrecondition cannot happen here: backends are local
        pytest.fail(f"undefined outcome {type(e).__name__}: {e}")
    assert result.spiffe_id.app_id == request.app_id


@fuzz_settings("signer_fields")
@given(app_id=hostile_text, namespace=hostile_text, trust_domain=trust_domains, validator=st.integers(-3, 5))
def test_signer_request_fields(insecure_ca, app_id, namespace, trust_domain, validator):
    request = SignRequest(app_id, namespace, GOOD_CSR, trust_domain=trust_domain, token_validator=validator)
    defined_outcome(insecure_ca.ca.signer, request)


@fuzz_settings("signer_csr_bytes")
@given(csr=mutated_csr())
def test_signer_csr_bytes(insecure_ca, csr):
    defined_outcome(insecure_ca.ca.signer, SignRequest("orders", "prod", csr, token_validator=INSECURE))


@fuzz_settings("signer_jwks_tokens")
@given(token=hostile_token())
def test_signer_jwks_tokens(jwks_signer, token):
    request = SignRequest("orders", "prod", GOOD_CSR, token=token, token_validator=JWKS)
    defined_outcome(jwks_signer, request)


@pytest.fixture(scope="module")
def jwks_signer(tmp_path_factory):
    """A Signer with the JWKS validator (inline key set holding SIGNER's key)."""
    from adapters.jwks_source import JwksCache
    from ca_core.service import Signer, SigningPolicy
    from ca_core.validators import TokenValidatorKind
    from ca_core.validators.jwks import JwksValidator

    from support.pki import make_bundle

    policy = SigningPolicy()
    validator = JwksValidator(
        JwksCache.from_settings(JwksSettings(json.dumps(jwks(SIGNER)))), policy.ca_identity
    )
    from datetime import UTC, datetime

    return Signer(make_bundle(datetime.now(UTC)), policy, {TokenValidatorKind.JWKS: validator})


@fuzz_settings("signer_issuer_rule_tokens")
@given(token=hostile_token())
def test_signer_issuer_rule_tokens(issuer_rule_signer, token):
    """The same tokens through a JWKS issuer rule (design §6.5) whose iss they carry, mapping
    namespace and app id from claims of any shape."""
    request = SignRequest("orders", "prod", GOOD_CSR, token=token, token_validator=JWKS)
    defined_outcome(issuer_rule_signer, request)


@pytest.fixture(scope="module")
def issuer_rule_signer():
    from datetime import UTC, datetime

    from ca_core.config import load_config
    from ca_core.service import Signer, SigningPolicy
    from ca_core.validators import TokenValidatorKind
    from handlers.composition import build_validators

    from support.pki import make_bundle

    text = f"""
spec:
  mtls:
    tokenValidators:
      - name: jwks
        options:
          issuers:
            - name: fuzz
              issuer: https://issuer.test
              source: '{json.dumps(jwks(SIGNER))}'
              audiences: ["{AUD}"]
              namespace: "ns-{{/kubernetes.io/namespace}}"
              appId: "{{/kubernetes.io/serviceaccount/name}}"
"""
    cfg = load_config({"config": "c.yaml", "mode": "standalone"}, {}, {"c.yaml": text}.__getitem__)
    validators, _ = build_validators(cfg)
    policy = SigningPolicy()
    return Signer(
        make_bundle(datetime.now(UTC)), policy, {TokenValidatorKind.JWKS: validators[TokenValidatorKind.JWKS]}
    )


@fuzz_settings("kubernetes_pod_claim")
@given(token=hostile_token())
def test_kubernetes_pod_claim_parser(token):
    try:
        name = pod_name_claim(token)
    except PermissionDenied as e:
        assert e.reason == "pod_claim_missing"
        return
    assert isinstance(name, str) and name


# --- through the real gRPC server over TLS ------------------------------------------------------


@fuzz_settings("grpc_fields")
@given(
    app_id=hostile_text,
    namespace=hostile_text,
    trust_domain=trust_domains,
    validator=st.integers(0, 2**31 - 1),
    audiences=st.lists(hostile_text, max_size=3),
)
def test_grpc_request_fields(insecure_ca, app_id, namespace, trust_domain, validator, audiences):
    code = insecure_ca.call(
        id=app_id,
        namespace=namespace,
        trust_domain=trust_domain,
        certificate_signing_request=GOOD_CSR,
        token_validator=validator,
        jwt_audiences=audiences,
    )
    assert code in DEFINED


@fuzz_settings("grpc_raw_messages")
@given(
    body=st.one_of(
        st.binary(max_size=400),
        # a valid message with bytes spliced in: wrong wire types, bad UTF-8, bad lengths
        st.builds(
            lambda i, junk: GOOD_MESSAGE[:i] + junk + GOOD_MESSAGE[i:],
            st.integers(0, 40),
            st.binary(min_size=1, max_size=20),
        ),
    )
)
def test_grpc_raw_messages(insecure_ca, body):
    assert insecure_ca.call_raw(body) in DEFINED


GOOD_MESSAGE = sentry_pb2.SignCertificateRequest(
    id="orders", namespace="prod", certificate_signing_request=GOOD_CSR, token_validator=INSECURE
).SerializeToString()


@fuzz_settings("grpc_csr_bytes")
@given(csr=mutated_csr())
def test_grpc_csr_bytes(insecure_ca, csr):
    code = insecure_ca.call(id="orders", namespace="prod", certificate_signing_request=csr, token_validator=1)
    # the CSR's bytes get INVALID_ARGUMENT; an empty field is a common check (PERMISSION_DENIED)
    want = grpc.StatusCode.PERMISSION_DENIED if not csr else grpc.StatusCode.INVALID_ARGUMENT
    assert code in {grpc.StatusCode.OK, want}


@fuzz_settings("grpc_tokens")
@given(token=hostile_token(), validator=st.sampled_from([JWKS, KUBERNETES]), authenticated=st.booleans())
def test_grpc_tokens(idp_ca, token, validator, authenticated):
    if authenticated:  # the TokenReview vouches for it: the pod claim parser and pod lookup run
        idp_ca.cluster.reviews.tokens[token] = "system:serviceaccount:prod:default"
    code = idp_ca.call(
        id="orders",
        namespace="prod",
        certificate_signing_request=GOOD_CSR,
        token=token,
        token_validator=validator,
    )
    assert code in DEFINED


def test_servers_still_serve_after_everything(insecure_ca, idp_ca, idp_key):
    insecure_ca.still_serving()
    assert signs_a_good_token(idp_ca, idp_key)


# --- defects the cases above found, pinned ----------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"\x0a\x02\xff\xfe", b"\xff\xff\xff", b"\x2a\x05ab"], ids=["utf8", "junk", "short"]
)
def test_an_undecodable_message_is_invalid_argument_not_internal(insecure_ca, body):
    # gRPC answers INTERNAL "Exception deserializing request" by default
    with pytest.raises(grpc.RpcError) as e:
        insecure_ca.raw(body, timeout=20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid SignCertificateRequest" in e.value.details()


def test_a_refusal_quoting_a_huge_kid_keeps_its_status(idp_ca):
    # the JWKS refusal quoted a 30 kB kid; the grpc-message trailer then exceeded the client's
    # metadata limit and the client saw RESOURCE_EXHAUSTED instead of PERMISSION_DENIED
    token = SigningKey("k" * 30_000, "ES256").token(claims(SUB, AUD))
    code = idp_ca.call(
        id="orders", namespace="prod", certificate_signing_request=GOOD_CSR, token=token, token_validator=JWKS
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_status_messages_are_bounded():
    from handlers.grpc_service import MAX_DETAILS, bounded

    assert bounded("short") == "short"
    long = bounded("x" * 100_000)
    assert len(long) <= MAX_DETAILS and long.endswith("(100000 chars)")


def test_a_deeply_nested_pod_claim_is_permission_denied():
    payload = b64url(b'{"a":' * 5000 + b"1" + b"}" * 5000)
    with pytest.raises(PermissionDenied):
        pod_name_claim(f"{b64url(b'{}')}.{payload}.c2ln")
