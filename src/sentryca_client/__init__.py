"""The client library behind ``sentryca request`` and ``sentryca sign``: a TLS channel to the CA,
one SignCertificate call, an independent check of the answer (chain, SPIFFE ID, key), and the
cause of a failed call (:func:`diagnose`), and the JWT-SVIDs' check against a JWK Set
(:func:`verify_jwt_svids`); :func:`request_x509_svid` does it all in one call. Usable from a
Lambda function's init as much as from the CLI. Imports none of the server's packages: it is also
the slim client distribution ``sentryca-client`` (clients/python)."""

from .client import SignedResponse, VerifyError, channel, sign, verify_response
from .diagnose import Cause, Diagnosis, diagnose, split_server
from .jwt_svid import JwksError, JwtSvid, JwtSvids, load_jwks, parse_jwks, verify_jwt_svid, verify_jwt_svids
from .svid import X509Svid, request_x509_svid

__all__ = [
    "Cause",
    "Diagnosis",
    "JwksError",
    "JwtSvid",
    "JwtSvids",
    "SignedResponse",
    "VerifyError",
    "X509Svid",
    "channel",
    "diagnose",
    "load_jwks",
    "parse_jwks",
    "request_x509_svid",
    "sign",
    "split_server",
    "verify_jwt_svid",
    "verify_jwt_svids",
    "verify_response",
]
