"""The adapter step before the rotation rules when an upstream authority signs the issuers
(``--upstream-authority``, design §5.16), in three parts so that no call to the upstream is made
under the lifecycle lock:

1. **decide** (:meth:`UpstreamIssuerStep.__call__`, under the lock, quick and local): when
   ``rotation.issuer_rule.issuer_prepare_due`` says rule 5 would prepare an issuer, an
   :class:`UpstreamAsk` is planned: the adapter, the names and lifetimes, the key to certify, the
   root the issuer must chain to, and the **basis** (upstream, active root, active issuer) the
   answer must still match;
2. **ask** (:meth:`UpstreamIssuerStep.run`, without the lock, on the caller's thread: the
   watcher's own thread for it, or ``maintain``'s): the CSR (a KMS issuer key signs it there), the
   calls (``adapters.acm_pca``), the check (``ca_core.upstream.accept_issued``: it must chain to
   that root); a failure is recorded;
3. **hand over** (:meth:`UpstreamIssuerStep.__call__` again, under the lock, at the next round):
   the answer goes to ``rules.advance``, which prepares and later activates it as it would an
   issuer signed with a root key, if the bundle's basis is still the one asked for; otherwise it
   is dropped (another replica or an operator moved the issuer or the root meanwhile). Handed
   over, it is kept until nothing is due (the step is in force): a write that failed or lost to
   another replica hands it again at the next round, no second certificate bought.

One ask at a time: none is planned while one is under way, and a certificate issued but not got
(still pending, or its poll throttled, unreachable or denied) is remembered from the moment
IssueCertificate answers (its request and ARN, for the same upstream and root), so the next
attempt polls that one instead of asking for another: one request per issuer, never a storm. A
failure never fails the CA: it is logged once per distinct problem with what to do (throttled,
pending, denied, the CA's state), counted (``sentryca_upstream_failures_total{reason}``, the gauge
``sentryca_upstream_failing`` at 1) and reported in ``/healthz`` (``upstream``); the CA keeps
serving its current issuer, and the next expiry check tries again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from cryptography import x509

from ca_core.bundle import TrustBundle, fingerprint
from ca_core.errors import BundleError, CAError
from ca_core.keys import PrivateKey
from ca_core.rotation.issuer_rule import UpstreamIssuer, issuer_prepare_due
from ca_core.rotation.state import (
    RotationPolicy,
    RotationState,
    active_root,
    held_root_key,
    kept_issuer_key,
)
from ca_core.upstream import IssuerRequest, accept_issued, issuer_request

from ..metrics import Metrics
from .state import utc_now

log = logging.getLogger("sentryca")

# The running CA's waits: a few polls at most 2 s apart, the rest at the next expiry check.
POLLS, POLL_CAP = 3, 2.0

Basis = tuple[str, str, str]  # (upstream, SHA-256 of the active root, SHA-256 of the active issuer)
Limits = tuple[float, int]  # (--upstream-timeout in seconds, --upstream-max-attempts)


@dataclass(frozen=True)
class UpstreamAsk:
    """One ask of the upstream, planned under the lifecycle lock and made without it."""

    upstream: str
    authority: Any  # adapters.acm_pca.AcmPcaAuthority, or what the injected factory builds
    policy: RotationPolicy
    key: PrivateKey | None  # the issuer key to certify again (in KMS), else None: a fresh one
    root: x509.Certificate  # the bundle's active root: the issuer must chain to it
    outlive: datetime  # the active issuer's NotAfter: the new one must end later
    basis: Basis
    pending: tuple[IssuerRequest, str] | None  # a certificate still pending: (request, ARN)


class UpstreamIssuerStep:
    """Asks ``--upstream-authority`` for issuers. ``authority``: builds the adapter for an
    upstream (default :func:`adapters.acm_pca.bounded_authority` with ``--upstream-timeout`` and
    ``--upstream-max-attempts``, 3 polls at most 2 s apart); it is kept while the upstream and
    those limits stay the same. ``metrics``: the CA's (the upstream's figures are registered once
    an upstream is seen); ``clock``: the time of an ask (its CSR's validity, the answer's check).

    Thread-safe: the lock holder (:meth:`__call__`) and the thread making an ask (:meth:`run`)
    share the fields under a lock of the step's own, never held during a call."""

    def __init__(
        self,
        metrics: Metrics,
        authority: Callable[[str], object] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._make = authority
        self._metrics = metrics
        self._clock = clock
        self._authority: object | None = None
        self._made_for: tuple[str, Limits] | None = None
        self._guard = threading.Lock()
        self._wanted: UpstreamAsk | None = None  # planned, not taken yet
        self._asking: UpstreamAsk | None = None  # taken: its calls are under way
        self._dropped: UpstreamAsk | None = None  # under way, but nothing is wanted any more
        self._idle = threading.Event()
        self._idle.set()
        self._answer: tuple[Basis, UpstreamIssuer] | None = None
        self._handed: tuple[Basis, UpstreamIssuer] | None = None  # handed, its step not in force yet
        self._pending: tuple[tuple[str, str], IssuerRequest, str] | None = None  # ((upstream, root), …)
        self._reported: str | None = None  # the last problem logged (reported once)
        self.failures = 0  # attempts that got no issuer while one is wanted, since the last success
        self._last_problem: str | None = None
        self._last_success: datetime | None = None

    # --- under the lifecycle lock -------------------------------------------------------------

    def __call__(
        self,
        bundle: TrustBundle,
        state: RotationState,
        now: datetime,
        policy: RotationPolicy,
        limits: Limits = (5.0, 2),
    ) -> UpstreamIssuer | None:
        """The upstream's new issuer for this bundle when rule 5 wants one now and an ask has
        answered, else None (nothing due; an ask is planned, under way, or failed: logged)."""
        upstream = policy.upstream
        if upstream is not None:
            self.configured()
        due = (
            upstream is not None
            and held_root_key(bundle) is None  # the root key signs, as without an upstream
            and issuer_prepare_due(bundle, state, now, policy)
        )
        with self._guard:
            if not due or upstream is None:
                self._wanted, self._answer, self._handed, self._pending = None, None, None, None
                self._dropped = self._asking  # its failure would say "failing" until the next check
                self._settle(upstream)
                return None
            self._dropped = None  # wanted (again)
            root = active_root(bundle)
            basis = (upstream, fingerprint(root), fingerprint(bundle.issuer))
            answer, self._answer = self._answer, None
            if answer is None and self._handed is not None and self._handed[0] == basis:
                answer = self._handed  # handed before, but its step's write failed or was lost
            if answer is not None and answer[0] == basis:
                self._handed = answer  # until a bundle with it prepared is in force: not due
                return answer[1]
            self._handed = None
            if answer is not None:
                log.info(
                    "rotation: dropped the issuer %s signed: the bundle's active root or issuer changed "
                    "while it was asked; asking again",
                    upstream,
                )
            if self._pending is not None and self._pending[0] != basis[:2]:
                self._pending = None  # asked of another upstream, or under another root
            if self._asking is None:
                self._wanted = UpstreamAsk(
                    upstream,
                    self._authority_for(upstream, limits),
                    policy,
                    kept_issuer_key(bundle.issuer_key),  # a KMS issuer key is certified again
                    root,
                    bundle.issuer.not_valid_after_utc,
                    basis,
                    self._pending[1:] if self._pending is not None else None,
                )
            return None

    @property
    def answered(self) -> bool:
        """Whether an answer waits to be handed to the rules."""
        return self._answer is not None

    def configured(self) -> None:
        """An upstream is configured: its metrics exist (at 0 until an attempt fails)."""
        self._metrics.upstream()

    def report(self, upstream: str | None) -> dict[str, Any] | None:
        """The ``upstream`` entry of ``/healthz`` when one is configured, else None."""
        if upstream is None:
            return None
        with self._guard:
            return {
                "authority": upstream,
                "failing": self.failures > 0,
                "failures": self.failures,
                "last_problem": self._last_problem,
                "last_success": self._last_success.isoformat() if self._last_success else None,
                "asking": self._asking is not None,
                "pending": self._pending[2] if self._pending is not None else None,
            }

    # --- without the lock ---------------------------------------------------------------------

    def take(self) -> UpstreamAsk | None:
        """The ask planned by the last decision, now under way (None: none planned)."""
        with self._guard:
            ask, self._wanted = self._wanted, None
            if ask is not None:
                self._asking = ask
                self._idle.clear()
            return ask

    @property
    def idle(self) -> bool:
        """No ask is under way."""
        return self._idle.is_set()

    def wait_idle(self) -> None:
        """Return once no ask is under way (each is bounded by the adapter's timeouts)."""
        self._idle.wait()

    def run(self, ask: UpstreamAsk) -> None:
        """Make ``ask`` (a taken one): its answer waits for the next decision; a failure is
        logged, counted and reported. Never raises."""
        try:
            answer = self._ask(ask)
        except Exception as e:  # a failed ask must never end the thread making it
            log.debug("rotation: asking %s for an issuer failed", ask.upstream, exc_info=True)
            message = f"rotation: {ask.upstream} gave no new issuer ({type(e).__name__}: {e})"
            self._failed(ask, "other", message, logging.ERROR)
            answer = None
        with self._guard:
            if answer is not None:
                if self.failures:
                    log.warning(
                        "rotation: %s signed a new issuer after %d failed attempt(s)",
                        ask.upstream,
                        self.failures,
                        extra={"event": "upstream_recovered", "problem": self._last_problem},
                    )
                self._answer = (ask.basis, answer)
                self._pending, self._reported, self.failures = None, None, 0
                self._last_success = self._clock()
                self._metrics.upstream().failing.set(0)
            self._asking = self._dropped = None
            self._idle.set()

    def _ask(self, ask: UpstreamAsk) -> UpstreamIssuer | None:
        from adapters.acm_pca import UpstreamPending

        now = self._clock()
        request, resume = ask.pending if ask.pending is not None else (None, None)
        policy, upstream = ask.policy, ask.upstream
        try:
            if request is None:
                request = issuer_request(
                    policy.ca_identity,
                    policy.algorithm,
                    now,
                    lifetime=policy.issuer_lifetime,
                    backdate=policy.clock_skew,
                    key=ask.key,
                )
            certificate, chain = ask.authority.issue_issuer(
                request,
                resume=resume,
                expect_root=ask.root,
                issued=partial(self._issued, ask, request),
                outlive=ask.outlive,
            )
            issuer_chain, roots = accept_issued(request, certificate, chain, self._clock())
            if roots[0] != ask.root:
                raise BundleError(
                    f"{upstream} signed the issuer under the root {roots[0].subject.rfc4514_string()}, "
                    f"not the bundle's active root {ask.root.subject.rfc4514_string()}: the Private CA's "
                    "hierarchy changed; move the CA to it with `sentryca bundle import` (both roots as "
                    "anchors) before the issuer expires"
                )
            if issuer_chain[0].not_valid_after_utc <= ask.outlive:  # the rules would drop it unsaid
                raise BundleError(
                    f"{upstream} signed an issuer valid only until "
                    f"{issuer_chain[0].not_valid_after_utc.isoformat()}, no later than the current one "
                    f"({ask.outlive.isoformat()})"
                )
        except UpstreamPending as e:
            with self._guard:
                self._pending = (ask.basis[:2], request, e.certificate_arn) if request is not None else None
            self._failed(ask, "upstream_pending", f"rotation: {e}", logging.WARNING)
            return None
        except CAError as e:
            transient = e.reason in ("upstream_throttled", "upstream_unreachable")
            if not transient and e.reason != "upstream_denied":  # a certificate issued or pending
                with self._guard:  # survives throttling and a denied poll, not a refusal
                    self._pending = None
            self._failed(
                ask,
                e.reason,
                f"rotation: {upstream} gave no new issuer ({e}); still serving the current issuer, "
                "retrying at the next expiry check",
                logging.WARNING if transient else logging.ERROR,
            )
            return None
        return issuer_chain, request.key

    # --- helpers --------------------------------------------------------------------------------

    def _issued(self, ask: UpstreamAsk, request: IssuerRequest, arn: str) -> None:
        """IssueCertificate answered ``arn`` for ``request``: remembered before it is polled, so
        a poll that fails resumes it at the next attempt instead of asking for another."""
        with self._guard:
            self._pending = (ask.basis[:2], request, arn)

    def _authority_for(self, upstream: str, limits: Limits) -> object:
        if self._authority is None or self._made_for != (upstream, limits):
            if self._make is None:
                from adapters.acm_pca import bounded_authority

                timeout, attempts = limits
                self._authority = bounded_authority(upstream, timeout, attempts, polls=POLLS, cap=POLL_CAP)
            else:
                self._authority = self._make(upstream)
            if self._made_for is None or self._made_for[0] != upstream:
                self._pending = None
            self._made_for = (upstream, limits)
        return self._authority

    def _settle(self, upstream: str | None) -> None:
        """Nothing is wanted from the upstream (any more): not failing. Under the guard."""
        self.failures, self._reported = 0, None
        if upstream is not None or self._made_for is not None:  # its metrics are registered
            self._metrics.upstream().failing.set(0)

    def _failed(self, ask: UpstreamAsk, reason: str, message: str, level: int) -> None:
        with self._guard:
            if ask is self._dropped:  # nothing is wanted from the upstream any more: not failing
                log.debug("%s (no issuer is wanted any more)", message)
                return
            self.failures += 1
            self._last_problem = reason
            self._metrics.upstream().failed(reason)
            first = reason != self._reported
            self._reported = reason
        if first:
            log.log(
                level,
                "%s",
                message,
                extra={"event": "upstream_failed", "problem": reason, "upstream": ask.upstream},
            )
        else:
            log.debug("%s", message)
