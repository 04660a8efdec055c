"""OpenID Connect discovery for the CA's JWT-SVIDs (design §9.9): the two documents a verifier
reads (``/.well-known/openid-configuration`` and ``/jwks.json``), where they are served, and which
``Host`` may ask for them.

Pure: the JWKS arrives as the bytes stored in the trust bundle (``jwks.json``), the issuer and
the JWKS URL as the caller resolved them. The discovery document holds the fields Dapr's Sentry
serves (a verifier of ID tokens needs no more): ``issuer``, ``jwks_uri``,
``response_types_supported``, ``subject_types_supported``,
``id_token_signing_alg_values_supported``, ``scopes_supported`` and ``claims_supported``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"
# How long a verifier may keep either document (the JWT key rotation publishes a new key at least
# this long before it signs).
MAX_AGE_SECONDS = 3600
CACHE_CONTROL = f"public, max-age={MAX_AGE_SECONDS}"
DEFAULT_ALGORITHM = "RS256"  # what a JWK without ``alg`` is taken to sign with when it is RSA
# Members of a JWK that carry private or symmetric key material (RFC 7518 §6.2.2, §6.3.2, §6.4).
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ALGORITHM_BY_KEY = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("OKP", "Ed25519"): "EdDSA"}


@dataclass(frozen=True)
class Endpoints:
    """The request paths of the two documents under a path prefix."""

    discovery: str
    jwks: str

    @property
    def prefix(self) -> str:
        """The path prefix ('' for none)."""
        return self.jwks[: -len(JWKS_PATH)]


def endpoints(path_prefix: str | None) -> Endpoints:
    """The paths under ``path_prefix`` (``--oidc-path-prefix``): None, '' or '/' → the bare
    paths; a trailing '/' is dropped (``/oidc/`` → ``/oidc/jwks.json``)."""
    prefix = (path_prefix or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return Endpoints(prefix + DISCOVERY_PATH, prefix + JWKS_PATH)


def path_prefix_problem(path_prefix: str) -> str | None:
    """Why ``path_prefix`` cannot prefix the request paths, or None."""
    if path_prefix and not path_prefix.startswith("/"):
        return f"{path_prefix!r} must start with '/'"
    if any(c in path_prefix for c in "?#%\\ ") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in path_prefix):
        return f"{path_prefix!r} must be a plain URL path (no query, fragment, escapes or spaces)"
    if "//" in path_prefix or "/./" in path_prefix + "/" or "/../" in path_prefix + "/":
        return f"{path_prefix!r} must not hold empty, '.' or '..' segments"
    return None


_URL = re.compile(r"(?P<scheme>[a-z]+)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?P<rest>[?#].*)?", re.S)
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")


def url_problem(url: str, *, https_only: bool = True) -> str | None:
    """Why ``url`` is not an absolute URL a verifier can use as an issuer or JWKS location
    (https, a host name or address with an optional port, a plain path, no query, fragment or
    credentials; ``https_only=False`` allows http), or None."""
    m = _URL.fullmatch(url)
    schemes = ("https",) if https_only else ("https", "http")
    if m is None or m["scheme"] not in schemes:
        return f"{url!r} must be an {' or '.join(schemes)} URL"
    if m["rest"] is not None:
        return f"{url!r} must have no query or fragment"
    if "@" in m["authority"]:
        return f"{url!r} must not hold credentials"
    if not _AUTHORITY.fullmatch(m["authority"]):
        return f"{url!r} names no valid host"
    if m["path"] and path_prefix_problem(m["path"].rstrip("/")):
        return f"{url!r} has a path that is not plain (no spaces, escapes, '.' or '..' segments)"
    return None


def public_keys(jwks: bytes) -> list[dict[str, object]]:
    """The keys of the JWKS document ``jwks``. Raises ConfigError when it is not a JWK Set or a
    key holds private or symmetric material (such a document is never served or published)."""
    try:
        doc = json.loads(jwks)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"the JWKS is not JSON: {e}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ConfigError('the JWKS is not a JWK Set (no "keys" array of objects)')
    for key in keys:
        private = PRIVATE_MEMBERS & key.keys()
        if private:
            raise ConfigError(
                f"the JWKS holds private key material ({', '.join(sorted(private))} of key "
                f"{key.get('kid', '?')!r}); refusing to publish it"
            )
    return keys


def signing_algorithms(jwks: bytes) -> tuple[str, ...]:
    """The JWS algorithms the keys of ``jwks`` sign with, in key order without repeats: each
    key's ``alg``, else the one its type implies (RSA → RS256, EC P-256 → ES256, P-384 → ES384,
    Ed25519 → EdDSA); RS256 when none is known. Raises ConfigError as :func:`public_keys`."""
    found: list[str] = []
    for key in public_keys(jwks):
        alg = key.get("alg")
        if not isinstance(alg, str):
            kty, crv = key.get("kty"), key.get("crv")
            alg = DEFAULT_ALGORITHM if kty == "RSA" else _ALGORITHM_BY_KEY.get((str(kty), str(crv)))
        if alg and alg not in found:
            found.append(alg)
    return tuple(found) or (DEFAULT_ALGORITHM,)


def discovery_document(issuer: str, jwks_uri: str, jwks: bytes) -> bytes:
    """The OpenID Provider metadata (OIDC Discovery 1.0 §3) for ``issuer`` whose keys are
    ``jwks`` at ``jwks_uri``, as compact JSON with a final newline. The same inputs give the same
    bytes (publishing compares them). Raises ConfigError as :func:`public_keys`."""
    doc = {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(signing_algorithms(jwks)),
        "scopes_supported": ["openid"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "use"],
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def issuer_documents(issuer: str, jwks: bytes) -> dict[str, bytes]:
    """The two documents of an issuer whose documents sit at its own URL (serverless
    federation): path below ``issuer`` (``.well-known/openid-configuration``, ``jwks.json``) →
    bytes; ``jwks_uri`` is ``issuer`` + ``/jwks.json``. Raises ConfigError as :func:`public_keys`."""
    base = issuer.rstrip("/")
    return {
        JWKS_PATH.lstrip("/"): jwks,
        DISCOVERY_PATH.lstrip("/"): discovery_document(base, base + JWKS_PATH, jwks),
    }


def host_allowed(allowed_hosts: Iterable[str], host: str) -> bool:
    """Whether a request for ``host`` (the ``Host`` header, or ``X-Forwarded-Host`` when sent;
    with or without a port) may be answered under ``--oidc-allowed-hosts``: no entries or ``*``
    allow every host; else an entry equal to the host, or to the host without its port
    (case-insensitive)."""
    allowed = {h.lower() for h in allowed_hosts}
    if not allowed or "*" in allowed:
        return True
    host = host.strip().lower()
    if host in allowed:
        return True
    name = _without_port(host)
    return name is not None and name in allowed


def concrete_hosts(allowed_hosts: Iterable[str]) -> bool:
    """Whether ``allowed_hosts`` names hosts (not empty, no ``*``): only then is a sent
    ``X-Forwarded-Host`` trusted to build the issuer URL (it has passed the list)."""
    allowed = list(allowed_hosts)
    return bool(allowed) and "*" not in allowed


def _without_port(host: str) -> str | None:
    """``host`` without its ``:port`` (IPv6 in brackets kept bracketed), or None if it has none."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 and host[end + 1 : end + 2] == ":" else None
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else None
