"""JWKS validator (design §6): real keys, real JWTs, the key set served over HTTPS on loopback
and trusted through ``caCertificate``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta

import pytest

from adapters.jwks_source import JwksCache
from ca_core.config import JwksSettings
from ca_core.errors import ConfigError, PermissionDenied, Unavailable
from ca_core.spiffe_id import SpiffeId
from ca_core.validators import SignRequest
from ca_core.validators.jwks import JwksValidator, parse_key_set

from support.jwks_server import JwksServer as _JwksServer
from support.jwks_server import SigningKey, claims, jwks
from support.pki import make_csr
from support.wait import wait_until

CA_ID = SpiffeId("localhost", "default", "dapr-sentry")
AUD = str(CA_ID)
SUB = "spiffe://public/ns/prod/orders"


class Clock:
    """Monotonic seconds that tests move by hand (the refresh interval is a rule, not a wait)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def key():
    return SigningKey("key-1", "ES256")


@pytest.fixture
def server(tmp_path, key):
    s = _JwksServer(tmp_path / "tls", jwks(key)).start()
    yield s
    s.stop()


@pytest.fixture
def clock():
    return Clock()


def https_validator(server, clock, *, min_refresh="1m", timeout="5s") -> JwksValidator:
    settings = JwksSettings(
        server.url,
        str(server.ca_pem),
        timedelta(seconds=_secs(min_refresh)),
        timedelta(seconds=_secs(timeout)),
    )
    return JwksValidator(JwksCache.from_settings(settings, clock), CA_ID)


def _secs(text: str) -> float:
    return float(text[:-1]) * (60 if text.endswith("m") else 1)


@pytest.fixture
def validator(server, clock):
    return https_validator(server, clock)


def req(token: str, app_id: str = "orders", ns: str = "prod", trust_domain: str = "") -> SignRequest:
    return SignRequest(app_id, ns, make_csr(), trust_domain=trust_domain, token=token, token_validator=3)


def denied(validator, request, reason: str) -> str:
    with pytest.raises(PermissionDenied) as e:
        validator.validate(request)
    assert e.value.reason == reason, str(e.value)
    return str(e.value)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"])
def test_success_with_each_algorithm(tmp_path, clock, alg):
    k = SigningKey(f"kid-{alg}", alg)
    s = _JwksServer(tmp_path / "tls", jwks(k)).start()
    try:
        v = https_validator(s, clock)
        identity = v.validate(req(k.token(claims(SUB, [AUD, "other"]))))
        assert str(identity.spiffe_id) == SUB
    finally:
        s.stop()


def test_success_with_a_requested_trust_domain(validator, key):
    token = key.token(claims("spiffe://example.org/ns/prod/orders", AUD))
    assert str(validator.validate(req(token, trust_domain="example.org")).spiffe_id) == (
        "spiffe://example.org/ns/prod/orders"
    )


def test_wrong_audience(validator, key):
    denied(validator, req(key.token(claims(SUB, "spiffe://localhost/ns/default/other"))), "token_audience")


def test_missing_audience(validator, key):
    c = claims(SUB, AUD)
    del c["aud"]
    assert "aud" in denied(validator, req(key.token(c)), "token_claims")


def test_wrong_subject_names_expected_and_received(validator, key):
    message = denied(
        validator, req(key.token(claims("spiffe://public/ns/prod/payments", AUD))), "token_subject"
    )
    assert SUB in message and "payments" in message
    # the subject is checked against the requested trust domain
    denied(validator, req(key.token(claims(SUB, AUD)), trust_domain="example.org"), "token_subject")


def test_expired_beyond_the_leeway(validator, key):
    now = time.time()
    denied(validator, req(key.token(claims(SUB, AUD, now=now - 3600, exp=int(now) - 301))), "token_expired")
    # within the 5 minutes leeway
    validator.validate(req(key.token(claims(SUB, AUD, now=now - 3600, exp=int(now) - 200))))


def test_missing_exp_is_refused(validator, key):
    c = claims(SUB, AUD)
    del c["exp"]
    denied(validator, req(key.token(c)), "token_claims")


