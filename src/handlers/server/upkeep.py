"""The background upkeep of a running CA (design §8.4–8.5): the store poll, the rotation steps
due (``ca_core.rotation``), the expiry check, the server certificate's renewal and the health
refresh, run by one watcher thread that never waits for the lifecycle lock."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from adapters.stores import StoredBundle
from ca_core import policy
from ca_core.errors import CAError, Unavailable
from ca_core.expiry import ExpiryFinding
from ca_core.rotation import codec, rules

from ..logs import audit_rotation
from ..metrics import Metrics
from .server_certificate import ServedCertificate
from .state import NotRunning, State

log = logging.getLogger("sentryca")

# Apply the store's content to the running CA in place, on the config and store of the state in
# force (design §8.4): (state in force, the content already read or just written, or None to read
# it) → the state in force afterwards. Raises CAError as ``restart`` does.
ApplyStored = Callable[[State, StoredBundle | None], State]


class Upkeep:
    """Rounds of upkeep for one CA. ``lock`` is the CA's lifecycle lock (held by the caller of
    :meth:`round` and :meth:`rotate`; the watcher only ever tries it); ``in_force`` returns the
    state in force (None: idle); ``apply`` puts the store's content in force; ``check_expiry``
    runs the expiry check over a state; ``refresh_health`` publishes readiness to health
    watchers."""

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
    ) -> None:
        self._lock = lock
        self._clock = clock
        self._metrics = metrics
        self._certs = certs
        self._in_force = in_force
        self._apply = apply
        self._check_expiry = check_expiry
        self._refresh_health = refresh_health
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._next_expiry_check = datetime.max.replace(tzinfo=UTC)
        self._next_store_poll = 0.0  # time.monotonic() of the next store poll
        self._refused_version: str | None = None

    def start(self, state: State) -> None:
        """Schedule the first rounds for ``state`` (just put in force; its expiry check has run)
        and start the watcher thread."""
        cfg = state.config
        self._next_expiry_check = self._clock() + cfg.expiry_check_interval
        self._next_store_poll = time.monotonic() + cfg.store_poll_interval.total_seconds()
        self._certs.reset_retry()
        self._stop_watch = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(self._stop_watch,), name="expiry-watcher", daemon=True
        )
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher thread; returns once it ended (at once when called from it)."""
        self._stop_watch.set()
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
            state, _ = self.rotate(state, now)
            self._check_expiry(state)
            self._next_expiry_check = now + state.config.expiry_check_interval
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
            current = codec.parse_state(state.stored.items if state.stored else {}, bundle)
            result = rules.advance(bundle, current, now, policy.rotation_policy(state.config))
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
        written = None if version is None else StoredBundle(items, version)
        if written is None:
            log.info(
                "rotation: %s changed since it was loaded (another replica or an operator); loading it",
                state.store.description,
            )
        else:
            for step in result.steps:
                self._metrics.rotation_steps.labels(kind=step.kind, step=step.action).inc()
                log.log(logging.WARNING if step.action == "emergency" else logging.INFO, "%s", step.message)
                audit_rotation(step, state.store.description)
        try:
            return self._apply(state, written), written is not None
        except CAError as e:
            self._refuse(state, None, str(e))
            return state, written is not None

    def _poll_store(self, state: State) -> State:
        """When ``--store-poll-interval`` is set and due: read the store once; if its version
        differs from the bundle in force, apply what was read in place with the same config
        (design §8.4), which applies the trust-continuity rule. A refused or unreadable bundle is
        logged once per version and the CA keeps serving the bundle in force. Returns the state
        in force afterwards."""
        interval = state.config.store_poll_interval.total_seconds()
        if not interval or time.monotonic() < self._next_store_poll:
            return state
        self._next_store_poll = time.monotonic() + interval
        try:
            stored = state.store.load()
        except Unavailable as e:  # worth retrying at the next poll
            log.warning("store poll: cannot read %s: %s", state.store.description, e)
            return state
        except CAError as e:  # unreadable content: refused, reported once per distinct problem
            self._refuse(state, None, str(e))
            return state
        if stored is None or stored.version in (state.bundle_version, self._refused_version):
            return state
        log.info("store poll: %s has a new bundle version; restarting in place", state.store.description)
        try:
            return self._apply(state, stored)
        except Unavailable as e:
            log.warning("store poll: cannot apply the new bundle yet (%s); retrying at the next poll", e)
            return state
        except CAError as e:
            self._refuse(state, stored.version, str(e))
            return state

    def _refuse(self, state: State, version: str | None, problem: str) -> None:
        """Record a store content the poll will not apply (logged and counted once per version or,
        for content that cannot be read at all, once per distinct problem)."""
        key = version or problem
        if key == self._refused_version:
            return
        self._refused_version = key
        self._metrics.bundle_change_refused.inc()
        log.error(
            "store poll: the new bundle in %s was refused, still serving the one in force: %s",
            state.store.description,
            problem,
        )

    def _watch(self, stop: threading.Event) -> None:
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
            if stop.wait(min(max((wake - self._clock()).total_seconds(), 1.0), 300.0)):
                return
