"""JWKS validator (SPEC §6): the token is a JWT signed by a key of a JSON Web Key Set.

Checks, in order: a token is present; the common request checks; the JWS header's ``alg`` is
asymmetric (RS256/384/512, PS256, ES256/384, EdDSA — ``none`` and HMAC are always refused,
RFC 8725 §3.1-3.2); the signature verifies with a key of the set (selected by ``kid``, and
compatible with ``alg``); ``exp`` (required), ``nbf`` and ``iat`` with 5 minutes leeway; ``aud``
contains the CA's SPIFFE ID; ``sub`` equals ``spiffe://<td>/ns/<namespace>/<id>`` (td: the
request's trust domain, or ``public``). JWS/JWK handling is PyJWT's (RFC 7515, 7517, 7519).

The key set comes from an https URL, a file or inline JSON (optionally base64) and is
refetched no more often than ``min_refresh_interval``: when it is that old, and when a token
names an unknown ``kid``. A failed fetch keeps the keys already held; with no keys at all the
request gets Unavailable (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWKError,
    PyJWTError,
)

from .config import JwksSettings
from .errors import ConfigError, PermissionDenied, Unavailable
from .spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .validators import Identity, SignRequest, TokenValidatorKind, check_common

log = logging.getLogger(__name__)

LEEWAY = timedelta(minutes=5)
MAX_JWKS_BYTES = 1024 * 1024
FAILED_FETCH_RETRY = 5.0  # seconds before a failed fetch is tried again (capped by the minimum interval)

# alg → (kty, allowed crv or None)
ALGORITHMS: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


# --- the key set ------------------------------------------------------------------------------


def parse_key_set(data: bytes | str, where: str) -> list[jwt.PyJWK]:
    """The usable signature keys of a JWKS document (RFC 7517 §5). Symmetric (``oct``) keys,
    keys for another ``use`` and keys PyJWT cannot load are skipped with a warning. Raises
    ValueError when the document is not a JWKS or holds no usable key."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{where}: not a JWKS (expected an object with a 'keys' list)")
    keys = []
    for i, item in enumerate(doc["keys"]):
        label = f"{where}: key {i}" + (f" (kid {item.get('kid')!r})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            log.warning("%s: not an object; skipped", label)
            continue
        if item.get("kty") == "oct":
            log.warning("%s: symmetric keys are never used for identity tokens; skipped", label)
            continue
        if item.get("use") not in (None, "sig"):
            log.warning("%s: use %r is not 'sig'; skipped", label, item.get("use"))
            continue
        try:
            keys.append(jwt.PyJWK(item))
        except (PyJWKError, PyJWTError, ValueError, TypeError) as e:
            log.warning("%s: cannot be loaded (%s); skipped", label, e)
    if not keys:
        raise ValueError(f"{where}: the JWKS holds no usable signature key")
    return keys


def _compatible(key: jwt.PyJWK, alg: str) -> bool:
    kty, curves = ALGORITHMS[alg]
    data = key._jwk_data  # PyJWK keeps the JWK members; no public accessor for crv/alg
    if data.get("kty") != kty or (curves is not None and data.get("crv") not in curves):
        return False
    return data.get("alg") in (None, alg)


def _ssl_context(ca_certificate: str | None) -> ssl.SSLContext:
    if ca_certificate is None:
        return ssl.create_default_context()
    try:
        if "-----BEGIN" in ca_certificate:
            return ssl.create_default_context(cadata=ca_certificate)
        return ssl.create_default_context(cafile=ca_certificate)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"jwks caCertificate: cannot be loaded ({e})") from None


