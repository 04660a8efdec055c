"""Identity validation: the request shape, the ``Validator`` port and the common checks.

Design §3 (step 2) and §6. A validator turns a :class:`SignRequest` into a proven
:class:`Identity` or raises PermissionDenied (identity failure) / Unavailable (backend).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import PermissionDenied
from ..spiffe_id import SpiffeId, app_id_problem, namespace_problem


class TokenValidatorKind(enum.IntEnum):
    """The wire enum ``SignCertificateRequest.TokenValidator`` (design §2)."""

    UNKNOWN = 0
    INSECURE = 1
    KUBERNETES = 2
    JWKS = 3
    # This project's extension, outside Dapr's values (design §2, §6.5): a Dapr client never sends
    # it, and a CA without the validator refuses it as not enabled.
    AWS_IAM = 100

    @classmethod
    def parse(cls, text: str | int) -> TokenValidatorKind:
        """A name (``insecure``/``selfhosted``, ``kubernetes``, ``jwks``, ``aws-iam``) or number;
        raises ValueError."""
        if isinstance(text, int) or (isinstance(text, str) and text.strip().lstrip("-").isdigit()):
            return cls(int(text))
        name = text.strip().upper().replace("-", "_")
        if name == "SELFHOSTED":
            return cls.INSECURE
        try:
            return cls[name]
        except KeyError:
            raise ValueError(
                f"unknown token validator {text!r}; use insecure, kubernetes, jwks or aws-iam"
            ) from None


@dataclass(frozen=True)
class SignRequest:
    """A decoded ``SignCertificateRequest`` (design §2). ``token_validator`` is the raw wire number
    (the enum is open: any int may arrive)."""

    app_id: str
    namespace: str
    csr_pem: bytes
    trust_domain: str = ""
    token: str = field(default="", repr=False)  # never printed
    token_validator: int = 0
    jwt_audiences: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identity:
    """A proven identity: the SPIFFE ID to put in the SVID; ``rule``: the validator's rule that
    proved it (a JWKS issuer rule's name, design §6.5), "" when the validator has none."""

    spiffe_id: SpiffeId
    rule: str = ""


@runtime_checkable
class Validator(Protocol):
    """Port for identity validators (Kubernetes TokenReview, JWKS, INSECURE).

    A validator may set ``performs_io = False`` when ``validate`` never waits on a backend; the
    gRPC server then runs it on its event loop instead of its I/O threads (absent: True)."""

    kind: TokenValidatorKind

    def validate(self, request: SignRequest) -> Identity:
        """Prove who sent ``request``. Raises PermissionDenied with every reason found, or
        Unavailable when a backend cannot be used (fail closed)."""
        ...


def validator_readiness(validator: Validator) -> tuple[bool, str]:
    """(ready, detail) of a validator. A validator may define ``ready() -> (bool, str)``
    (e.g. not ready until its backend first answered); without it, it is always ready."""
    hook: Callable[[], tuple[bool, str]] | None = getattr(validator, "ready", None)
    if hook is None:
        return True, "ready"
    return hook()


def common_problems(request: SignRequest) -> list[str]:
    """The checks every validator applies (design §3, step 2): id non-empty, no '.', ≤ 64
    characters; namespace a DNS label; CSR present. Returns every problem found."""
    problems = [p for p in (app_id_problem(request.app_id), namespace_problem(request.namespace)) if p]
    if not request.csr_pem:
        problems.append("the certificate_signing_request field is empty")
    return problems


def check_common(request: SignRequest, *extra: str | None) -> None:
    """Raise PermissionDenied listing the common problems plus any ``extra`` ones."""
    problems = common_problems(request) + [p for p in extra if p]
    if problems:
        raise PermissionDenied("invalid request: " + "; ".join(problems), reason="invalid_identity")
