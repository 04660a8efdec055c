"""The JWKS validator with issuer rules (design §6.5): OIDC tokens of named issuers (EKS service
accounts, GitHub Actions, Google, ...) mapped to SPIFFE IDs by their claims.

A token is matched to the rule whose pinned ``iss`` it carries (read before the signature is
checked, only to choose the rule; the signature, ``iss`` and every other claim are then checked
against that rule alone). Then, in order: the ``alg`` is asymmetric and fits a key of the rule's
JWK Set with the token's ``kid`` (as :mod:`.jwks`); signature, ``exp``/``nbf``/``iat``, ``aud``
(one of the rule's audiences, by default the CA's SPIFFE ID), ``iss``; the rule's required claim
values; the mapped identity (templates over the claims, or by default ``sub`` = the SPIFFE ID)
equals the request's. Each refusal is PermissionDenied naming the rule and the check; no key
for the rule's issuer (its JWK Set or discovery document unreachable) is Unavailable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jwt
from jwt.exceptions import PyJWTError

from ..claim_mapping import MISSING, Template, pointer_tokens, resolve
from ..errors import PermissionDenied
from ..spiffe_id import (
    DEFAULT_TRUST_DOMAIN,
    SpiffeId,
    app_id_problem,
    namespace_problem,
    trust_domain_problem,
)
from .base import Identity, SignRequest, TokenValidatorKind, check_common
from .jwks import ALGORITHMS, JwksKeysPort, _check_numeric_dates, _compatible, verify_token


@dataclass(frozen=True)
class IssuerRule:
    """A rule of :class:`IssuersValidator`: ``name``, the pinned ``issuer``, its ``keys``,
    ``audiences`` (empty: the CA's SPIFFE ID), required ``claims`` ((name or pointer, value)
    pairs), the ``namespace``/``app_id`` templates (None: ``sub`` is the SPIFFE ID) and the
    mapped ``trust_domain`` (None: the CA's)."""

    name: str
    issuer: str
    keys: JwksKeysPort
    audiences: tuple[str, ...] = ()
    claims: tuple[tuple[str, object], ...] = ()
    namespace: Template | None = None
    app_id: Template | None = None
    trust_domain: str | None = None


class IssuersValidator:
    """JWKS with issuer rules (design §6.5); ``identity_rule`` of the returned Identity names the
    rule that matched. validate() raises PermissionDenied (``reason`` as :mod:`.jwks`', plus
    ``token_issuer``, ``token_claims``, ``token_mapping``) or Unavailable."""

    kind = TokenValidatorKind.JWKS

    def __init__(self, rules: Sequence[IssuerRule], ca_identity: SpiffeId) -> None:
        self.rules = {r.issuer: r for r in rules}
        self.ca_identity = ca_identity

    def ready(self) -> tuple[bool, str]:
        """Ready when every rule holds keys (a rule without keys tries a fetch, rate-limited)."""
        missing = []
        for rule in self.rules.values():
            if not rule.keys.held():
                rule.keys.refresh()
            if not rule.keys.held():
                missing.append(f"{rule.name}: {rule.keys.last_problem}")
        if missing:
            return False, "; ".join(missing)
        return True, ", ".join(f"{r.name}: {len(r.keys.held())} key(s)" for r in self.rules.values())

    def validate(self, request: SignRequest) -> Identity:
        if not request.token:
            raise PermissionDenied("the request has no token (a JWT is required)", reason="token_missing")
        trust_domain = request.trust_domain or DEFAULT_TRUST_DOMAIN
        check_common(request, trust_domain_problem(trust_domain))
        rule = self._rule_of(request.token)
        at = f"issuer rule {rule.name!r}: "
        header = jwt.get_unverified_header(request.token)  # _rule_of read it already
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise PermissionDenied(
                f"{at}token algorithm {str(alg)[:20]!r} is not accepted (use one of {', '.join(ALGORITHMS)})",
                reason="token_algorithm",
            )
        if kid is not None and not isinstance(kid, str):
            raise PermissionDenied(f"{at}the token's kid is not a string", reason="token_malformed")
        keys = [k for k in rule.keys.keys(kid) if _compatible(k, alg)]
        if not keys:
            raise PermissionDenied(
                f"{at}no key in the JWKS of {rule.keys.location} matches the token "
                f"(kid {str(kid)[:100]!r}, alg {alg})",
                reason="token_key_unknown",
            )
        _check_numeric_dates(request.token)
        audiences = rule.audiences or (str(self.ca_identity),)
        claims = verify_token(request.token, alg, keys, list(audiences), rule.issuer, prefix=at)
        for name, wanted in rule.claims:
            got = resolve(claims, pointer_tokens(name))
            if got is MISSING:
                raise PermissionDenied(f"{at}required claim {name} is missing", reason="token_claims")
            if got != wanted or isinstance(got, bool) != isinstance(wanted, bool):
                raise PermissionDenied(
                    f"{at}claim {name} is {str(got)[:100]!r}, the rule requires {wanted!r}",
                    reason="token_claims",
                )
        requested = SpiffeId(trust_domain, request.namespace, request.app_id)
        mapped = self._mapped(rule, claims, at)
        if mapped != str(requested):
            raise PermissionDenied(
                f"{at}the token maps to {mapped[:300]!r}, the request asks for {str(requested)!r}",
                reason="token_mapping",
            )
        return Identity(requested, rule=rule.name)

    def _rule_of(self, token: str) -> IssuerRule:
        """The rule of the token's ``iss`` (unverified: it only chooses the rule)."""
        try:
            jwt.get_unverified_header(token)
            payload = json.loads(
                jwt.api_jws.PyJWS().decode_complete(token, options={"verify_signature": False})["payload"]
            )
        except (PyJWTError, ValueError, RecursionError):
            raise PermissionDenied("the token is not a JWS compact JWT", reason="token_malformed") from None
        iss = payload.get("iss") if isinstance(payload, Mapping) else None
        rule = self.rules.get(iss) if isinstance(iss, str) else None
        if rule is None:
            names = ", ".join(f"{r.name} ({r.issuer})" for r in self.rules.values())
            raise PermissionDenied(
                f"no issuer rule matches the token's iss {str(iss)[:200]!r} (rules: {names})",
                reason="token_issuer",
            )
        return rule

    def _mapped(self, rule: IssuerRule, claims: Mapping[str, object], at: str) -> str:
        """The SPIFFE ID the token maps to, as text: the templates' (in the rule's trust domain,
        else the CA's), or by default the token's ``sub``. Raises PermissionDenied when a template
        cannot be filled or fills an invalid name."""
        if rule.namespace is None or rule.app_id is None:
            return str(claims.get("sub"))
        try:
            namespace, app_id = rule.namespace.render(claims), rule.app_id.render(claims)
        except LookupError as e:
            raise PermissionDenied(f"{at}cannot map the token: {e}", reason="token_mapping") from None
        for problem in (namespace_problem(namespace), app_id_problem(app_id)):
            if problem:
                raise PermissionDenied(f"{at}the mapped {problem}", reason="token_mapping")
        td = rule.trust_domain or self.ca_identity.trust_domain
        return f"spiffe://{td}/ns/{namespace}/{app_id}"
