"""JWT-SVIDs in the CA's answer (response fields 4 and 5, ``jwt`` and ``per_audience_jwts``),
checked with PyJWT against a JWK Set the caller holds before anything is written.

The checks are the client's own, independent of the CA's signing code: each token's ``kid`` must
name a key of the JWK Set and its ``alg`` must be that key's algorithm (never the algorithm the
token claims for itself: no ``none``, no HMAC with a public key); the signature, ``exp`` (no
leeway) and ``nbf`` must hold; ``sub`` must be the certificate's SPIFFE ID; ``aud`` must be
exactly ``[A]`` for the per-audience token of audience A (as Dapr's sidecar insists) and contain
every audience asked for in ``jwt``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any

import jwt
from jwt.exceptions import InvalidSubjectError

from .client import VerifyError

MAX_JWKS_BYTES = 1 << 20  # a JWK Set larger than 1 MiB is refused


class JwksError(Exception):
    """The JWK Set cannot be read, fetched or parsed."""


@dataclass(frozen=True)
class JwtSvid:
    """A verified token: ``token`` (compact JWS), ``audience`` (its ``aud``, a list), ``expiry``
    (``exp``, UTC) and ``key_id`` (the ``kid`` it verified with)."""

    token: str
    audience: tuple[str, ...]
    expiry: datetime
    key_id: str


@dataclass(frozen=True)
class JwtSvids:
    """``jwt``: the token for every audience; ``per_audience``: audience → its own token."""

    jwt: JwtSvid
    per_audience: Mapping[str, JwtSvid]


def parse_jwks(data: bytes, source: str) -> jwt.PyJWKSet:
    """The usable keys of the JWK Set ``data`` (JSON ``{"keys": [...]}``); ``source`` names it in
    errors. Raises JwksError."""
    try:
        document = json.loads(data)
        return jwt.PyJWKSet.from_dict(document)
    except (ValueError, TypeError, AttributeError, jwt.PyJWKSetError, jwt.PyJWKError) as e:
        raise JwksError(f"{source}: not a JWK Set with a usable key ({e})") from None


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith("https://"):
            raise urllib.error.URLError(f"redirect to a non-https URL refused ({newurl[:200]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def load_jwks(source: str, *, timeout: float = 10.0, cafile: str | None = None) -> jwt.PyJWKSet:
    """The JWK Set at ``source``: an ``https://`` URL (fetched once, within ``timeout`` seconds,
    the server verified against ``cafile`` (PEM) when given, else the system's trust store), or
    a file path. Plain ``http://`` is refused, and so is a redirect to it: the keys decide what
    verifies. At most
    :data:`MAX_JWKS_BYTES`. Raises JwksError naming the source and the cause."""
    if source.startswith("http://"):
        raise JwksError(f"{source}: a JWK Set is fetched over https only")
    if source.startswith("https://"):
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise JwksError(f"{cafile}: cannot load the CA certificates ({e})") from None
        request = urllib.request.Request(source, headers={"Accept": "application/json"})  # noqa: S310
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects()
        )
        try:
            with opener.open(request, timeout=timeout) as answer:
                data = answer.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise JwksError(f"{source}: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise JwksError(f"{source}: cannot fetch ({reason})") from None
    else:
        try:
            with Path(source).open("rb") as f:
                data = f.read(MAX_JWKS_BYTES + 1)
        except OSError as e:
            raise JwksError(f"{source}: {e.strerror or e}") from None
    if len(data) > MAX_JWKS_BYTES:
        raise JwksError(f"{source}: larger than {MAX_JWKS_BYTES} bytes")
    return parse_jwks(data, source)


def verify_jwt_svid(
    token: str,
    keys: jwt.PyJWKSet,
    *,
    spiffe_id: str,
    audience: str,
    exact: bool,
    now: datetime | None = None,
) -> JwtSvid:
    """Check one token (see the module's rules): ``aud`` is exactly ``[audience]`` when
    ``exact``, else contains it. Raises VerifyError naming the failed check (never the token)."""
    now = now or datetime.now(UTC)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise VerifyError(f"not a JWT ({e})") from None
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise VerifyError("the token's header names no key (kid)")
    try:
        key = keys[kid]
    except KeyError:
        raise VerifyError(f"the key {kid!r} is not in the JWK Set") from None
    if header.get("alg") != key.algorithm_name:
        raise VerifyError(f"the token says alg {header.get('alg')!r}; key {kid!r} is {key.algorithm_name}")
    try:
        # exp and nbf are checked below against ``now``, not PyJWT's clock; iat is not checked:
        # the CA's nbf (iat minus its allowed clock skew) bounds the start
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            audience=audience,
            subject=spiffe_id,
            options={
                "require": ["exp", "sub", "aud"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except InvalidSubjectError:
        raise VerifyError(f"the token's sub is not the certificate's SPIFFE ID {spiffe_id}") from None
    except jwt.InvalidAudienceError:
        raise VerifyError(f"the token is not for the audience {audience!r}") from None
    except jwt.PyJWTError as e:
        raise VerifyError(f"the token does not verify ({e})") from None
    exp, nbf = claims["exp"], claims.get("nbf", 0)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf)):
        raise VerifyError("the token's exp or nbf is not a number")
    if exp <= now.timestamp():
        raise VerifyError(f"the token expired at {datetime.fromtimestamp(exp, UTC).isoformat()}")
    if nbf > now.timestamp():
        raise VerifyError(f"the token is not valid before {datetime.fromtimestamp(nbf, UTC).isoformat()}")
    aud = claims["aud"]
    audiences = tuple(aud) if isinstance(aud, list) else (aud,)
    if exact and audiences != (audience,):
        raise VerifyError(f"the token for {audience!r} has aud {list(audiences)}, not exactly [{audience!r}]")
    return JwtSvid(token, audiences, datetime.fromtimestamp(exp, UTC), kid)


def verify_jwt_svids(
    response: Any,
    keys: jwt.PyJWKSet,
    *,
    spiffe_id: str,
    audiences: Sequence[str],
    now: datetime | None = None,
) -> JwtSvids:
    """Check the JWT-SVIDs of a SignCertificateResponse ``response`` asked for ``audiences``:
    ``jwt`` must be there and for each of them and the ID's trust domain; ``per_audience_jwts``
    must hold a token for each, and every token it holds must verify for its own audience alone.
    Raises VerifyError naming the token and the failed check."""
    if not response.HasField("jwt"):
        raise VerifyError("the CA returned no JWT-SVID (is it started with --jwt-enabled true?)")
    trust_domain = spiffe_id.removeprefix("spiffe://").partition("/")[0]
    wanted = list(dict.fromkeys([trust_domain, *audiences]))
    try:
        checked = [
            verify_jwt_svid(response.jwt.value, keys, spiffe_id=spiffe_id, audience=a, exact=False, now=now)
            for a in wanted
        ]
    except VerifyError as e:
        raise VerifyError(f"jwt: {e}") from None
    missing = [a for a in wanted if a not in response.per_audience_jwts]
    if missing:
        raise VerifyError(f"per_audience_jwts: no token for {', '.join(map(repr, missing))}")
    per: dict[str, JwtSvid] = {}
    for aud in sorted(response.per_audience_jwts):
        try:
            per[aud] = verify_jwt_svid(
                response.per_audience_jwts[aud].value,
                keys,
                spiffe_id=spiffe_id,
                audience=aud,
                exact=True,
                now=now,
            )
        except VerifyError as e:
            raise VerifyError(f"per_audience_jwts[{aud!r}]: {e}") from None
    return JwtSvids(checked[0], per)
