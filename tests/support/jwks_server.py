"""Real keys, real JWTs and a JWKS served over HTTPS on 127.0.0.1 for the JWKS validator tests."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALG_KEYS = {
    "RS256": lambda: rsa.generate_private_key(65537, 2048),
    "RS384": lambda: rsa.generate_private_key(65537, 2048),
    "RS512": lambda: rsa.generate_private_key(65537, 2048),
    "PS256": lambda: rsa.generate_private_key(65537, 2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ES384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "EdDSA": lambda: ed25519.Ed25519PrivateKey.generate(),
}


@dataclass
class SigningKey:
    """A private key with its kid and algorithm; ``jwk`` is the public JWK (a dict)."""

    kid: str
    alg: str
    key: Any = None

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = ALG_KEYS[self.alg]()

    @property
    def jwk(self) -> dict:
        pub = self.key.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            d = RSAAlgorithm.to_jwk(pub, as_dict=True)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            d = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            d = OKPAlgorithm.to_jwk(pub, as_dict=True)
        return d | {"kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, claims: dict, headers: dict | None = None) -> str:
        return jwt.encode(claims, self.key, algorithm=self.alg, headers={"kid": self.kid} | (headers or {}))


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [k.jwk for k in keys]}


def claims(sub: str, aud: str | list[str], *, now: float | None = None, **overrides: Any) -> dict:
    """Standard claims valid for 10 minutes from ``now`` (default: the real now)."""
    now = time.time() if now is None else now
    return {
        "iss": "https://issuer.test",
        "sub": sub,
        "aud": aud,
        "iat": int(now),
        "exp": int(now) + 600,
    } | overrides


def self_signed_tls(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``names`` (DNS names and IP addresses; default
    localhost/127.0.0.1): (ca.pem, server.pem, server.key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "JWKS test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, cert_pem, key_pem


def _general_name(name: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass
class JwksServer:
    """Serves ``document`` (a JWKS dict) at ``/jwks.json`` over HTTPS on 127.0.0.1.

    ``status``: when set, every request is answered with it instead; ``fetches`` counts requests.
    ``paths``: every path that serves ``document``; ``hold``: path → Event, a request for that
    path waits until the Event is set (at most a minute) before it is answered; ``parked``
    counts requests waiting so. ``delay``: seconds every answer waits (a slow JWKS); ``body``:
    when set, the raw bytes answered instead of ``document`` (a hostile body); ``documents``:
    path → another JSON document served at that path (an OIDC discovery document).
    """

    tls_dir: Path
    document: dict = field(default_factory=lambda: {"keys": []})
    status: int | None = None
    fetches: int = 0
    redirects: dict = field(default_factory=dict)  # path -> Location answered with 302
    paths: tuple = ("/jwks.json",)
    hold: dict = field(default_factory=dict)  # path -> threading.Event
    parked: int = 0
    delay: float = 0.0
    body: bytes | None = None
    documents: dict = field(default_factory=dict)  # path -> a JSON document served there instead

    def start(self) -> JwksServer:
        self.ca_pem, cert, key = self_signed_tls(self.tls_dir)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.fetches += 1
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                gate = server.hold.get(self.path)
                if gate is not None and not gate.is_set():
                    server.parked += 1
                    gate.wait(60)
                if server.delay:
                    time.sleep(server.delay)
                code = server.status or (200 if self.path in (*server.paths, *server.documents) else 404)
                document = server.documents.get(self.path, server.document)
                body = json.dumps(document if code == 200 else {"error": code}).encode()
                if code == 200 and server.body is not None:
                    body = server.body
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return self.url_for("/jwks.json")

    def url_for(self, path: str) -> str:
        return f"https://localhost:{self._httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
