"""The long-lived CA process: ``CertificateAuthority`` with the lifecycle of design §8.

Created idle; ``start(config)`` loads (or creates) the trust bundle, issues the CA's own TLS
server certificate, serves gRPC (TLS), ``/healthz``/``/livez`` and ``/metrics``, and runs the
background upkeep; ``stop()`` shuts all of it down and leaves the CA idle; ``restart(config)``
swaps bundle, validators and settings in place when the listeners are unchanged (no dropped
calls, no refused connections); a listener moving to another port is opened first, then the old
one drains; only a listener changing on the port it is bound to is stopped, then started.

A restart swaps only what changed: validators whose settings are unchanged
(``ca_core.policy.ValidatorSettings``) are kept, with their key caches and API clients; a store poll
applies the content it read, and a rotation step the items it wrote, without reading the store
again. Collaborators: ``listeners``, ``server_certificate``, ``upkeep``, ``readiness``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
import grpc.aio

from adapters.stores import BundleStore, StoredBundle
from ca_core import policy
from ca_core.bundle_settings import settings_of
from ca_core.certs import check_issuer_valid
from ca_core.config import Config
from ca_core.continuity import check_replacement
from ca_core.errors import BundleError, FailedPrecondition
from ca_core.expiry import ExpiryFinding
from ca_core.service import Signer
from ca_core.validators import TokenValidatorKind, Validator

from .. import composition
from ..metrics import Metrics
from .federation import Federation, federation_settings
from .listeners import Listeners
from .readiness import check_expiry, publish_bundle, publish_public, readiness_report
from .server_certificate import ServedCertificate
from .state import AlreadyRunning, NotRunning, State, utc_now
from .upkeep import Upkeep

log = logging.getLogger("sentryca")


class CertificateAuthority:
    """The CA service. ``clock``: returns aware UTC now (injected in tests).

    Thread-safe: start/stop/restart and the upkeep rounds are serialised by one lock; a second
    guards the swap of the state in force and its server certificate, which calls read at call
    time.
    """

    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        *,
        reuse_port: bool = False,
        http_address: str | None = None,
        count_shared_events: bool = True,
        upstream_authority: Callable[[str], object] | None = None,
    ) -> None:
        """``reuse_port``: bind the gRPC port with SO_REUSEPORT (the worker processes of
        ``handlers.workers`` share one port); ``http_address``: bind /healthz and /metrics there
        instead of ``--listen-address`` (a worker's, reached only by its supervisor);
        ``count_shared_events``: see :class:`~handlers.metrics.Metrics`; ``upstream_authority``: of
        :class:`~.upstream_step.UpstreamIssuerStep`."""
        self._clock = clock
        self._lock = threading.RLock()  # start/stop/restart/maintain
        self._swap_lock = threading.Lock()  # the state in force and its server certificate
        self._state: State | None = None
        self._federation: Federation | None = None  # --oidc-federation-bucket (design §9.9)
        self.metrics = Metrics(count_shared_events)
        self._certs = ServedCertificate(clock, self.metrics, self._swap_lock, lambda: self._state)
        self._listeners = Listeners(
            clock=clock,
            metrics=self.metrics,
            certs=self._certs,
            swap_lock=self._swap_lock,
            signer=lambda: self.signer,
            readiness=self.readiness,
            reuse_port=reuse_port,
            http_address=http_address,
            jwks=self.jwks,
        )
        self._upkeep = Upkeep(
            lock=self._lock,
            clock=clock,
            metrics=self.metrics,
            certs=self._certs,
            in_force=lambda: self._state,
            apply=self._apply_stored,
            check_expiry=self._check_expiry,
            refresh_health=self._listeners.refresh_health,
            upstream_authority=upstream_authority,
        )

    # --- what is in force ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state is not None

    @property
    def server_certificate_error(self) -> str | None:
        """Why the CA's own TLS certificate could not be issued, or None."""
        return self._certs.error

    @property
    def config(self) -> Config | None:
        return self._state.config if self._state else None

    @property
    def signer(self) -> Signer:
        """The signer in force (raises NotRunning when idle); ``signer.validators`` are the
        validator objects in force."""
        state = self._state
        if state is None:
            raise NotRunning("the CA is not running")
        return state.signer

    @property
    def grpc_port(self) -> int | None:
        """The bound gRPC port, or None when gRPC is not served."""
        return self._listeners.grpc_port

    @property
    def healthz_port(self) -> int | None:
        """The bound port of ``/healthz`` and ``/livez``, or None when idle."""
        return self._listeners.healthz_port

    @property
    def metrics_port(self) -> int | None:
        """The bound port of ``/metrics``, or None (idle, or metrics switched off)."""
        return self._listeners.metrics_port

    @property
    def oidc_port(self) -> int | None:
        """The bound port of the OIDC discovery server, or None (idle, or ``--oidc-enabled`` off)."""
        return self._listeners.oidc_port

    def jwks(self) -> bytes | None:
        """The JWKS document of the bundle in force (``composition.bundle_jwks``), or None."""
        state = self._state
        return composition.bundle_jwks(state.signer.bundle if state is not None else None)

    @property
    def grpc_server(self) -> grpc.aio.Server | None:
        """The gRPC server taking new calls (the same object across in-place restarts), or None."""
        return self._listeners.grpc_server

    @property
    def draining(self) -> bool:
        """Whether a gRPC server retired by a restart to another port still has calls in flight."""
        return self._listeners.draining

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, config: Config) -> None:
        """Build the CA from ``config`` and serve; returns once serving.

        Raises AlreadyRunning, or CAError (BundleError, ConfigError, Unavailable) with a clear
        message when the CA cannot be built; nothing keeps running after a failed start.
        """
        with self._lock:
            if self._state is not None:
                raise AlreadyRunning("the CA is already running")
            state = self._build_state(
                config,
                composition.build_store(config),
                cluster_domain=composition.derive_cluster_domain(config),
            )
            self._start_with(state)
            publish_bundle(state, None, self.metrics)

    def _start_with(self, state: State) -> None:
        config = state.config
        try:
            self._certs.install(state, self._certs.issue(state))
            self._serve(state)
        except BaseException:
            self._shutdown(grace=0)
            raise
        if self.grpc_port is None:
            log.error(
                "CA started WITHOUT gRPC (%s): healthz :%s reports why; trust anchors in %s",
                self._certs.error,
                self.healthz_port,
                state.store.description,
            )
            return
        log.info(
            "CA started: gRPC %s:%s (TLS), healthz :%s%s; trust domain %s; trust anchors in %s",
            config.listen_address,
            self.grpc_port,
            self.healthz_port,
            f", metrics :{self.metrics_port}" if self.metrics_port else "",
            config.trust_domain,
            state.store.description,
        )
        log.debug("configuration: %s", config.describe())
        bundle = state.signer.bundle
        warnings = [f"lifetimes: {w}" for w in policy.lifetime_warnings(config, settings_of(bundle))]
        for warning in warnings + policy.key_option_warnings(config, bundle):
            log.warning("%s", warning)

    def _serve(self, state: State) -> None:
        self._state = state  # before the first call can arrive
        # upkeep first: /healthz is degraded from its first answer when serving instead of a refused bundle
        self._upkeep.start(state)
        if state.refused is not None:
            self._upkeep.refused(state, state.refused.version, state.refused.detail)
        self._listeners.open(state.config)
        self._check_expiry(state)
        self._federation = Federation.of(state.config, self.jwks)
        if self._federation is not None:
            self._federation.start()

    @property
    def federation(self) -> Federation | None:
        """The publisher of the OIDC documents for serverless federation, or None."""
        return self._federation

    def _federate(self, old: Config, new: Config) -> None:
        """After a new state went in force: the same federation settings → look at its JWKS now;
        other settings → the publisher of the new ones replaces the old one."""
        if federation_settings(old) == federation_settings(new):
            if self._federation is not None:
                self._federation.notify()
            return
        if self._federation is not None:
            self._federation.stop()
        self._federation = Federation.of(new, self.jwks)
        if self._federation is not None:
            self._federation.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop serving: in-flight calls get ``grace`` seconds; returns when everything has
        stopped and the ports are closed. The CA is then idle and can start again."""
        with self._lock:
            if self._state is None:
                return
            self._shutdown(grace)
            log.info("CA stopped")

    def _shutdown(self, grace: float) -> None:
        federation, self._federation = self._federation, None
        if federation is not None:
            federation.stop()
        self._upkeep.stop()
        self._listeners.close(grace)
        self._state = None
        self._certs.clear()

    def restart(self, config: Config, *, force: bool = False) -> None:
        """Apply ``config`` (design §8.3). The new state is built first; if it cannot be (bad
        bundle or settings, an empty store) the running CA keeps serving its current state and the
        error is raised. Validators whose settings are unchanged are kept. A bundle whose trust
        anchors drop the active root is refused unless ``force``, or that root is released (trust
        continuity: ``ca_core.continuity``). Same listeners → in-place swap. A listener with a new
        port (or port 0) → the new one is opened first, then the old one stops accepting and its
        calls in flight complete (up to DRAIN_GRACE seconds). A listener that changes but stays on
        the port it is bound to (another address, other gRPC options) → stop, then start."""
        with self._lock:
            old = self._state
            if old is None:
                self.start(config)
                return
            store = composition.build_store(config)
            new = self._build_state(
                config,
                store,
                previous=old,
                create_if_empty=force,
                publish=False,
                cluster_domain=composition.derive_cluster_domain(config),
            )
            self._put_in_force(old, new, force=force)
            if self._state is not None:
                self._upkeep.store_backs(self._state)

    def _apply_stored(self, old: State, stored: StoredBundle | None) -> State:
        """Restart in place on ``old``'s config and store with the store's content ``stored``
        (read by a store poll, or just written by a rotation step; None: read it now), trust
        continuity applying. Returns the state in force afterwards; raises CAError as
        :meth:`restart` does, the CA then serving ``old``."""
        with self._lock:
            new = self._build_state(
                old.config,
                old.store,
                previous=old,
                stored=stored,
                create_if_empty=False,
                publish=False,
                cluster_domain=old.derived_cluster_domain,
            )
            self._put_in_force(old, new, force=False)
            return self._state or old

    def _put_in_force(self, old: State, new: State, *, force: bool) -> None:
        check_replacement(
            old.signer.bundle,
            old.stored.items if old.stored else {},
            new.signer.bundle,
            new.stored.items if new.stored else {},
            self._clock(),
            new.store.description,
            force=force,
        )
        if not self._listeners.can_hand_over(old.config, new.config):
            # A listener that stays on the port it is bound to but changes (address, gRPC
            # options) cannot be opened twice (so_reuseport is off): stop, then start, and
            # connections are refused in between. Everything else is handed over below.
            self.stop()
            self._start_with(new)
            publish_public(new)
            publish_bundle(new, old, self.metrics)
            return
        self._hand_over(old, new)
        publish_public(new)
        publish_bundle(new, old, self.metrics)
        self._federate(old.config, new.config)
        self._check_expiry(new)
        self._listeners.refresh_health()

    def _hand_over(self, old: State, new: State) -> None:
        """Put ``new`` in force without refusing a connection: a server certificate is issued for
        it, and state and certificate are swapped under the listeners (design §8.3)."""
        cert = self._certs.issue(new)

        def commit() -> None:  # under the swap lock
            self._state = new

        self._listeners.hand_over(old.config, new.config, cert, commit)

    def _build_state(
        self,
        config: Config,
        store: BundleStore,
        *,
        previous: State | None = None,
        stored: StoredBundle | None = None,
        create_if_empty: bool = True,
        publish: bool = True,
        cluster_domain: str | None = None,
    ) -> State:
        """The state for ``config`` over ``store``. previous: the state in force, whose validators
        are kept when their settings are unchanged; stored: the store's content already at hand
        (else it is loaded); publish: repair the store's public part from the loaded bundle (a
        first start, once the store's record of the last accepted bundle accepted it, or the
        accepted one served instead: ``composition.screen_start``); a restart passes False and
        publishes after its continuity check; cluster_domain: what the start or restart looked up
        (``composition.derive_cluster_domain``; a store poll keeps the state in force's)."""
        settings = policy.ValidatorSettings.of(config)
        validators: tuple[dict[TokenValidatorKind, Validator], TokenValidatorKind | None]
        if previous is not None and previous.validator_settings == settings:
            validators = dict(previous.signer.validators), previous.signer.default_validator
            log.debug("token validators: settings unchanged, the running ones kept")
        else:
            # Validators first: a configuration that cannot run must not leave a new CA in the store.
            validators = composition.build_validators(config)
        refused = None
        try:
            loaded = composition.load_bundle(
                config, store, self._clock(), create_if_empty=create_if_empty, publish=False, stored=stored
            )
        except BundleError as e:  # unusable content: a start serves the accepted one if kept
            if previous is not None:
                raise
            loaded, refused = composition.accepted_instead(store, e)
        if previous is None and refused is None:  # a start: the store's record judges (§5.4)
            loaded, refused = composition.screen_start(store, loaded, self._clock())
        if previous is None and refused is None:  # a start may add the JWT key (§11); never a restart
            loaded = composition.ensure_jwt_key(config, store, loaded, self._clock())
        if publish and not loaded.created:
            store.publish_public(loaded.stored)
        if loaded.created:
            log.info("generated a new trust bundle in %s", store.description)
        signer = composition.build_signer(config, loaded.bundle, validators, cluster_domain)
        state = State(
            config,
            store,
            signer,
            loaded.version,
            settings,
            loaded.created,
            loaded.stored,
            refused,
            cluster_domain,
        )
        issuer = loaded.bundle.issuer
        log.info(
            "issuer certificate %s valid until %s",
            issuer.subject.rfc4514_string(),
            issuer.not_valid_after_utc.isoformat(),
        )
        try:
            check_issuer_valid(issuer, self._clock())
        except FailedPrecondition as e:
            log.error("%s; the CA starts but reports not-ready and refuses to sign", e)
            self.metrics.sign_failure.labels(category="issuer_invalid", reason=e.reason)  # series at 0
        return state

    # --- health, expiry and upkeep ---------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details) for ``/healthz``: bundle loaded and issuer valid now, server
        certificate issued, validators ready, gRPC serving; ``degraded`` names a problem of the
        store, ``upstream`` the upstream authority's state (neither makes the CA not ready)."""
        return readiness_report(
            self._state,
            self._clock(),
            self._certs.current,
            self._certs.error,
            self._listeners.grpc_port,
            *self._upkeep.reports(self._state),
        )

    def check_expiry(self) -> list[ExpiryFinding]:
        """Run the expiry rule now (design §8.5): log each finding at its level, update gauges."""
        state = self._state
        if state is None:
            raise NotRunning("the CA is not running")
        return self._check_expiry(state)

    def _check_expiry(self, state: State) -> list[ExpiryFinding]:
        return check_expiry(state, self._clock(), self.metrics)

    def maintain(self) -> datetime:
        """One round of background upkeep at the clock's now (design §8.5): the store poll when
        due; when the expiry check is due, first the rotation steps due (:meth:`rotate_if_due`),
        then the expiry check; the server certificate's renewal when due (at half its life; after
        a failure, again a minute later). Serialised with start/stop/restart, but for the calls to
        an upstream authority: made without the lock, their answer then handed to the rules by a
        second round (design §5.16). Returns when the next round is due; NotRunning when idle."""
        return self._upkeep.maintain()

    def rotate_if_due(self) -> bool:
        """Take the rotation steps due now (``ca_core.rotation.rules.advance``: pruning and activations
        of a rotation in progress always; starting one only with ``--auto-rotate``). Returns
        whether this CA wrote a step. Raises NotRunning when idle."""
        with self._lock:
            state = self._state
            if state is None:
                raise NotRunning("the CA is not running")
            return self._upkeep.rotate(state, self._clock())[1]
