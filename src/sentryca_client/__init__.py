"""The client library behind ``sentryca request`` and ``sentryca sign``: a TLS channel to the CA,
one SignCertificate call, and an independent check of the answer (chain, SPIFFE ID, key).
Usable from a Lambda function's init as much as from the CLI."""

from .client import SignedResponse, VerifyError, channel, sign, verify_response

__all__ = ["SignedResponse", "VerifyError", "channel", "sign", "verify_response"]