@dataclass(frozen=True)
class JwksSource:
    """Where the key set comes from. kind: ``url``, ``file`` or ``inline``; ``load()`` returns the
    document's bytes (raises Unavailable for a url or file that cannot be read now)."""

    kind: str
    location: str
    inline: bytes = b""
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: JwksSettings) -> JwksSource:
        """Classify ``settings.source``; raises ConfigError for an http:// URL or a source that is
        neither an https URL, an existing file nor (base64 of) JSON."""
        src = settings.source.strip()
        timeout = settings.request_timeout.total_seconds()
        if src.lower().startswith("https://"):
            return cls("url", src, timeout=timeout, ssl_context=_ssl_context(settings.ca_certificate))
        if src.lower().startswith("http://"):
            raise ConfigError(
                "jwks source: plain http:// is refused (keys could be altered in transit); use https://"
            )
        if src.startswith("{"):
            return cls("inline", "inline JWKS", src.encode())
        if os.path.isfile(src):
            return cls("file", src, timeout=timeout)
        try:
            decoded = base64.b64decode(src, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded.lstrip().startswith(b"{"):
            return cls("inline", "inline JWKS (base64)", decoded)
        raise ConfigError(
            "jwks source: neither an https:// URL, an existing file, nor JWKS JSON (plain or base64)"
        )

    def load(self) -> bytes:
        if self.kind == "inline":
            return self.inline
        if self.kind == "file":
            try:
                with open(self.location, "rb") as f:
                    return f.read(MAX_JWKS_BYTES + 1)[:MAX_JWKS_BYTES]
            except OSError as e:
                raise Unavailable(
                    f"JWKS file {self.location}: {e.strerror}", reason="jwks_unavailable"
                ) from None
        # Only https:// reaches here: from_settings refuses every other scheme.
        request = urllib.request.Request(self.location, headers={"Accept": "application/json"})  # noqa: S310
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ssl_context), _HttpsOnlyRedirects()
        )
        try:
            with opener.open(request, timeout=self.timeout) as resp:
                return _read_within(resp, time.monotonic() + self.timeout, self.location)
        except urllib.error.HTTPError as e:
            raise Unavailable(f"JWKS {self.location} answered {e.code}", reason="jwks_unavailable") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(
                f"JWKS {self.location} unreachable: {reason}", reason="jwks_unavailable"
            ) from None


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL: keys fetched in plaintext could have been
    replaced in transit, which is why an http:// source is refused in the first place."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith("https://"):
            raise urllib.error.URLError(f"redirect to a non-https URL refused ({newurl[:200]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_within(resp: Any, deadline: float, location: str) -> bytes:
    """The body, at most MAX_JWKS_BYTES, read by chunks so that the whole fetch is bounded: the
    socket timeout bounds each read only, and a server that trickles bytes would hold the
    (locked) refresh, and every request waiting on it, for ever. Raises Unavailable."""
    body = b""
    while len(body) < MAX_JWKS_BYTES:
        if time.monotonic() > deadline:
            raise Unavailable(
                f"JWKS {location}: no complete answer within the timeout", reason="jwks_unavailable"
            )
        chunk = resp.read1(MAX_JWKS_BYTES - len(body))
        if not chunk:
            break
        body += chunk
    return body


class JwksCache:
    """The key set in force, refetched with a minimum interval. Thread-safe.

    clock: monotonic seconds (injected in tests); min_refresh: seconds between fetches.
    """

    def __init__(self, source: JwksSource, min_refresh: float, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.min_refresh = min_refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None
        self._last_failed = False
        self.last_problem = "the JWKS has not been fetched yet"
        self.fetches = 0
        if source.kind != "url":  # a file or inline set must be usable from the start
            try:
                self._install(parse_key_set(source.load(), source.location))
            except (ValueError, Unavailable) as e:
                raise ConfigError(f"jwks source: {e}") from None

    @property
    def keys(self) -> list[jwt.PyJWK]:
        return self._keys

    def _install(self, keys: list[jwt.PyJWK]) -> None:
        self._keys = keys
        self._fetched_at = self._attempted_at = self._clock()
        self._last_failed = False

    def _may_fetch(self, now: float) -> bool:
        if self.source.kind == "inline":
            return False
        if self._attempted_at is None:
            return True
        # Without keys every request fails: retry a failed fetch sooner. With keys, a failing
        # source is retried only at the minimum interval, so requests do not keep paying timeouts.
        failing_without_keys = self._last_failed and not self._keys
        wait = min(self.min_refresh, FAILED_FETCH_RETRY) if failing_without_keys else self.min_refresh
        return now - self._attempted_at >= wait

    def refresh(self, *, force_stale: bool = False) -> bool:
        """Fetch now if the minimum interval allows (``force_stale``: only when the held set is at
        least that old). Returns True when a new set was installed; a failure keeps the held keys."""
        with self._lock:
            now = self._clock()
            if not self._may_fetch(now):
                return False
            if force_stale and self._fetched_at is not None and now - self._fetched_at < self.min_refresh:
                return False
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = parse_key_set(self.source.load(), self.source.location)
            except (ValueError, Unavailable) as e:
                self._last_failed = True
                self.last_problem = str(e)
                log.warning("JWKS refresh failed (%s); %d key(s) stay in use", e, len(self._keys))
                return False
            self._install(keys)
            log.info("JWKS loaded from %s: %d key(s)", self.source.location, len(keys))
            return True

    def candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """Keys that may have signed a token with ``kid`` and ``alg``: refreshes when the set is
        stale or ``kid`` is unknown (rate-limited). Raises Unavailable when no key is held."""
        if not self._keys or self._fetched_at is None:
            self.refresh()
        else:
            self.refresh(force_stale=True)
        if not self._keys:
            raise Unavailable(f"no JWKS keys available: {self.last_problem}", reason="jwks_unavailable")
        if kid is not None and not any(k.key_id == kid for k in self._keys):
            self.refresh()
        keys = self._keys if kid is None else [k for k in self._keys if k.key_id == kid]
        return [k for k in keys if _compatible(k, alg)]


# --- the validator ----------------------------------------------------------------------------


class JwksValidator:
    """JWKS (SPEC §6). ``cache``: the key set; ``ca_identity``: the CA's SPIFFE ID, which ``aud``
    must contain. validate() raises PermissionDenied with a ``reason`` naming the failed check,
    or Unavailable when no key can be had."""

    kind = TokenValidatorKind.JWKS

    def __init__(self, cache: JwksCache, ca_identity: SpiffeId) -> None:
        self.cache = cache
        self.audience = str(ca_identity)

    @classmethod
    def from_settings(
        cls, settings: JwksSettings, ca_identity: SpiffeId, clock: Callable[[], float] = time.monotonic
    ) -> JwksValidator:
        """Build from the ``--config`` options; raises ConfigError for an unusable source or CA."""
        source = JwksSource.from_settings(settings)
        return cls(JwksCache(source, settings.min_refresh_interval.total_seconds(), clock), ca_identity)

    def ready(self) -> tuple[bool, str]:
        """(ready, detail): ready while keys are held; when none are, tries a fetch (rate-limited)."""
        if not self.cache.keys:
            self.cache.refresh()
        if self.cache.keys:
            return True, f"{len(self.cache.keys)} JWKS key(s) from {self.cache.source.location}"
        return False, self.cache.last_problem

    def validate(self, request: SignRequest) -> Identity:
        if not request.token:
            raise PermissionDenied("the request has no token (a JWT is required)", reason="token_missing")
        trust_domain = request.trust_domain or DEFAULT_TRUST_DOMAIN
        check_common(request, trust_domain_problem(trust_domain))
        expected_sub = str(SpiffeId(trust_domain, request.namespace, request.app_id))
        try:
            header = jwt.get_unverified_header(request.token)
        except PyJWTError:
            raise PermissionDenied("the token is not a JWS compact JWT", reason="token_malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:  # a list or object is unhashable
            raise PermissionDenied(
                f"token algorithm {str(alg)[:20]!r} is not accepted (use one of {', '.join(ALGORITHMS)})",
                reason="token_algorithm",
            )
        if kid is not None and not isinstance(kid, str):
            raise PermissionDenied("the token's kid is not a string", reason="token_malformed")
        keys = self.cache.candidates(kid, alg)
        if not keys:
            raise PermissionDenied(
                f"no key in the JWKS matches the token (kid {str(kid)[:100]!r}, alg {alg})",
                reason="token_key_unknown",
            )
        claims = self._verify(request.token, alg, keys)
        sub = claims.get("sub")
        if sub != expected_sub:
            raise PermissionDenied(
                f"token subject mismatch: expected {expected_sub!r}, received {str(sub)[:300]!r}",
                reason="token_subject",
            )
        return Identity(SpiffeId(trust_domain, request.namespace, request.app_id))

    def _verify(self, token: str, alg: str, keys: list[jwt.PyJWK]) -> dict[str, Any]:
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self.audience,
                    leeway=LEEWAY,
                    options={"require": ["exp", "aud", "sub"]},
                )
            except InvalidSignatureError:
                continue
            except ExpiredSignatureError:
                raise PermissionDenied("the token has expired (exp)", reason="token_expired") from None
            except ImmatureSignatureError as e:
                raise PermissionDenied(
                    f"the token is not valid yet: {e}", reason="token_not_yet_valid"
                ) from None
            except InvalidAudienceError:
                raise PermissionDenied(
                    f"token audience does not contain {self.audience!r}", reason="token_audience"
                ) from None
            except MissingRequiredClaimError as e:
                raise PermissionDenied(f"token claim missing: {e.claim}", reason="token_claims") from None
            except (DecodeError, RecursionError):  # RecursionError: JSON nested too deep
                raise PermissionDenied("the token cannot be decoded", reason="token_malformed") from None
            except PyJWTError as e:
                raise PermissionDenied(f"the token is invalid: {e}", reason="token_invalid") from None
        raise PermissionDenied(
            "the token's signature does not verify with any JWKS key", reason="token_signature"
        )