def test_nbf_an_hour_ahead(validator, key):
    now = time.time()
    denied(validator, req(key.token(claims(SUB, AUD, nbf=int(now) + 3600))), "token_not_yet_valid")
    validator.validate(req(key.token(claims(SUB, AUD, nbf=int(now) + 200))))  # within the leeway


def test_iat_in_the_future(validator, key):
    denied(validator, req(key.token(claims(SUB, AUD, iat=int(time.time()) + 3600))), "token_not_yet_valid")


def test_signed_by_a_key_not_in_the_set(validator):
    stranger = SigningKey("key-1", "ES256")  # same kid, different key
    denied(validator, req(stranger.token(claims(SUB, AUD))), "token_signature")
    other_kid = SigningKey("key-x", "ES256")
    denied(validator, req(other_kid.token(claims(SUB, AUD))), "token_key_unknown")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict, payload: dict, sign) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def test_alg_none_is_refused(validator):
    token = _raw_token({"alg": "none", "kid": "key-1"}, claims(SUB, AUD), lambda _: b"")
    denied(validator, req(token), "token_algorithm")


@pytest.mark.parametrize("alg", [["ES256"], {"ES256": 1}, 256, None])
def test_alg_that_is_not_a_string_is_refused_not_a_crash(validator, alg):
    # found by tests/e2e/test_fuzz.py: a list or object alg was looked up in a dict (TypeError → INTERNAL)
    token = _raw_token({"alg": alg, "kid": "key-1"}, claims(SUB, AUD), lambda _: b"x")
    denied(validator, req(token), "token_algorithm")


