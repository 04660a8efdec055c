"""The client library behind ``sentryca request`` and ``sentryca sign``: a TLS channel to the CA,
one SignCertificate call, an independent check of the answer (chain, SPIFFE ID, key), and the
cause of a failed call (:func:`diagnose`). Usable from a Lambda function's init as much as from
the CLI."""

from .client import SignedResponse, VerifyError, channel, sign, verify_response
from .diagnose import Cause, Diagnosis, diagnose, split_server

__all__ = [
    "Cause",
    "Diagnosis",
    "SignedResponse",
    "VerifyError",
    "channel",
    "diagnose",
    "sign",
    "split_server",
    "verify_response",
]
