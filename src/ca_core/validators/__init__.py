"""Identity validators (design §6), one module per kind: ``base`` (the request, the
:class:`Validator` port, the common checks), ``insecure`` and ``kubernetes``.

Rules only: a validator's I/O goes through a small port (``kubernetes.KubernetesApiPort``) that
an adapter implements. ``kubernetes`` is not imported here: it is loaded where it is built.
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
