"""The background upkeep of a running CA (design §8.4–8.5): the store poll, the rotation steps
due (``ca_core.rotation``), the expiry check, the server certificate's renewal and the health
refresh, run by one watcher thread that never waits for the lifecycle lock. The calls to an
upstream authority (design §5.16, :mod:`.upstream_step`) are made without that lock, on a thread
of their own that nothing waits for (a start, stop or restart never waits behind them); their
answer is handed to the rules at the next round.

Each read of the store (the poll; without polling, one read per expiry check) also tells whether
the store still backs the CA: found empty, unreadable, or holding a bundle that was refused, the
CA is **degraded** (:class:`StoreProblem`): one ERROR per distinct problem (``event=store_degraded``),
the gauge ``sentryca_store_degraded`` at 1, and a ``degraded`` entry in ``/healthz`` (still 200:
the CA serves the bundle in force), until a read finds the store backing it again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.kms import open_key as open_kms_key
from adapters.stores import StoredBundle, parse_stored
from ca_core import policy
from ca_core.bundle_settings import settings_of
from ca_core.errors import CAError, Unavailable
from ca_core.expiry import ExpiryFinding
from ca_core.rotation import codec, rules

from ..logs import audit_rotation
from ..metrics import Metrics
from .server_certificate import ServedCertificate
from .state import NotRunning, State
from .upstream_step import UpstreamAsk, UpstreamIssuerStep

log = logging.getLogger("sentryca")

# Apply the store's content to the running CA in place, on the config and store of the state in
# force (design §8.4): (state in force, the content already read or just written, or None to read
# it) → the state in force afterwards. Raises CAError as ``restart`` does.
ApplyStored = Callable[[State, StoredBundle | None], State]

STORE_EMPTY, STORE_UNREADABLE, BUNDLE_REFUSED = "store_empty", "store_unreadable", "bundle_refused"


@dataclass(frozen=True)
class StoreProblem:
    """Why the store no longer backs the bundle in force: ``problem`` (store_empty,
    store_unreadable, bundle_refused), the store, a sentence for the operator, since when, and the
    ``key`` that makes two findings the same problem (reported once)."""

    problem: str
    store: str
    detail: str
    since: datetime
    key: str

    def report(self) -> dict[str, Any]:
        """The ``degraded`` entry of ``/healthz``."""
        return {
            "problem": self.problem,
            "store": self.store,
            "detail": self.detail,
            "since": self.since.isoformat(),
            "serving": "the bundle in force",
        }


class Upkeep:
    """Rounds of upkeep for one CA. ``lock`` is the CA's lifecycle lock (held by the caller of
    :meth:`round` and :meth:`rotate`; the watcher only ever tries it); ``in_force`` returns the
    state in force (None: idle); ``apply`` puts the store's content in force; ``check_expiry``
    runs the expiry check over a state; ``refresh_health`` publishes readiness to health
    watchers; ``upstream_authority`` builds the adapter that :class:`UpstreamIssuerStep` asks for
    the issuers rule 5 wants (design §5.16), without the lifecycle lock."""

    def __init__(
        self,
        *,
        lock: threading.RLock,
        clock: Callable[[], datetime],
        metrics: Metrics,
        certs: ServedCertificate,
        in_force: Callable[[], State | None],
        apply: ApplyStored,
        check_expiry: Callable[[State], list[ExpiryFinding]],
        refresh_health: Callable[[], None],
        upstream_authority: Callable[[str], object] | None = None,
    ) -> None:
        self._lock = lock
        self._clock = clock
        self._metrics = metrics
        self._certs = certs
        self._in_force = in_force
        self._apply = apply
        self._check_expiry = check_expiry
        self._refresh_health = refresh_health
        self._upstream = UpstreamIssuerStep(metrics, upstream_authority, clock)
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._nudge = threading.Event()  # wakes the watcher: stopping, or the upstream answered
        self._next_expiry_check = datetime.max.replace(tzinfo=UTC)
        self._next_store_poll = 0.0  # time.monotonic() of the next store poll
        self._refused_version: str | None = None  # the last version refused (reported once)
        self._refusal: StoreProblem | None = None  # what was reported for it
        self._problem: StoreProblem | None = None
        self._seen_version: str | None = None  # a valid version not in force, reported once

    def start(self, state: State) -> None:
        """Schedule the first rounds for ``state`` (just put in force; its expiry check has run)
        and start the watcher thread."""
        cfg = state.config
        self._next_expiry_check = self._clock() + cfg.expiry_check_interval
        self._next_store_poll = time.monotonic() + cfg.store_poll_interval.total_seconds()
        self._certs.reset_retry()
        self._clear_problem(None)
        self._seen_version = None
        if cfg.upstream_authority is not None:
            self._upstream.configured()
        self._stop_watch, self._nudge = threading.Event(), threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(self._stop_watch, self._nudge), name="expiry-watcher", daemon=True
        )
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher thread; returns once it ended (at once when called from it)."""
        self._stop_watch.set()
        self._nudge.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()
        self._watcher = None

    def round(self) -> datetime:
        """One round at the clock's now (the caller holds the lifecycle lock): the store poll
        when due; when the expiry check is due, first the rotation steps due, then the check;
        the server certificate's renewal when due; the health refresh. Returns when the next
        round is due. Raises NotRunning when idle."""
        state = self._in_force()
        if state is None:
            raise NotRunning("the CA is not running")
        now = self._clock()
        state = self._poll_store(state)
        if now >= self._next_expiry_check:
            if not state.config.store_poll_interval:
                state = self._read_store(state, apply=False)  # the store still backs the CA?
            state, _ = self.rotate(state, now)
            self._check_expiry(state)
            self._next_expiry_check = now + state.config.expiry_check_interval
        elif self._upstream.answered:
            state, _ = self.rotate(state, now)  # the upstream's answer, to the rules
        self._certs.renew_if_due(state, now)
        self._refresh_health()
        due = self._certs.renewal_due()
        wake = self._next_expiry_check if due is None else min(self._next_expiry_check, due)
        if state.config.store_poll_interval:
            left = max(self._next_store_poll - time.monotonic(), 0.0)
            wake = min(wake, now + timedelta(seconds=left))
        return wake

    def rotate(self, state: State, now: datetime) -> tuple[State, bool]:
        """Compute the rotation steps due for the bundle in force and write them with
        ``store.replace_version(items, version in force)`` (the caller holds the lifecycle lock):
        with several replicas exactly one writes a step (design §5.13); a loser (the store
        changed since it loaded) loads the store's bundle instead. The writer counts each step
        (``sentryca_rotation_steps_total{kind,step}``), logs it and writes one audit record per
        step (``event=rotation_step``), then puts the items it wrote in force under the version
        token the store answered, without reading them back (trust continuity applies). Returns
        (the state in force, whether this CA wrote a step)."""
        bundle = state.signer.bundle
        try:
            current = codec.parse_state(
                state.stored.items if state.stored else {}, bundle, open_key=open_kms_key
            )
            prepared = current.prepared_root.root if current.prepared_root is not None else None
            rotation_policy = policy.bundle_rotation_policy(state.config, settings_of(bundle, prepared))
            limits = (state.config.upstream_timeout.total_seconds(), state.config.upstream_max_attempts)
            upstream_issuer = self._upstream(bundle, current, now, rotation_policy, limits)
            result = rules.advance(bundle, current, now, rotation_policy, upstream_issuer)
        except CAError as e:
            log.error("rotation: cannot evaluate the rotation state of %s: %s", state.store.description, e)
            return state, False
        if result is None:
            return state, False
        items = result.items()
        try:
            version = state.store.replace_version(items, state.bundle_version)
        except Unavailable as e:
            log.warning(
                "rotation: cannot write %s (%s); retrying at the next check", state.store.description, e
            )
            return state, False
        if version is None:
            log.info(
                "rotation: %s changed since it was loaded (another replica or an operator); loading it",
                state.store.description,
            )
            return self._read_store(state, apply=True), False
        for step in result.steps:
            self._metrics.rotation_steps.labels(kind=step.kind, step=step.action).inc()
            log.log(logging.WARNING if step.action == "emergency" else logging.INFO, "%s", step.message)
            audit_rotation(step, state.store.description)
        try:
            return self._apply(state, StoredBundle(items, version)), True
        except CAError as e:
            self._refused_version = version
            self._degrade(
                state,
                BUNDLE_REFUSED,
                version,
                f"the bundle this CA just wrote to {state.store.description} was refused, still serving "
                f"the one in force: {e}",
            )
            return state, True

    def _poll_store(self, state: State) -> State:
        """When ``--store-poll-interval`` is set and due: :meth:`_read_store`, applying a new
        version in place. Returns the state in force afterwards."""
        interval = state.config.store_poll_interval.total_seconds()
        if not interval or time.monotonic() < self._next_store_poll:
            return state
        self._next_store_poll = time.monotonic() + interval
        return self._read_store(state, apply=True)

    def _read_store(self, state: State, *, apply: bool) -> State:
        """Read the store once and judge it against the bundle in force (design §8.4). Empty,
        unreadable, or holding a bundle that is refused: the CA is degraded (reported once per
        distinct problem) and keeps serving the bundle in force. The version in force: healthy.
        Another version: with ``apply`` (the poll, a rotation step that lost its write) put in
        force in place with the same config, trust continuity applying; without (the check of a
        CA that does not poll) only parsed, and applied at the next restart. Returns the state in
        force afterwards."""
        where = state.store.description
        try:
            stored = state.store.load()
        except Unavailable as e:  # worth retrying at the next read
            self._degrade(
                state,
                STORE_UNREADABLE,
                f"{STORE_UNREADABLE}:{e.reason}",
                f"cannot read {where} ({e}); still serving the bundle in force",
            )
            return state
        except CAError as e:  # content that cannot be read as a bundle at all
            self._degrade(
                state,
                BUNDLE_REFUSED,
                str(e),
                f"the content of {where} is unusable ({e}); still serving the bundle in force",
            )
            return state
        if stored is None:
            self._degrade(state, STORE_EMPTY, STORE_EMPTY, lambda: self._empty_detail(state))
            return state
        if stored.version == state.bundle_version:
            self._clear_problem(state)
            return state
        if stored.version == self._refused_version:
            self._still_refused()  # refused before and reported: still degraded
            return state
        if not apply:
            try:
                parse_stored(state.store, stored)
            except CAError as e:
                self._refused_version = stored.version
                self._degrade(
                    state,
                    BUNDLE_REFUSED,
                    stored.version,
                    f"the bundle in {where} is unusable, still serving the one in force: {e}",
                )
                return state
            self._clear_problem(state)
            if stored.version != self._seen_version:
                self._seen_version = stored.version
                log.info(
                    "%s holds a bundle version other than the one in force; without "
                    "--store-poll-interval it is applied at the next restart (or rotation step)",
                    where,
                )
            return state
        log.info("store poll: %s has a new bundle version; restarting in place", where)
        try:
            state = self._apply(state, stored)
        except Unavailable as e:
            log.warning("store poll: cannot apply the new bundle yet (%s); retrying at the next poll", e)
            return state
        except CAError as e:
            self._refused_version = stored.version
            self._degrade(
                state,
                BUNDLE_REFUSED,
                stored.version,
                f"the new bundle in {where} was refused, still serving the one in force: {e}",
            )
            return state
        self._clear_problem(state)
        return state

    def _empty_detail(self, state: State) -> str:
        """What the operator reads about an empty store: what shows it held a bundle, and how to
        restore it."""
        where = state.store.description
        try:
            evidence = state.store.held_before()
        except CAError as e:
            evidence = f"(cannot tell what it held before: {e})"
        found = f": {evidence}" if evidence else ""
        return (
            f"{where} holds no trust bundle any more{found}. Still serving the bundle in force; "
            f"a restart would refuse to start. Restore it: `{policy.restore_command(where)}`"
        )

    def _degrade(self, state: State, problem: str, key: str, detail: str | Callable[[], str]) -> None:
        """Record that the store does not back the bundle in force: once per distinct problem
        (``key``), an ERROR (``event=store_degraded``) and, for a refused bundle, one count in
        ``sentryca_bundle_change_refused_total``; the gauge at 1. ``detail`` may be a callable,
        asked only for a new problem (it may read the store)."""
        self._metrics.store_degraded.set(1)
        if self._problem is not None and self._problem.key == key:
            return
        if callable(detail):
            detail = detail()
        self._problem = StoreProblem(problem, state.store.description, detail, self._clock(), key)
        if problem == BUNDLE_REFUSED:
            self._refusal = self._problem
            self._metrics.bundle_change_refused.inc()
        log.error(
            "store degraded (%s): %s",
            problem,
            detail,
            extra={"event": "store_degraded", "problem": problem, "store": state.store.description},
        )

    def _still_refused(self) -> None:
        """The store still holds the version refused last: that refusal is the problem again
        (after, say, a read that failed meanwhile), without a second report."""
        if self._refusal is not None:
            self._problem = self._refusal
            self._metrics.store_degraded.set(1)

    def _clear_problem(self, state: State | None) -> None:
        """The store backs the bundle in force (again): the gauge at 0, and a line once it was
        degraded. A version refused before is judged afresh should it come back."""
        self._metrics.store_degraded.set(0)
        self._refused_version, self._refusal = None, None
        problem, self._problem = self._problem, None
        if problem is not None and state is not None:
            log.warning(
                "store recovered: %s backs the bundle in force again (was %s since %s)",
                state.store.description,
                problem.problem,
                problem.since.isoformat(),
                extra={"event": "store_recovered", "problem": problem.problem, "store": problem.store},
            )

    def degraded(self) -> dict[str, Any] | None:
        """The ``degraded`` entry of ``/healthz`` (:meth:`StoreProblem.report`), or None."""
        problem = self._problem
        return None if problem is None else problem.report()

    def reports(self, state: State | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The ``degraded`` and ``upstream`` entries of ``/healthz`` for ``state`` in force (each
        None when there is nothing to say: idle, the store backs the bundle, no upstream)."""
        if state is None:
            return None, None
        return self.degraded(), self._upstream.report(state.config.upstream_authority)

    def maintain(self) -> datetime:
        """One :meth:`round` under the lifecycle lock; then, when it wants an issuer from the
        upstream, the calls made here without the lock (or, under way on the watcher's behalf,
        waited for), and a second round that hands their answer to the rules. Returns when the
        next round is due. Raises NotRunning when idle."""
        with self._lock:
            wake = self.round()
        ask = self._upstream.take()
        if ask is not None:
            self._upstream.run(ask)
        elif not self._upstream.idle:
            self._upstream.wait_idle()
        if not self._upstream.answered:
            return wake
        with self._lock:
            return self.round()

    def refused(self, state: State, version: str, detail: str) -> None:
        """A start refused the store's newest bundle (``version``) and serves the last accepted
        one: degraded (``bundle_refused``) until the store changes."""
        self._refused_version = version
        self._degrade(state, BUNDLE_REFUSED, version, detail)

    def store_backs(self, state: State) -> None:
        """A restart just loaded ``state`` from its store: whatever was degraded is over."""
        self._clear_problem(state)

    def _watch(self, stop: threading.Event, nudge: threading.Event) -> None:
        while True:
            # Never wait for the lifecycle lock here: stop() holds it while it joins this thread.
            if not self._lock.acquire(blocking=False):
                wake = self._clock() + timedelta(seconds=1)  # a start/stop/restart is under way
            else:
                try:
                    wake = self.round()
                except NotRunning:
                    return
                except Exception:
                    log.exception("background upkeep failed; retrying in a minute")
                    wake = self._clock() + timedelta(minutes=1)
                finally:
                    self._lock.release()
            ask = self._upstream.take()  # outside the lock, on a thread that nothing joins
            if ask is not None:
                threading.Thread(target=self._ask, args=(ask,), name="upstream-ask", daemon=True).start()
            if stop.is_set():  # stop() was called, from this thread too (a restart in a round)
                return
            nudge.wait(min(max((wake - self._clock()).total_seconds(), 1.0), 300.0))
            nudge.clear()
            if stop.is_set():
                return

    def _ask(self, ask: UpstreamAsk) -> None:
        """Make ``ask``; an answer wakes the watcher, whose next round hands it to the rules."""
        self._upstream.run(ask)
        if self._upstream.answered:
            self._nudge.set()  # the watcher of the latest start
