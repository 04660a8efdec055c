"""Identity validators (design §6), one module per kind: ``base`` (the request, the
:class:`Validator` port, the common checks) and ``insecure``.
"""

from __future__ import annotations

from .base import (
    Identity,
    SignRequest,
    TokenValidatorKind,
    Validator,
    check_common,
    common_problems,
    validator_readiness,
)
from .insecure import InsecureValidator

__all__ = [
    "Identity",
    "InsecureValidator",
    "SignRequest",
    "TokenValidatorKind",
    "Validator",
    "check_common",
    "common_problems",
    "validator_readiness",
]
