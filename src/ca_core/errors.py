"""Typed errors of the core; the gRPC layer maps each class to one status code (design §3).

| class               | gRPC status          | meaning                                         |
|---------------------|----------------------|-------------------------------------------------|
| InvalidRequest      | INVALID_ARGUMENT     | the validator choice, CSR bytes, jwt_audiences  |
| PermissionDenied    | PERMISSION_DENIED    | who the caller is, or what it asked to be       |
| Unavailable         | UNAVAILABLE          | a backend the CA needs cannot be used           |
| FailedPrecondition  | FAILED_PRECONDITION  | the CA cannot sign now (issuer invalid, JWT key)|
| BundleError         | (start-up failure)   | the trust bundle in a store is unusable         |
"""

from __future__ import annotations


class CAError(Exception):
    """Base of every error the core raises on purpose.

    ``reason`` is a short machine-readable label (used as a metric label); ``str(err)`` is
    the human-readable message, safe to send to a client (never contains secrets or tokens).
    """

    reason: str = "internal"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidRequest(CAError):
    """The request cannot be processed as sent: validator choice or CSR bytes (INVALID_ARGUMENT)."""

    reason = "invalid_request"


class PermissionDenied(CAError):
    """The caller's identity could not be proven, or it asked for an identity it may not have."""

    reason = "permission_denied"


class Unavailable(CAError):
    """A backend needed to decide (identity provider, store) cannot be used now; fail closed."""

    reason = "unavailable"


class FailedPrecondition(CAError):
    """The CA cannot sign now, e.g. the issuer certificate is expired or not yet valid."""

    reason = "issuer_invalid"


class BundleError(CAError):
    """A trust bundle is partial, corrupt or inconsistent. ``item`` names the file/key at fault."""

    reason = "bundle_invalid"

    def __init__(self, message: str, *, item: str | None = None) -> None:
        super().__init__(f"{item}: {message}" if item else message)
        self.item = item


class ConfigError(CAError):
    """A configuration value is missing, malformed or inconsistent."""

    reason = "config_invalid"
