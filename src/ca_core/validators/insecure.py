"""INSECURE ("selfhosted"): no proof of identity, only the common checks (design §6)."""

from __future__ import annotations

from ..spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .base import Identity, SignRequest, TokenValidatorKind, check_common


class InsecureValidator:
    """INSECURE ("selfhosted"): no proof of identity, only the common checks.

    The trust domain is the request's (a valid SPIFFE trust domain) or ``public`` when empty.
    Meant for development and self-hosted mode; a networked deployment must opt in explicitly.
    """

    kind = TokenValidatorKind.INSECURE
    performs_io = False  # no backend: the gRPC server runs it inline on its event loop

    def validate(self, request: SignRequest) -> Identity:
        trust_domain = request.trust_domain or DEFAULT_TRUST_DOMAIN
        check_common(request, trust_domain_problem(trust_domain))
        return Identity(SpiffeId(trust_domain, request.namespace, request.app_id))
