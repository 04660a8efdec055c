"""Identity validators (design §6), one module per kind: ``base`` (the request, the
:class:`Validator` port, the common checks), ``insecure``, ``kubernetes`` and ``jwks``.

Rules only: a validator's I/O goes through a small port (``kubernetes.KubernetesApiPort``,
``jwks.JwksKeysPort``) that an adapter implements. ``kubernetes`` and ``jwks`` are not imported
here: they are loaded where they are built, so a path that needs neither (the Lambda functions)
never loads the ``jwt`` library.
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
