"""The OIDC discovery server (design §9.9) over TLS on loopback, read by real clients: PyJWT's
PyJWKClient fetches the JWKS the discovery document names and verifies a token signed with the
test key; http.client checks every status, the Host rules, the methods and the headers; raw
sockets play slow and hostile clients."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from dataclasses import replace

import jwt
import pytest

from ca_core.errors import CAError, ConfigError
from handlers import oidc_server
from handlers.oidc_server import OidcServer, OidcSettings

from support.jwks_server import SigningKey, claims, jwks, self_signed_tls
from support.wait import wait_until


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """(ca.pem, server.pem, server.key) for localhost / 127.0.0.1."""
    return self_signed_tls(tmp_path_factory.mktemp("oidc-tls"))


@pytest.fixture(scope="module")
def keys():
    return [SigningKey("rsa-1", "RS256"), SigningKey("ec-1", "ES256")]


def settings(tls, **changes) -> OidcSettings:
    _, cert, key = tls
    base = OidcSettings("127.0.0.1", 0, str(cert), str(key), None, (), None, None)
    return replace(base, **changes)


class Served:
    """A started OidcServer whose JWKS document the test sets (``document``: bytes or None)."""

    def __init__(self, tls, **changes) -> None:
        self.document: bytes | None = None
        self.ca_pem = tls[0]
        self.server = OidcServer(settings(tls, **changes), lambda: self.document).start()

    @property
    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def url(self, path: str) -> str:
        return f"https://localhost:{self.server.port}{path}"

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
        """(status, headers as a dict, body) of one request over TLS."""
        conn = http.client.HTTPSConnection("localhost", self.server.port, context=self.context, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()


@pytest.fixture
def served(tls, keys):
    s = Served(tls)
    s.document = json.dumps(jwks(*keys)).encode()
    yield s
    s.server.stop()


def test_a_real_oidc_client_discovers_the_jwks_and_verifies_a_token(tls, keys):
    s = Served(tls, path_prefix="/oidc/")
    s.document = json.dumps(jwks(*keys)).encode()
    try:
        status, _, body = s.request("GET", "/oidc/.well-known/openid-configuration")
        assert status == 200
        doc = json.loads(body)
        origin = f"https://localhost:{s.server.port}"
        # no issuer configured: the request's origin and the prefix, as a verifier finds it again
        assert doc["issuer"] == origin + "/oidc"
        assert doc["jwks_uri"] == origin + "/oidc/jwks.json"
        assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
        assert doc["response_types_supported"] == ["id_token"]
        assert doc["subject_types_supported"] == ["public"]
        client = jwt.PyJWKClient(doc["jwks_uri"], cache_keys=False, ssl_context=s.context)
        for key in keys:
            token = key.token(claims("spiffe://public/ns/default/app", "aws", iss=doc["issuer"]))
            signing = client.get_signing_key_from_jwt(token)
            decoded = jwt.decode(
                token, signing.key, algorithms=[key.alg], audience="aws", issuer=doc["issuer"]
            )
            assert decoded["sub"] == "spiffe://public/ns/default/app"
        # a key the JWKS does not hold is refused by the client
        stranger = SigningKey("other", "RS256")
        with pytest.raises(jwt.PyJWKClientError):
            client.get_signing_key_from_jwt(stranger.token(claims("spiffe://x/y", "aws")))
        # a token signed by another key under a served kid does not verify
        forged = SigningKey("rsa-1", "RS256").token(claims("spiffe://x/y", "aws"))
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(
                forged, client.get_signing_key_from_jwt(forged).key, algorithms=["RS256"], audience="aws"
            )
    finally:
        s.server.stop()


def test_the_configured_issuer_and_jwks_uri_are_stated(tls, keys):
    s = Served(tls, issuer="https://oidc.example.com/dapr", jwks_uri="https://keys.example.com/jwks.json")
    s.document = json.dumps(jwks(*keys)).encode()
    try:
        _, _, body = s.request("GET", "/.well-known/openid-configuration")
        doc = json.loads(body)
        assert doc["issuer"] == "https://oidc.example.com/dapr"
        assert doc["jwks_uri"] == "https://keys.example.com/jwks.json"
        s.server.reconfigure(replace(s.server.settings, jwks_uri=None))
        doc = json.loads(s.request("GET", "/.well-known/openid-configuration")[2])
        assert doc["jwks_uri"] == "https://oidc.example.com/jwks.json"  # the issuer's origin
    finally:
        s.server.stop()


def test_documents_carry_the_cache_and_type_headers_and_the_stored_jwks(served):
    for path in ("/jwks.json", "/.well-known/openid-configuration"):
        status, headers, body = served.request("GET", path + "?x=1")
        assert status == 200
        assert headers["Cache-Control"] == "public, max-age=3600"
        assert headers["Content-Type"] == "application/json"
        assert int(headers["Content-Length"]) == len(body)
        assert headers["Connection"] == "close"
    assert served.request("GET", "/jwks.json")[2] == served.document  # as stored, byte for byte
    head = served.request("HEAD", "/jwks.json")
    assert head[0] == 200 and head[2] == b"" and int(head[1]["Content-Length"]) == len(served.document)


def test_a_changed_jwks_is_served_from_the_next_request(served, keys):
    served.document = json.dumps(jwks(keys[1])).encode()
    assert [k["kid"] for k in json.loads(served.request("GET", "/jwks.json")[2])["keys"]] == ["ec-1"]
    doc = json.loads(served.request("GET", "/.well-known/openid-configuration")[2])
    assert doc["id_token_signing_alg_values_supported"] == ["ES256"]


def test_no_jwks_is_404_on_both_paths(served):
    served.document = None
    for path in ("/jwks.json", "/.well-known/openid-configuration"):
        status, headers, _ = served.request("GET", path)
        assert status == 404
        assert "Cache-Control" not in headers


def test_other_paths_are_404(served):
    for path in ("/", "/jwks", "/oidc/jwks.json", "/.well-known/openid-configuration/x"):
        assert served.request("GET", path)[0] == 404
    with _tls_socket(served) as conn:  # raw: http.client reads no body after HEAD anyway
        conn.sendall(b"HEAD /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ") and answer.endswith(b"\r\n\r\n")  # headers only
    assert b"Content-Length: 10\r\n" in answer  # the GET's "not found\n"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(served, method):
    status, headers, _ = served.request(method, "/jwks.json", body=b"{}")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_hosts_not_allowed_are_403(tls, keys):
    s = Served(tls, allowed_hosts=("oidc.example.com", "localhost:9443"))
    s.document = json.dumps(jwks(*keys)).encode()
    try:
        assert s.request("GET", "/jwks.json", {"Host": "oidc.example.com"})[0] == 200
        assert s.request("GET", "/jwks.json", {"Host": "OIDC.example.com:8443"})[0] == 200  # port dropped
        assert s.request("GET", "/jwks.json", {"Host": "localhost:9443"})[0] == 200
        for host in ("localhost", "evil.example.com", "oidc.example.com.evil", "a/b", "x@oidc.example.com"):
            status, _, body = s.request("GET", "/jwks.json", {"Host": host})
            assert (status, body) == (403, b"forbidden: host not allowed\n"), host
        # the 403 comes before the method check, as it does before the document
        assert s.request("POST", "/jwks.json", {"Host": "evil.example.com"})[0] == 403
        # behind a proxy: X-Forwarded-Host is the host checked, and the one the issuer names
        forwarded = {"Host": "10.0.0.7:9080", "X-Forwarded-Host": "oidc.example.com"}
        status, _, body = s.request("GET", "/.well-known/openid-configuration", forwarded)
        assert status == 200
        assert json.loads(body)["issuer"] == "https://oidc.example.com"
        assert (
            s.request("GET", "/jwks.json", {"Host": "oidc.example.com", "X-Forwarded-Host": "evil"})[0] == 403
        )
        # a malformed Host is refused even when the forwarded one is allowed
        assert (
            s.request("GET", "/jwks.json", {"Host": "a/b", "X-Forwarded-Host": "oidc.example.com"})[0] == 403
        )
    finally:
        s.server.stop()


def test_any_host_list_never_lets_a_forwarded_host_name_the_issuer(tls, keys):
    s = Served(tls, allowed_hosts=("*",))
    s.document = json.dumps(jwks(*keys)).encode()
    try:
        headers = {"Host": "localhost", "X-Forwarded-Host": "attacker.example"}
        doc = json.loads(s.request("GET", "/.well-known/openid-configuration", headers)[2])
        assert doc["issuer"] == "https://localhost"
    finally:
        s.server.stop()


def test_a_jwks_with_private_key_material_is_never_served(served, keys):
    from jwt.algorithms import RSAAlgorithm

    leaked = RSAAlgorithm.to_jwk(keys[0].key, as_dict=True)
    served.document = json.dumps({"keys": [leaked]}).encode()
    for path in ("/jwks.json", "/.well-known/openid-configuration"):
        status, _, body = served.request("GET", path)
        assert status == 500 and b'"d"' not in body


def test_tls_is_required_on_a_tls_server(served):
    with socket.create_connection(("127.0.0.1", served.server.port), timeout=10) as raw:
        raw.sendall(b"GET /jwks.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert not raw.recv(4096).startswith(b"HTTP/")


def test_plain_http_when_tls_is_off(tls, keys):
    server = OidcServer(settings(tls, tls_cert_file=None, tls_key_file=None), lambda: b'{"keys":[]}').start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/.well-known/openid-configuration", headers={"Host": "oidc.internal:9080"})
        doc = json.loads(conn.getresponse().read())
        assert doc["issuer"] == "http://oidc.internal:9080"
        assert doc["jwks_uri"] == "http://oidc.internal:9080/jwks.json"
    finally:
        server.stop()


def test_unreadable_tls_files_and_a_taken_port_fail_the_start(tls, tmp_path):
    with pytest.raises(ConfigError, match="cannot load the OIDC server's TLS certificate"):
        OidcServer(settings(tls, tls_cert_file=str(tmp_path / "missing.pem")), lambda: None).start()
    first = OidcServer(settings(tls), lambda: None).start()
    try:
        with pytest.raises(CAError, match=r"cannot listen on 127\.0\.0\.1"):
            OidcServer(settings(tls, port=first.port), lambda: None).start()
    finally:
        first.stop()


def test_a_renewed_certificate_is_served_from_the_next_handshake(tmp_path, monkeypatch):
    """The TLS files are looked at again (every RELOAD_CHECK seconds; 0 here) at a handshake: a
    renewed pair is served, a pair that does not load keeps the previous one."""
    first = self_signed_tls(tmp_path / "first")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first[1].read_bytes())
    key.write_bytes(first[2].read_bytes())
    server = OidcServer(settings((first[0], cert, key)), lambda: b'{"keys":[]}').start()

    def handshake(ca_pem) -> None:
        context = ssl.create_default_context(cafile=str(ca_pem))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            context.wrap_socket(raw, server_hostname="localhost").close()

    try:
        monkeypatch.setattr(oidc_server, "RELOAD_CHECK", 0.0)
        handshake(first[0])
        renewed = self_signed_tls(tmp_path / "renewed")
        key.write_bytes(b"half written")  # a torn renewal: refused, the first pair stays
        cert.write_bytes(renewed[1].read_bytes())
        handshake(first[0])
        key.write_bytes(renewed[2].read_bytes())
        os.utime(key, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new stamp, whatever the clock
        handshake(renewed[0])
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(first[0])
    finally:
        server.stop()


def _tls_socket(served, timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", served.server.port), timeout=timeout)
    return served.context.wrap_socket(raw, server_hostname="localhost")


def test_malformed_and_oversized_requests_are_answered_and_closed(served):
    with _tls_socket(served) as conn:
        conn.sendall(b"HELLO\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 400 ")
    with _tls_socket(served) as conn:
        conn.sendall(b"GET /jwks.json HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * (32 * 1024))
        assert conn.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_slow_clients_do_not_block_others_and_are_cut_off(served, monkeypatch):
    monkeypatch.setattr(oidc_server, "REQUEST_TIMEOUT", 1.0)
    idle_tcp = [socket.create_connection(("127.0.0.1", served.server.port)) for _ in range(20)]  # no TLS
    trickling = []
    for _ in range(20):  # TLS done, the request head never finished
        conn = _tls_socket(served)
        conn.sendall(b"GET /jwks.json HTTP/1.1\r\nHost: loc")
        trickling.append(conn)
    try:
        status, _, body = served.request("GET", "/jwks.json")
        assert status == 200 and body == served.document
        for conn in trickling:  # closed by the server once the head is overdue
            assert conn.recv(4096) == b""
    finally:
        for s in idle_tcp + trickling:
            s.close()


def test_beyond_the_connection_cap_new_connections_are_closed(served, monkeypatch):
    monkeypatch.setattr(oidc_server, "MAX_CONNECTIONS", 2)
    held = [_tls_socket(served) for _ in range(2)]
    try:
        wait_until(lambda: served.server._open == 2, "two connections held", timeout=10)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, ssl.SSLError)):
            served.request("GET", "/jwks.json")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: served.server._open == 0, "the held connections closed", timeout=10)
    assert served.request("GET", "/jwks.json")[0] == 200


def test_stop_closes_the_port(tls):
    server = OidcServer(settings(tls), lambda: None).start()
    port = server.port
    server.stop()
    server.stop()  # idempotent
    deadline = time.monotonic() + 5
    with pytest.raises(ConnectionRefusedError):
        while time.monotonic() < deadline:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.05)


# -- with the CA: opened, reconfigured, handed over and closed with its listeners -----------------


def test_the_ca_serves_oidc_discovery_and_hands_it_over(tls, store_dir, tmp_path):
    import sentryca_client as client
    from handlers.server import CertificateAuthority
    from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

    from support.ca import ca_config
    from support.pki import make_csr

    ca_pem, cert, key = tls
    flags = {
        "jwt_enabled": "true",
        "oidc_enabled": "true",
        "oidc_server_listen_address": "127.0.0.1",
        "oidc_server_listen_port": "0",
        "oidc_server_tls_cert_file": str(cert),
        "oidc_server_tls_key_file": str(key),
    }
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, **flags))
    try:
        port = ca.oidc_port
        # a JWT-SVID the CA issued over the wire, verified with the JWKS its discovery server states
        with client.channel(f"localhost:{ca.grpc_port}", (store_dir / "ca.crt").read_bytes()) as chan:
            request = sentry_pb2.SignCertificateRequest(
                id="orders", namespace="prod", certificate_signing_request=make_csr(), jwt_audiences=["aws"]
            )
            answer = sentry_pb2_grpc.CAStub(chan).SignCertificate(request, timeout=10)
        context = ssl.create_default_context(cafile=str(ca_pem))
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        conn.request("GET", "/.well-known/openid-configuration")
        discovery = json.loads(conn.getresponse().read())
        conn.close()
        assert discovery["jwks_uri"] == f"https://localhost:{port}/jwks.json"
        jwk_client = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False, ssl_context=context)
        token = answer.per_audience_jwts["aws"].value
        signing_key = jwk_client.get_signing_key_from_jwt(token)
        assert signing_key.key_id == jwt.get_unverified_header(token)["kid"]
        verified = jwt.decode(token, signing_key.key, algorithms=["RS256"], audience="aws")
        assert verified["sub"] == "spiffe://public/ns/prod/orders"
        assert json.loads((store_dir / "jwks.json").read_bytes())["keys"][0]["kid"] == signing_key.key_id

        def get(path: str, host: str = "localhost") -> int:
            conn = http.client.HTTPSConnection("localhost", ca.oidc_port, context=context, timeout=10)
            conn.request("GET", path, headers={"Host": host})
            return conn.getresponse().status

        # hosts and prefix change in place: the same server, the same port
        ca.restart(
            ca_config(store_dir, **flags, oidc_allowed_hosts="oidc.example.com", oidc_path_prefix="/o")
        )
        assert ca.oidc_port == port
        assert get("/o/jwks.json", "oidc.example.com") == 200
        assert get("/o/jwks.json", "localhost") == 403
        assert get("/jwks.json", "oidc.example.com") == 404
        # new TLS files: a new server opened first, then the old one closed
        other = self_signed_tls(tmp_path / "other")
        moved = flags | {
            "oidc_server_tls_cert_file": str(other[1]),
            "oidc_server_tls_key_file": str(other[2]),
        }
        ca.restart(ca_config(store_dir, **moved))
        assert ca.oidc_port not in (None, port)
        context = ssl.create_default_context(cafile=str(other[0]))
        assert get("/jwks.json") == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # switched off: the port closes; the gRPC server kept serving throughout
        grpc_port = ca.grpc_port
        ca.restart(ca_config(store_dir, jwt_enabled="true", oidc_enabled="false"))
        assert ca.oidc_port is None and ca.grpc_port == grpc_port
    finally:
        ca.stop(grace=0)
    assert ca.oidc_port is None


def test_oidc_settings_are_validated_as_dapr_requires(store_dir):
    from support.ca import ca_config

    with pytest.raises(ConfigError, match="--oidc-enabled needs --jwt-enabled"):
        ca_config(store_dir, oidc_enabled="true", oidc_server_tls_enabled="false")
    with pytest.raises(ConfigError, match="--oidc-server-tls-cert-file is required with --oidc-enabled"):
        ca_config(store_dir, jwt_enabled="true", oidc_enabled="true")
    cfg = ca_config(store_dir, jwt_enabled="true", oidc_enabled="true", oidc_server_tls_enabled="false")
    assert (cfg.oidc_server_listen_address, cfg.oidc_server_listen_port) == ("localhost", 9080)
    for flags, message in (
        ({"oidc_server_tls_cert_file": "c.pem"}, "go together"),
        ({"oidc_jwks_uri": "ftp://x/jwks.json"}, "--oidc-jwks-uri"),
        ({"oidc_jwks_uri": "https://x/jwks.json?a=b"}, "no query or fragment"),
        ({"oidc_path_prefix": "oidc"}, "must start with '/'"),
        ({"oidc_path_prefix": "/a/../b"}, "'..'"),
        ({"oidc_allowed_hosts": "a/b"}, "not a host name"),
    ):
        with pytest.raises(ConfigError, match=message):
            ca_config(store_dir, **flags)
