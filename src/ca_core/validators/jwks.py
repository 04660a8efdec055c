"""JWKS validator (design §6): the token is a JWT signed by a key of a JSON Web Key Set.

Checks, in order: a token is present; the common request checks; the JWS header's ``alg`` is
asymmetric (RS256/384/512, PS256, ES256/384, EdDSA — ``none`` and HMAC are always refused,
RFC 8725 §3.1-3.2); the signature verifies with a key of the set (selected by ``kid``, and
compatible with ``alg``); ``exp`` (required), ``nbf`` and ``iat`` with 5 minutes leeway; ``aud``
contains the CA's SPIFFE ID; ``sub`` equals ``spiffe://<td>/ns/<namespace>/<id>`` (td: the
request's trust domain, or ``public``). JWS/JWK handling is PyJWT's (RFC 7515, 7517, 7519).

Rules only: the keys come through :class:`JwksKeysPort` (``adapters.jwks_source`` fetches the
set from an https URL, a file or inline JSON and caches it); :func:`parse_key_set` says which
keys of a document are usable.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWKError,
    PyJWTError,
)

from ..errors import PermissionDenied
from ..spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .base import Identity, SignRequest, TokenValidatorKind, check_common

log = logging.getLogger(__name__)

LEEWAY = timedelta(minutes=5)

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
    ValueError, and nothing else, for any document that is not a JWKS or holds no usable key
    (hostile ones included: nested too deep, huge numbers, wrong types, not UTF-8)."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError(f"{where}: not JSON (nested too deep)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{where}: not a JWKS (expected an object with a 'keys' list)")
    keys: list[jwt.PyJWK] = []
    for i, item in enumerate(doc["keys"]):
        try:
            key = _usable_key(item, f"{where}: key {i}")
        except RecursionError:
            log.warning("%s: key %d: nested too deep; skipped", where, i)
            continue
        if key is not None:
            keys.append(key)
    if not keys:
        raise ValueError(f"{where}: the JWKS holds no usable signature key")
    return keys


def _usable_key(item: object, label: str) -> jwt.PyJWK | None:
    """The key of one ``keys`` entry, or None (logged) when it is not a usable signature key."""
    if not isinstance(item, dict):
        log.warning("%s: not an object; skipped", label)
        return None
    label += f" (kid {repr(item.get('kid'))[:100]})"
    if item.get("kty") == "oct":
        log.warning("%s: symmetric keys are never used for identity tokens; skipped", label)
        return None
    if item.get("use") not in (None, "sig"):
        log.warning("%s: use %s is not 'sig'; skipped", label, repr(item.get("use"))[:100])
        return None
    try:
        return jwt.PyJWK(item)
    except (PyJWKError, PyJWTError, ValueError, TypeError, AttributeError, KeyError) as e:
        log.warning("%s: cannot be loaded (%s); skipped", label, str(e)[:200])
        return None


def _compatible(key: jwt.PyJWK, alg: str) -> bool:
    kty, curves = ALGORITHMS[alg]
    data = key._jwk_data  # PyJWK keeps the JWK members; no public accessor for crv/alg
    if data.get("kty") != kty or (curves is not None and data.get("crv") not in curves):
        return False
    return data.get("alg") in (None, alg)


class JwksKeysPort(Protocol):
    """The key set in force, as the validator sees it."""

    @property
    def location(self) -> str:
        """Where the set comes from (a URL, a file name, ``inline JWKS``), for messages."""
        ...

    @property
    def last_problem(self) -> str:
        """Why no key is held, when none is (e.g. the last fetch's failure)."""
        ...

    def held(self) -> Sequence[jwt.PyJWK]:
        """The keys held now; never fetches."""
        ...

    def keys(self, kid: str | None) -> Sequence[jwt.PyJWK]:
        """The held keys with ``kid`` (every key when None), the set refreshed first when it is
        stale or does not know ``kid`` (as often as the source allows). Raises Unavailable when
        no key is held."""
        ...

    def refresh(self) -> bool:
        """Fetch the set now if allowed; True when a new set was installed. A failure keeps the
        held keys (and sets ``last_problem``); never raises."""
        ...


# --- the validator ----------------------------------------------------------------------------

NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


def _check_numeric_dates(token: str) -> None:
    """Refuse ``exp``, ``nbf`` or ``iat`` that is not a NumericDate, a finite JSON number
    (RFC 7519 §2, §4.1.4-6); PyJWT would take a string such as ``"1796169404"`` as a number.
    A payload that is not a JSON object is left to PyJWT's own refusal."""
    try:
        payload = json.loads(
            jwt.api_jws.PyJWS().decode_complete(token, options={"verify_signature": False})["payload"]
        )
    except (PyJWTError, ValueError, RecursionError):
        return
    if not isinstance(payload, dict):
        return
    for claim in NUMERIC_DATE_CLAIMS:
        if claim not in payload:
            continue
        value = payload[claim]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PermissionDenied(
                f"token claim {claim} is not a NumericDate (a JSON number): {str(value)[:50]!r}",
                reason="token_claims",
            )


class JwksValidator:
    """JWKS (design §6). ``key_set``: the key set port; ``ca_identity``: the CA's SPIFFE ID, which
    ``aud`` must contain. validate() raises PermissionDenied with a ``reason`` naming the failed
    check, or Unavailable when no key can be had."""

    kind = TokenValidatorKind.JWKS

    def __init__(self, key_set: JwksKeysPort, ca_identity: SpiffeId) -> None:
        self.key_set = key_set
        self.audience = str(ca_identity)

    def ready(self) -> tuple[bool, str]:
        """(ready, detail): ready while keys are held; when none are, tries a fetch (rate-limited)."""
        if not self.key_set.held():
            self.key_set.refresh()
        if self.key_set.held():
            return True, f"{len(self.key_set.held())} JWKS key(s) from {self.key_set.location}"
        return False, self.key_set.last_problem

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
        keys = [k for k in self.key_set.keys(kid) if _compatible(k, alg)]
        if not keys:
            raise PermissionDenied(
                f"no key in the JWKS matches the token (kid {str(kid)[:100]!r}, alg {alg})",
                reason="token_key_unknown",
            )
        _check_numeric_dates(request.token)
        claims = verify_token(request.token, alg, keys, self.audience)
        sub = claims.get("sub")
        if sub != expected_sub:
            raise PermissionDenied(
                f"token subject mismatch: expected {expected_sub!r}, received {str(sub)[:300]!r}",
                reason="token_subject",
            )
        return Identity(SpiffeId(trust_domain, request.namespace, request.app_id))


def verify_token(
    token: str,
    alg: str,
    keys: list[jwt.PyJWK],
    audience: str | Sequence[str],
    issuer: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """The claims of ``token`` once its signature verifies with one of ``keys`` for ``alg``,
    ``exp``/``nbf``/``iat`` hold (with :data:`LEEWAY`), ``aud`` holds ``audience`` (one of
    them, for a list) and, when given, ``iss`` is ``issuer``. Raises PermissionDenied whose
    message starts with ``prefix`` (e.g. the issuer rule's name)."""
    audience_text = audience if isinstance(audience, str) else " or ".join(map(repr, audience))
    for key in keys:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience if isinstance(audience, str) else list(audience),
                issuer=issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "aud", "sub", *(["iss"] if issuer else [])]},
            )
        except InvalidSignatureError:
            continue
        except ExpiredSignatureError:
            raise PermissionDenied(f"{prefix}the token has expired (exp)", reason="token_expired") from None
        except ImmatureSignatureError as e:
            raise PermissionDenied(
                f"{prefix}the token is not valid yet: {e}", reason="token_not_yet_valid"
            ) from None
        except InvalidAudienceError:
            raise PermissionDenied(
                f"{prefix}token audience does not contain {audience_text}", reason="token_audience"
            ) from None
        except InvalidIssuerError:
            raise PermissionDenied(f"{prefix}token iss is not {issuer!r}", reason="token_issuer") from None
        except MissingRequiredClaimError as e:
            raise PermissionDenied(f"{prefix}token claim missing: {e.claim}", reason="token_claims") from None
        except (DecodeError, RecursionError):  # RecursionError: JSON nested too deep
            raise PermissionDenied(f"{prefix}the token cannot be decoded", reason="token_malformed") from None
        except PyJWTError as e:
            raise PermissionDenied(f"{prefix}the token is invalid: {e}", reason="token_invalid") from None
    raise PermissionDenied(
        f"{prefix}the token's signature does not verify with any JWKS key", reason="token_signature"
    )
