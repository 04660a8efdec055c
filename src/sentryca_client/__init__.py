"""The client library behind ``sentryca request`` and ``sentryca sign``: a TLS channel to the CA,
one SignCertificate call, an independent check of the answer (chain, SPIFFE ID, key), and the
cause of a failed call (:func:`diagnose`), and the JWT-SVIDs' check against a JWK Set
(:func:`verify_jwt_svids`). Usable from a Lambda function's init as much as from
the CLI."""

from .client import SignedResponse, VerifyError, channel, sign, verify_response
from .diagnose import Cause, Diagnosis, diagnose, split_server
from .jwt_svid import JwksError, JwtSvid, JwtSvids, load_jwks, parse_jwks, verify_jwt_svid, verify_jwt_svids

__all__ = [
    "Cause",
    "Diagnosis",
    "JwksError",
    "JwtSvid",
    "JwtSvids",
    "SignedResponse",
    "VerifyError",
    "channel",
    "diagnose",
    "load_jwks",
    "parse_jwks",
    "sign",
    "split_server",
    "verify_jwt_svid",
    "verify_jwt_svids",
    "verify_response",
]
