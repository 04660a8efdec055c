"""The adapter step before the rotation rules when an upstream authority signs the issuers
(``--upstream-authority``, design §5.16).

The rules stay pure: when ``rotation.issuer_rule.issuer_prepare_due`` says rule 5 would prepare
an issuer, this step asks the upstream for one (``adapters.acm_pca``), checks it
(``ca_core.upstream.accept_issued``: it must chain to the bundle's active root) and hands it to
``rules.advance``, which prepares and later activates it as it would an issuer signed with a root
key. A failure never fails the CA: it is logged once per distinct problem with what to do
(throttled, pending, denied, the CA's state), the CA keeps serving its current issuer, and the
next expiry check tries again. A certificate still pending is remembered (its ARN and the key it
certifies), so the next attempt polls that one instead of asking for another: one request per
issuer, never a storm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from ca_core.bundle import TrustBundle
from ca_core.errors import BundleError, CAError
from ca_core.rotation.issuer_rule import UpstreamIssuer, issuer_prepare_due
from ca_core.rotation.state import (
    RotationPolicy,
    RotationState,
    active_root,
    held_root_key,
    kept_issuer_key,
)
from ca_core.upstream import IssuerRequest, accept_issued, issuer_request

log = logging.getLogger("sentryca")


class UpstreamIssuerStep:
    """Asks ``--upstream-authority`` for issuers. ``authority``: builds the adapter for an
    upstream (default ``adapters.acm_pca.AcmPcaAuthority`` with short waits: 2 tries of a
    call, 3 polls, at most 2 s apart, since the upkeep holds the lifecycle lock); it is
    kept while the upstream named by the configuration stays the same."""

    def __init__(self, authority: Callable[[str], object] | None = None) -> None:
        self._make = authority
        self._authority: object | None = None
        self._upstream: str | None = None
        self._pending: tuple[IssuerRequest, str] | None = None  # (request, certificate ARN)
        self._reported: str | None = None  # the last problem logged (reported once)
        self.failures = 0  # attempts that got no issuer, since the last success

    def __call__(
        self, bundle: TrustBundle, state: RotationState, now: datetime, policy: RotationPolicy
    ) -> UpstreamIssuer | None:
        """The upstream's new issuer when rule 5 wants one now, else None (nothing due, or the
        upstream could not give one yet: logged)."""
        upstream = policy.upstream
        if (
            upstream is None
            or held_root_key(bundle) is not None  # the root key signs, as without an upstream
            or not issuer_prepare_due(bundle, state, now, policy)
        ):
            self._pending = None
            return None
        authority = self._authority_for(upstream)
        from adapters.acm_pca import UpstreamPending

        request, resume = self._pending if self._pending is not None else (None, None)
        try:
            if request is None:
                request = issuer_request(
                    policy.ca_identity,
                    policy.algorithm,
                    now,
                    lifetime=policy.issuer_lifetime,
                    backdate=policy.clock_skew,
                    key=kept_issuer_key(bundle.issuer_key),  # a KMS issuer key is certified again
                )
            certificate, chain = authority.issue_issuer(  # type: ignore[attr-defined]
                request, resume=resume, expect_root=active_root(bundle)
            )
            issuer_chain, roots = accept_issued(request, certificate, chain, now)
            if roots[0] != active_root(bundle):
                raise BundleError(
                    f"{upstream} signed the issuer under the root {roots[0].subject.rfc4514_string()}, "
                    f"not the bundle's active root {active_root(bundle).subject.rfc4514_string()}: "
                    "the Private CA's hierarchy changed; move the CA to it with `sentryca bundle "
                    "import` (both roots as anchors) before the issuer expires"
                )
        except UpstreamPending as e:
            self._pending = (request, e.certificate_arn) if request is not None else None
            self._failed("upstream_pending", f"rotation: {e}", logging.WARNING)
            return None
        except CAError as e:
            transient = e.reason in ("upstream_throttled", "upstream_unreachable")
            if not transient:  # a pending certificate survives throttling, not a refusal
                self._pending = None
            level = logging.WARNING if transient else logging.ERROR
            self._failed(
                e.reason,
                f"rotation: {upstream} gave no new issuer ({e}); still serving the current issuer, "
                "retrying at the next expiry check",
                level,
            )
            return None
        self._pending, self._reported, self.failures = None, None, 0
        return issuer_chain, request.key

    def _authority_for(self, upstream: str) -> object:
        if self._authority is None or self._upstream != upstream:
            if self._make is None:
                from adapters.acm_pca import AcmPcaAuthority, Backoff

                # the upkeep holds the lifecycle lock: short waits, the rest at the next check
                self._authority = AcmPcaAuthority(upstream, backoff=Backoff(attempts=2, polls=3, cap=2.0))
            else:
                self._authority = self._make(upstream)
            self._upstream, self._pending = upstream, None
        return self._authority

    def _failed(self, reason: str, message: str, level: int) -> None:
        self.failures += 1
        if reason != self._reported:
            self._reported = reason
            log.log(level, "%s", message, extra={"event": "upstream_failed", "problem": reason})
        else:
            log.debug("%s", message)