def test_hs256_signed_with_the_public_key_bytes_is_refused(validator, key):
    # the classic algorithm-confusion attack: HMAC keyed with the (public) verification key
    secret = key.public_pem()
    token = _raw_token(
        {"alg": "HS256", "kid": "key-1", "typ": "JWT"},
        claims(SUB, AUD),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    denied(validator, req(token), "token_algorithm")


def test_alg_not_matching_the_key_type_is_refused(validator, key):
    rsa_key = SigningKey("key-1", "RS256")  # kid of the EC key, RSA algorithm
    denied(validator, req(rsa_key.token(claims(SUB, AUD))), "token_key_unknown")


def test_empty_and_malformed_tokens(validator):
    denied(validator, req(""), "token_missing")
    denied(validator, req("not-a-jwt"), "token_malformed")


def test_common_checks_apply(validator, key):
    denied(validator, req(key.token(claims(SUB, AUD)), app_id="bad.id"), "invalid_identity")
    denied(validator, req(key.token(claims(SUB, AUD)), trust_domain="Bad Domain"), "invalid_identity")


def test_key_rotation_new_kid_passes_after_one_rate_limited_refresh(server, validator, clock, key):
    validator.validate(req(key.token(claims(SUB, AUD))))
    assert server.fetches == 1
    new = SigningKey("key-2", "EdDSA")
    server.document = jwks(key, new)
    clock.t += 61  # past the minimum interval: the unknown kid triggers one refresh
    assert str(validator.validate(req(new.token(claims(SUB, AUD)))).spiffe_id) == SUB
    assert server.fetches == 2
    validator.validate(req(new.token(claims(SUB, AUD))))
    validator.validate(req(key.token(claims(SUB, AUD))))
    assert server.fetches == 2  # known kids need no fetch


def test_unknown_kids_do_not_refetch_within_the_minimum_interval(server, validator, clock, key):
    validator.validate(req(key.token(claims(SUB, AUD))))
    newer = SigningKey("key-3", "ES256")
    server.document = jwks(key, newer)
    clock.t += 10  # within the minimum interval (1m)
    for _ in range(5):
        denied(validator, req(newer.token(claims(SUB, AUD))), "token_key_unknown")
    assert server.fetches == 1
    clock.t += 60
    validator.validate(req(newer.token(claims(SUB, AUD))))
    assert server.fetches == 2


def test_stale_set_is_refreshed_and_a_failed_refresh_keeps_the_keys(server, validator, clock, key):
    validator.validate(req(key.token(claims(SUB, AUD))))
    server.status = 503
    clock.t += 120  # stale: a refresh is tried and fails; the held key stays in use
    validator.validate(req(key.token(claims(SUB, AUD))))
    assert server.fetches == 2
    clock.t += 30  # the failing source is not retried before the minimum interval
    validator.validate(req(key.token(claims(SUB, AUD))))
    assert server.fetches == 2


def test_jwks_server_down_without_keys_is_unavailable(server, clock, key):
    v = https_validator(server, clock)
    server.stop()
    with pytest.raises(Unavailable) as e:
        v.validate(req(key.token(claims(SUB, AUD))))
    assert e.value.reason == "jwks_unavailable"
    assert v.ready()[0] is False


def test_jwks_error_status_without_keys_is_unavailable(server, validator, key):
    server.status = 500
    with pytest.raises(Unavailable, match="500"):
        validator.validate(req(key.token(claims(SUB, AUD))))


def test_untrusted_server_certificate_is_unavailable(server, clock, key):
    settings = JwksSettings(server.url)  # the system trust store does not know the test CA
    v = JwksValidator(JwksCache.from_settings(settings, clock), CA_ID)
    with pytest.raises(Unavailable, match="unreachable"):
        v.validate(req(key.token(claims(SUB, AUD))))


def test_ready_once_keys_are_held(server, validator):
    assert validator.ready() == (True, f"1 JWKS key(s) from {server.url}")


def test_file_and_inline_sources(tmp_path, clock, key):
    f = tmp_path / "jwks.json"
    f.write_text(json.dumps(jwks(key)))
    token = key.token(claims(SUB, AUD))
    for source in (str(f), json.dumps(jwks(key)), base64.b64encode(json.dumps(jwks(key)).encode()).decode()):
        v = JwksValidator(JwksCache.from_settings(JwksSettings(source), clock), CA_ID)
        assert str(v.validate(req(token)).spiffe_id) == SUB


def test_symmetric_keys_in_the_set_are_never_used(tmp_path, clock):
    secret = b"s" * 32
    doc = {"keys": [{"kty": "oct", "kid": "h", "k": _b64(secret)}, SigningKey("e", "ES256").jwk]}
    v = JwksValidator(JwksCache.from_settings(JwksSettings(json.dumps(doc)), clock), CA_ID)
    token = _raw_token(
        {"alg": "HS256", "kid": "h"}, claims(SUB, AUD), lambda d: hmac.new(secret, d, hashlib.sha256).digest()
    )
    denied(v, req(token), "token_algorithm")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("http://127.0.0.1:1/jwks.json", "http:// is refused"),
        ("/no/such/file.json", "neither an https:// URL"),
        ('{"keys": []}', "no usable signature key"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_sources_are_config_errors(source, words, clock):
    with pytest.raises(ConfigError, match=words):
        JwksValidator(JwksCache.from_settings(JwksSettings(source), clock), CA_ID)


def test_unreadable_ca_certificate_is_a_config_error(clock):
    with pytest.raises(ConfigError, match="caCertificate"):
        JwksValidator(
            JwksCache.from_settings(JwksSettings("https://localhost/jwks", "/no/such/ca.pem"), clock), CA_ID
        )


def test_source_failing_without_keys_is_retried_soon(server, validator, clock, key):
    server.status = 500
    with pytest.raises(Unavailable):
        validator.validate(req(key.token(claims(SUB, AUD))))
    with pytest.raises(Unavailable):
        validator.validate(req(key.token(claims(SUB, AUD))))
    assert server.fetches == 1  # not hammered
    server.status = None
    clock.t += 6  # well within the minimum interval (1m): no keys, so a retry is due
    assert str(validator.validate(req(key.token(claims(SUB, AUD)))).spiffe_id) == SUB


def _settings_for(url: str, server) -> JwksSettings:
    return JwksSettings(url, str(server.ca_pem), timedelta(minutes=1), timedelta(seconds=5))


def test_redirect_to_another_https_url_is_followed(server, clock, key):
    server.redirects["/moved"] = server.url
    v = JwksValidator(
        JwksCache.from_settings(_settings_for(server.url.replace("/jwks.json", "/moved"), server), clock),
        CA_ID,
    )
    sub = "spiffe://public/ns/prod/orders"
    assert v.validate(req(key.token(claims(sub, str(CA_ID))))).spiffe_id.app_id == "orders"


def test_redirect_to_plain_http_is_refused_and_never_fetched(server, clock, key):
    """Keys fetched in plaintext could be anyone's: an https source may not redirect to http."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = json.dumps(jwks(key)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    plain = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        server.redirects["/moved"] = f"http://127.0.0.1:{plain.server_address[1]}/jwks.json"
        v = JwksValidator(
            JwksCache.from_settings(_settings_for(server.url.replace("/jwks.json", "/moved"), server), clock),
            CA_ID,
        )
        with pytest.raises(Unavailable, match="non-https"):
            v.validate(req(key.token(claims("spiffe://public/ns/prod/orders", str(CA_ID)))))
        assert hits == []
    finally:
        plain.shutdown()
        plain.server_close()


def test_iat_within_the_leeway_is_accepted(validator, key):
    sub = "spiffe://public/ns/prod/orders"
    now = time.time()
    token = key.token(claims(sub, str(CA_ID), now=now) | {"iat": int(now) + 200})
    assert validator.validate(req(token)).spiffe_id.app_id == "orders"


# --- one fetch at a time, held keys keep serving, hostile bodies (design §6.3) ---------------------


class Calls:
    """``validate`` of each request, each in its own thread, all let go at once: ``outcomes[i]`` is
    the identity or the exception of request i, ``elapsed[i]`` its seconds."""

    def __init__(self, validator: JwksValidator, requests: list[SignRequest]) -> None:
        self.outcomes: list = [None] * len(requests)
        self.elapsed: list[float] = [0.0] * len(requests)
        self._go = threading.Barrier(len(requests))
        self.threads = [
            threading.Thread(target=self._call, args=(validator, i, r), daemon=True)
            for i, r in enumerate(requests)
        ]
        for t in self.threads:
            t.start()

    def _call(self, validator: JwksValidator, i: int, request: SignRequest) -> None:
        self._go.wait()
        start = time.monotonic()
        try:
            self.outcomes[i] = validator.validate(request)
        except Exception as e:  # noqa: BLE001 - every outcome is collected and asserted on
            self.outcomes[i] = e
        self.elapsed[i] = time.monotonic() - start

    def join(self, timeout: float) -> bool:
        """True when every call has returned within ``timeout`` seconds (from now)."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


@pytest.mark.parametrize(
    ("delay", "timeout", "fetch_time"),
    [(2.0, "10s", 2.0), (3.0, "1s", 1.0)],
    ids=["slow", "slower-than-the-timeout"],
)
def test_concurrent_callers_during_a_slow_jwks_share_one_fetch(tmp_path, key, delay, timeout, fetch_time):
    """32 callers, no key held, every one finding a fetch due (real clock, 1 ms minimum interval):
    the server sees one fetch, and each caller has its answer after about that one fetch."""
    server = _JwksServer(tmp_path / "tls", jwks(key), delay=delay).start()
    try:
        v = https_validator(server, time.monotonic, min_refresh="0.001s", timeout=timeout)
        calls = Calls(v, [req(key.token(claims(SUB, AUD))) for _ in range(32)])
        bound = fetch_time + 5  # generous: one fetch and the 32 verifications
        assert calls.join(bound + 2), f"answered: {sum(not t.is_alive() for t in calls.threads)} of 32"
        assert server.fetches == 1
        assert max(calls.elapsed) < bound, calls.elapsed
        if timeout == "10s":
            assert all(str(o.spiffe_id) == SUB for o in calls.outcomes), calls.outcomes
        else:
            assert all(isinstance(o, Unavailable) for o in calls.outcomes), calls.outcomes
            assert {o.reason for o in calls.outcomes} == {"jwks_unavailable"}
    finally:
        server.stop()


def test_known_kids_are_answered_from_held_keys_while_a_refresh_is_held(server, validator, clock, key):
    """A refresh parked in the server: callers whose kid is held are answered meanwhile; a caller
    with an unknown kid waits for that one fetch (and starts no other)."""
    validator.validate(req(key.token(claims(SUB, AUD))))
    new = SigningKey("key-2", "EdDSA")
    server.document = jwks(key, new)
    gate = server.hold["/jwks.json"] = threading.Event()
    clock.t += 120  # the set is stale, and the minimum interval has passed
    try:
        unknown = Calls(validator, [req(new.token(claims(SUB, AUD))) for _ in range(2)])
        wait_until(lambda: server.parked == 1, "the refresh parked in the server", timeout=30)
        known = Calls(validator, [req(key.token(claims(SUB, AUD))) for _ in range(10)])
        assert known.join(30), "callers with a held kid wait for the refresh"
        assert all(str(o.spiffe_id) == SUB for o in known.outcomes), known.outcomes
        assert not gate.is_set() and all(t.is_alive() for t in unknown.threads)  # still parked
    finally:
        gate.set()
    assert unknown.join(30)
    assert all(str(o.spiffe_id) == SUB for o in unknown.outcomes), unknown.outcomes
    assert server.fetches == 2 and server.parked == 1


DEEP = b'{"keys": ' + b"[" * 1500 + b"]" * 1500 + b"}"


def test_a_deeply_nested_jwks_is_a_refresh_failure_and_held_keys_still_serve(
    server, validator, clock, key, caplog
):
    validator.validate(req(key.token(claims(SUB, AUD))))
    server.body = DEEP
    clock.t += 120  # stale: the refresh fetches the hostile body
    assert str(validator.validate(req(key.token(claims(SUB, AUD)))).spiffe_id) == SUB
    assert server.fetches == 2
    assert "JWKS refresh failed" in caplog.text and "nested too deep" in caplog.text
    assert validator.ready()[0] is True


def test_a_deeply_nested_jwks_without_keys_is_unavailable(server, clock, key):
    server.body = DEEP
    v = https_validator(server, clock)
    with pytest.raises(Unavailable, match="nested too deep") as e:
        v.validate(req(key.token(claims(SUB, AUD))))
    assert e.value.reason == "jwks_unavailable"
    ready, detail = v.ready()
    assert ready is False and "nested too deep" in detail


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b'{"keys": [{"kty": "EC", "kid": ' + b"[" * 1500 + b"]" * 1500 + b"}]}",
        b'{"keys": [' + b"1" * 5000 + b"]}",
        b'{"keys": [{"kty": "RSA", "n": ' + b"9" * 5000 + b', "e": "AQAB"}]}',
        b'{"keys": [{"kty": "RSA", "n": 12345, "e": true}]}',
        b'{"keys": [{"kty": "EC", "crv": 5, "x": [], "y": {}}]}',
        b'{"keys": [{"kty": ["RSA"], "kid": {"a": 1}}, {"kty": {}}, {"kty": "OKP", "crv": null}]}',
        b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "\\ud800", "y": "\\udfff"}]}',
        b'{"keys": [{"kty": "RSA", "alg": [], "use": {}, "n": "AQAB", "e": "AQAB"}]}',
        b'{"keys": [{"kty": "EC", "crv": "P-256", "x": 1e400, "y": NaN}]}',
        b'{"keys": {"kty": "EC"}}',
        b"\xff\xfe\x00{",
        b'{"keys": ["\xff"]}',
        b"",
        b"[]",
        b"null",
    ],
)
def test_hostile_jwks_bodies_are_value_errors(body):
    """parse_key_set refuses every such body with ValueError, the cache's refresh failure."""
    with pytest.raises(ValueError, match=r"^jwks: "):
        parse_key_set(body, "jwks")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("shape", [str, lambda v: v is not None, lambda v: [v], lambda v: {"t": v}])
def test_a_date_claim_that_is_not_a_json_number_is_refused(validator, key, claim, shape):
    c = claims(SUB, AUD)
    value = c.get(claim, c["iat"])
    message = denied(validator, req(key.token(claims(SUB, AUD, **{claim: shape(value)}))), "token_claims")
    assert claim in message and "NumericDate" in message


def test_a_fractional_numeric_date_is_still_accepted(validator, key):
    now = time.time()
    validator.validate(req(key.token(claims(SUB, AUD, iat=now, nbf=now - 0.5, exp=now + 600.25))))
