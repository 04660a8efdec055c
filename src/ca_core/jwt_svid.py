"""JWT-SVIDs: the CA's JWT key, its JWK and JWK Set, and signing tokens (design §5.1, §11).

Pure: the caller passes ``now`` and, for tests, the ``jti`` source. The token is what Dapr's
Sentry (1.16 and later) issues beside the X.509 SVID: header ``alg``, ``kid``, ``typ: JWT``;
claims ``jti`` (16 random bytes, hex), ``sub`` (the SPIFFE ID), ``aud`` (always a JSON array),
``iat``, ``nbf`` (``iat`` minus the allowed clock skew), ``exp``, ``use: sig`` (Azure wants it)
and ``iss`` when configured. PyJWT signs; the JWK members come from PyJWT's key encoders.

Key ids: by default the RFC 7638 SHA-256 thumbprint of the public JWK, encoded with standard
base64 *with padding* (``+``, ``/``, ``=``), as Dapr's Sentry derives it, so a Dapr-written
``jwks.json`` and this CA name a key alike.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import BundleError, FailedPrecondition
from .keys import PrivateKey, PublicKey

DEFAULT_JWT_TTL = timedelta(hours=24)
RSA_KEY_SIZE = 2048
# design §3.1 step 4b: what one request may ask for. Each audience costs two signatures (one in
# ``jwt``, one in ``per_audience_jwts``); Dapr's Sentry sets no bound.
MAX_AUDIENCES = 32
MAX_AUDIENCE_LENGTH = 1024


class JwtAlgorithm(enum.Enum):
    """Signing algorithms of the JWT key (``--jwt-signing-algorithm``), by their JOSE names."""

    RS256 = "RS256"  # RSA-2048, PKCS#1 v1.5 with SHA-256: Dapr's default, accepted most widely
    ES256 = "ES256"  # ECDSA P-256 with SHA-256
    EDDSA = "EdDSA"  # Ed25519

    @classmethod
    def parse(cls, name: str) -> JwtAlgorithm:
        """``name``: RS256, ES256 or EdDSA (case-insensitive); raises ValueError."""
        for alg in cls:
            if alg.value.lower() == name.strip().lower():
                return alg
        allowed = ", ".join(a.value for a in cls)
        raise ValueError(f"unknown JWT signing algorithm {name!r}; use one of {allowed}")

    def generate(self) -> PrivateKey:
        """A fresh key for this algorithm (RSA: 2048 bits, exponent 65537)."""
        if self is JwtAlgorithm.RS256:
            return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
        if self is JwtAlgorithm.ES256:
            return ec.generate_private_key(ec.SECP256R1())
        return ed25519.Ed25519PrivateKey.generate()

    def key_problem(self, key: PrivateKey | PublicKey) -> str | None:
        """Why ``key`` cannot sign with this algorithm, or None when it can."""
        if self is JwtAlgorithm.RS256:
            if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
                return f"RS256 needs an RSA key, not {_kind(key)}"
            if key.key_size < RSA_KEY_SIZE:
                return f"RS256 needs an RSA key of at least {RSA_KEY_SIZE} bits, not {key.key_size}"
            return None
        if self is JwtAlgorithm.ES256:
            if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
                return f"ES256 needs an ECDSA P-256 key, not {_kind(key)}"
            if key.curve.name != "secp256r1":
                return f"ES256 needs an ECDSA P-256 key, not ECDSA {key.curve.name}"
            return None
        if not isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
            return f"EdDSA needs an Ed25519 key, not {_kind(key)}"
        return None


def algorithm_for_key(key: PrivateKey | PublicKey) -> JwtAlgorithm | None:
    """The algorithm ``key`` signs with (RS256, ES256, EdDSA), or None for any other key."""
    for alg in JwtAlgorithm:
        if alg.key_problem(key) is None:
            return alg
    return None


def _kind(key: object) -> str:
    from .keys import describe_public_key

    public = key.public_key() if hasattr(key, "public_key") else key
    return describe_public_key(public)


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key.public_key()
    return key


# RFC 7638 §3.2: the members of each key type that the thumbprint hashes.
_REQUIRED_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def public_jwk_members(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public key as JWK members (``kty`` and its key members only), from PyJWT's encoders.
    Raises ValueError for a key type JWT-SVIDs do not use."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    public = _public(key)
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:  # pragma: no cover - PrivateKey/PublicKey hold no other type
        raise ValueError(f"unsupported JWT key type {type(public).__name__}")
    return {k: str(v) for k, v in jwk.items() if k in _REQUIRED_MEMBERS[str(jwk["kty"])]}


def thumbprint(key: PrivateKey | PublicKey) -> bytes:
    """The RFC 7638 JWK thumbprint of ``key``'s public part: SHA-256 over the required members,
    keys sorted, no whitespace (32 bytes)."""
    members = public_jwk_members(key)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def default_key_id(key: PrivateKey | PublicKey) -> str:
    """The default ``kid``: :func:`thumbprint`, standard base64 with padding (as Dapr's Sentry)."""
    return base64.b64encode(thumbprint(key)).decode("ascii")


def public_jwk(key: PrivateKey | PublicKey, key_id: str, algorithm: JwtAlgorithm) -> dict[str, str]:
    """The JWK Set entry for ``key``: its public members, ``kid``, ``alg`` and ``use: sig``."""
    return {**public_jwk_members(key), "kid": key_id, "alg": algorithm.value, "use": "sig"}


def jwks_document(entries: Sequence[Mapping[str, str]]) -> bytes:
    """The ``jwks.json`` item: ``{"keys": [...]}`` with members sorted, no whitespace (the shape
    Dapr's Sentry writes). Rotation may list several keys; one of them signs."""
    return json.dumps({"keys": [dict(e) for e in entries]}, sort_keys=True, separators=(",", ":")).encode()


def parse_jwks(raw: bytes, item: str = "jwks.json") -> tuple[dict[str, Any], ...]:
    """The entries of a JWK Set document. Raises BundleError naming ``item`` when it is not a
    JSON object with a non-empty ``keys`` array of objects each with a ``kty``."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("is not a JSON document (a JWK Set)", item=item) from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise BundleError('is not a JWK Set: it needs a non-empty "keys" array', item=item)
    for n, entry in enumerate(keys, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("kty"), str):
            raise BundleError(f'key {n} of {len(keys)} is not a JWK object with a "kty"', item=item)
    return tuple(keys)


def entry_holds(entry: Mapping[str, Any], key: PrivateKey | PublicKey) -> bool:
    """Whether the JWK Set ``entry`` is ``key``'s public key (its required members are equal)."""
    members = public_jwk_members(key)
    return all(entry.get(k) == v for k, v in members.items())


def _key_members(entry: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    required = _REQUIRED_MEMBERS.get(str(entry.get("kty")))
    if required is None:
        return None
    return tuple((k, entry.get(k)) for k in required)


def entry_thumbprint(entry: Mapping[str, Any]) -> str | None:
    """The RFC 7638 SHA-256 thumbprint (hex) of a JWK Set entry's key, from its required
    members; None for an entry of another key type or missing one of them."""
    members = _key_members(entry)
    if members is None or any(not isinstance(v, str) for _, v in members):
        return None
    canonical = json.dumps(dict(members), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dropped_keys(
    current: bytes | None, new: bytes | None, released: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """The ``kid`` of each key the JWK Set ``current`` publishes and ``new`` does not (keys are
    compared by their RFC 7638 members, not by kid): tokens signed with them would stop
    verifying. ``released``: thumbprints (hex, :func:`entry_thumbprint`) of keys the rotation
    rules let go (design §5.4), not counted. An unreadable ``current`` judges nothing (it is a
    derived copy); an absent or unreadable ``new`` publishes nothing."""
    if current is None:
        return ()
    try:
        old = parse_jwks(current)
    except BundleError:
        return ()
    try:
        kept = {_key_members(e) for e in parse_jwks(new)} if new is not None else set()
    except BundleError:
        kept = set()
    return tuple(
        str(e.get("kid", "?"))
        for e in old
        if _key_members(e) not in kept and entry_thumbprint(e) not in released
    )


def key_ids(raw: bytes) -> tuple[str, ...]:
    """The ``kid`` of each entry of a JWK Set document ("" for an entry without one)."""
    return tuple(str(e.get("kid", "")) for e in parse_jwks(raw))


def signing_key_id(
    jwks: bytes, key: PrivateKey, *, key_id: str | None = None, item: str = "jwks.json"
) -> str:
    """The ``kid`` tokens signed with ``key`` carry: ``key_id`` (``--jwt-key-id``) when given,
    which must name an entry of ``jwks`` holding ``key``; else the ``kid`` of the entry that holds
    ``key`` (a Dapr-written JWKS: the thumbprint), else :func:`default_key_id`. Raises
    BundleError naming ``item`` when ``jwks`` does not publish ``key`` (tokens would not verify),
    or does not under ``key_id``."""
    entries = parse_jwks(jwks, item)
    holding = [e for e in entries if entry_holds(e, key)]
    if not holding:
        raise BundleError(
            "does not hold the public key of the JWT signing key (jwt.key): its tokens would not verify",
            item=item,
        )
    if key_id is not None:
        if not any(e.get("kid") == key_id for e in holding):
            raise BundleError(f"has no entry with kid {key_id!r} (--jwt-key-id) for the JWT key", item=item)
        return key_id
    kid = holding[0].get("kid")
    return kid if isinstance(kid, str) and kid else default_key_id(key)


def new_jwt_items(algorithm: JwtAlgorithm, *, key_id: str | None = None) -> tuple[PrivateKey, bytes]:
    """A fresh JWT key for ``algorithm`` and the JWK Set publishing it (``kid``: ``key_id``,
    else :func:`default_key_id`)."""
    key = algorithm.generate()
    kid = key_id if key_id is not None else default_key_id(key)
    return key, jwks_document([public_jwk(key, kid, algorithm)])


def audience_problem(audiences: Sequence[str]) -> str | None:
    """Why a request's ``jwt_audiences`` cannot be served, or None (design §3.1 step 4b)."""
    if len(audiences) > MAX_AUDIENCES:
        return f"jwt_audiences holds {len(audiences)} audiences; at most {MAX_AUDIENCES} are accepted"
    for n, aud in enumerate(audiences, 1):
        if not aud:
            return f"jwt_audiences entry {n} is empty"
        if len(aud.encode("utf-8")) > MAX_AUDIENCE_LENGTH:
            return f"jwt_audiences entry {n} is longer than {MAX_AUDIENCE_LENGTH} bytes"
    return None


def _jti() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class IssuedJwts:
    """The JWT-SVIDs of one response: ``jwt`` (every audience in one token),
    ``per_audience`` (audience → a token for that audience alone) and ``jtis``: the ``jti`` of
    each token, ``jwt``'s first (for the audit record; the tokens themselves are never logged)."""

    jwt: str
    per_audience: Mapping[str, str]
    jtis: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """How many distinct tokens the response carries (a lone audience's token is ``jwt`` itself)."""
        return len({self.jwt, *self.per_audience.values()})


@dataclass(frozen=True)
class JwtIssuer:
    """Signs JWT-SVIDs with one key. Build it with :meth:`create` (which checks the key fits the
    algorithm); ``ttl``: token lifetime; ``clock_skew``: how far ``nbf`` is back-dated;
    ``issuer``: the ``iss`` claim, or None for none (Dapr's default). ``new_jti`` makes the
    unique ``jti`` (injected for tests)."""

    key: PrivateKey
    algorithm: JwtAlgorithm
    key_id: str
    ttl: timedelta = DEFAULT_JWT_TTL
    clock_skew: timedelta = timedelta(minutes=15)
    issuer: str | None = None
    new_jti: Callable[[], str] = field(default=_jti, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        key: PrivateKey,
        algorithm: JwtAlgorithm,
        key_id: str,
        *,
        ttl: timedelta = DEFAULT_JWT_TTL,
        clock_skew: timedelta = timedelta(minutes=15),
        issuer: str | None = None,
    ) -> JwtIssuer:
        """A checked issuer. Raises BundleError (item ``jwt.key``) when ``key`` cannot sign with
        ``algorithm`` (e.g. a stored RSA key with ``--jwt-signing-algorithm ES256``)."""
        if problem := algorithm.key_problem(key):
            raise BundleError(
                f"cannot sign with --jwt-signing-algorithm {algorithm.value}: {problem}", item="jwt.key"
            )
        return cls(key, algorithm, key_id, ttl, clock_skew, issuer)

    def claims(
        self, subject: str, audiences: Sequence[str], now: datetime, not_after: datetime | None = None
    ) -> dict[str, Any]:
        """The claims of one token for ``subject`` (a SPIFFE ID) and ``audiences`` at ``now``
        (aware UTC); ``exp`` is ``now + ttl``, never past ``not_after`` (the X.509 leaf's NotAfter)."""
        exp = now + self.ttl
        if not_after is not None and not_after < exp:
            exp = not_after
        claims: dict[str, Any] = {
            "jti": self.new_jti(),
            "sub": subject,
            "aud": list(audiences),
            "iat": int(now.timestamp()),
            "nbf": int((now - self.clock_skew).timestamp()),
            "exp": int(exp.timestamp()),
            "use": "sig",
        }
        if self.issuer is not None:
            claims["iss"] = self.issuer
        return claims

    def sign(
        self, subject: str, audiences: Sequence[str], now: datetime, not_after: datetime | None = None
    ) -> str:
        """One compact JWS (header ``alg``, ``kid``, ``typ: JWT``). Raises FailedPrecondition
        (reason ``jwt_sign_failed``) when the key cannot sign: never a partial answer."""
        return self._sign(self.claims(subject, audiences, now, not_after))

    def _sign(self, claims: Mapping[str, Any]) -> str:
        import jwt

        try:
            return jwt.encode(
                dict(claims),
                self.key,
                algorithm=self.algorithm.value,
                headers={"kid": self.key_id, "typ": "JWT"},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise FailedPrecondition(
                f"the CA cannot sign a JWT-SVID with its JWT key ({self.algorithm.value}): "
                f"{type(e).__name__}",
                reason="jwt_sign_failed",
            ) from None

    def issue(
        self,
        subject: str,
        trust_domain: str,
        requested: Sequence[str],
        now: datetime,
        not_after: datetime | None = None,
    ) -> IssuedJwts:
        """The tokens of one response, as Dapr's Sentry 1.18 fills them: the audiences are the
        trust domain first, then ``requested`` (kept as sent); ``jwt`` names them all,
        ``per_audience`` has one token per distinct audience. An empty ``requested`` still gives
        both (for the trust domain alone): then one token, the same in both fields, since its
        claims would differ only in ``jti`` (one signature instead of two: RS256 costs ~0.3 ms)."""
        audiences = [trust_domain, *requested]
        every = self.claims(subject, audiences, now, not_after)
        if len(audiences) == 1:
            token = self._sign(every)
            return IssuedJwts(token, {trust_domain: token}, (every["jti"],))
        singles = {aud: self.claims(subject, [aud], now, not_after) for aud in dict.fromkeys(audiences)}
        jtis = (every["jti"], *(c["jti"] for c in singles.values()))
        return IssuedJwts(self._sign(every), {aud: self._sign(c) for aud, c in singles.items()}, jtis)
