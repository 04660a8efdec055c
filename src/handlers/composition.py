"""The composition root: builds the store, bundle, validators and signer from a Config.

The server, the CLI (and later the serverless handlers) all build through here.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from adapters.stores import BundleStore, Retry, StoredBundle, load_or_create_stored, open_store
from ca_core.bundle import TrustBundle, generate_bundle
from ca_core.config import Config
from ca_core.errors import BundleError, ConfigError
from ca_core.rotation import RotationPolicy
from ca_core.service import Signer, SigningPolicy
from ca_core.validators import InsecureValidator, TokenValidatorKind, Validator

log = logging.getLogger(__name__)


def signing_policy(cfg: Config) -> SigningPolicy:
    """The issuance settings of ``cfg``."""
    return SigningPolicy(
        trust_domain=cfg.trust_domain,
        namespace=cfg.namespace,
        workload_ttl=cfg.workload_cert_ttl,
        clock_skew=cfg.allowed_clock_skew,
    )


def stale_signing_bound(cfg: Config) -> timedelta:
    """How long a CA running with ``cfg`` may go on signing with an issuer after another writer
    (a replica, a worker, the CLI) activated a new one in the store: ``--store-poll-interval``
    when set (the poll reloads any new version). Without polling, ``--expiry-check-interval``:
    ``CertificateAuthority.maintain`` then reads the store only when its own rotation check, run
    at that interval, finds a step due; for an activation it holds the same prepared root, so it
    finds the same step due, loses the conditional write and reloads the store. (A prepared root
    it never loaded is seen only at a restart: the runbook says so.)"""
    return cfg.store_poll_interval or cfg.expiry_check_interval


def rotation_policy(cfg: Config) -> RotationPolicy:
    """The rotation settings of ``cfg`` (``ca_core.rotation``): names and key algorithm of
    generated roots and issuers, ``--auto-rotate``, ``--root-propagation-window``, and how long a
    leaf signed by a retired issuer may still be valid: the workload TTL, plus the clock skew,
    plus :func:`stale_signing_bound` (another CA signs with the old issuer until it notices)."""
    policy = signing_policy(cfg)
    return RotationPolicy(
        trust_domain=cfg.trust_domain,
        ca_identity=policy.ca_identity,
        auto=cfg.auto_rotate,
        propagation_window=cfg.root_propagation_window,
        leaf_bound=cfg.workload_cert_ttl + cfg.allowed_clock_skew + stale_signing_bound(cfg),
        clock_skew=cfg.allowed_clock_skew,
        algorithm=cfg.ca_key_algorithm,
    )


def store_retry() -> Retry:
    """Start-up retries for a store that cannot be reached: 5 attempts, exponential backoff from
    0.5 s with full jitter (the SDK's own retries of throttling come on top)."""
    return Retry(sleep=time.sleep, random=random.random)


def build_store(cfg: Config) -> BundleStore:
    """The configured trust-bundle store (raises ConfigError for an unusable URL)."""
    return open_store(cfg.store_url, cfg.file_names, kubeconfig=cfg.kubeconfig)


def listens_on_loopback_only(cfg: Config) -> bool:
    """True when ``--listen-address`` is ``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    address = cfg.listen_address.strip("[]")
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_insecure_allowed(cfg: Config) -> None:
    """INSECURE signs for anyone who asks: on an address reachable from a network it needs the
    explicit opt-in ``--allow-insecure-on-network`` (SPEC §6). Raises ConfigError otherwise."""
    if listens_on_loopback_only(cfg):
        return
    if not cfg.allow_insecure_on_network:
        raise ConfigError(
            f"--listen-address {cfg.listen_address} is reachable from a network, and the only token "
            "validator would be INSECURE, which signs any identity for anyone who asks. Configure a "
            "JWKS validator (--config) or kubernetes mode, or opt in explicitly with "
            "--allow-insecure-on-network true"
        )
    log.warning(
        "the INSECURE validator is enabled on %s (--allow-insecure-on-network): any caller that "
        "reaches this address can obtain any workload identity",
        cfg.listen_address,
    )


def build_validators(cfg: Config) -> tuple[dict[TokenValidatorKind, Validator], TokenValidatorKind | None]:
    """Enabled validators and the default one (SPEC §6, §7; Sentry's selection rules).

    kubernetes mode: KUBERNETES (the default), plus JWKS when configured.
    standalone without ``tokenValidators``: INSECURE (the default).
    standalone with JWKS configured: only JWKS, no default (requests must name it).
    Raises ConfigError when a validator cannot be built (Kubernetes config, JWKS source).
    """
    ca_identity = signing_policy(cfg).ca_identity
    validators: dict[TokenValidatorKind, Validator] = {}
    default: TokenValidatorKind | None = None
    if cfg.effective_mode == "kubernetes":
        from ca_core.validators_kubernetes import KubernetesApi, KubernetesValidator

        api = KubernetesApi.connect(cfg.kubeconfig)
        validators[TokenValidatorKind.KUBERNETES] = KubernetesValidator(api, ca_identity, cfg.token_audience)
        default = TokenValidatorKind.KUBERNETES
    elif cfg.jwks is None:
        check_insecure_allowed(cfg)
        validators[TokenValidatorKind.INSECURE] = InsecureValidator()
        default = TokenValidatorKind.INSECURE
    if cfg.jwks is not None:
        from ca_core.validators_jwks import JwksValidator

        validators[TokenValidatorKind.JWKS] = JwksValidator.from_settings(cfg.jwks, ca_identity)
    log.info(
        "token validators: %s (default: %s)",
        ", ".join(k.name for k in validators),
        default.name if default else "none; requests must name one",
    )
    return validators, default


@dataclass(frozen=True)
class LoadedBundle:
    bundle: TrustBundle
    version: str
    created: bool
    stored: StoredBundle  # as read (or read back after the create): for ``store.publish_public``


def load_bundle(
    cfg: Config, store: BundleStore, now: datetime, *, create_if_empty: bool = True, publish: bool = True
) -> LoadedBundle:
    """Load the store's bundle, or generate one (SPEC §4) when the store is empty (SPEC §5).

    create_if_empty=False (a restart) raises BundleError for an empty store instead: a new CA is
    only ever made at a first start or by an explicit operator verb. publish=True repairs the
    store's public part from the loaded bundle (a first start: no current root, so loading is
    acceptance); a running CA passes False and publishes once its trust-continuity check
    accepted the bundle (``store.publish_public(loaded.stored)``).
    """
    policy = signing_policy(cfg)

    def generate() -> TrustBundle:
        if not create_if_empty:
            raise BundleError(
                f"{store.description} holds no trust bundle; a restart never creates a new CA "
                "(start the CA, or use `sentryca bundle init`, to create one)"
            )
        log.info(
            "no trust bundle in %s: generating a new root and issuer (%s)",
            store.description,
            cfg.ca_key_algorithm.value,
        )
        return generate_bundle(cfg.trust_domain, policy.ca_identity, now, algorithm=cfg.ca_key_algorithm)

    bundle, stored, created = load_or_create_stored(store, generate, store_retry())
    if publish and not created:
        store.publish_public(stored)
    return LoadedBundle(bundle, stored.version, created, stored)


def build_signer(
    cfg: Config,
    bundle: TrustBundle,
    validators: tuple[dict[TokenValidatorKind, Validator], TokenValidatorKind | None] | None = None,
) -> Signer:
    """A Signer over ``bundle`` with the policy of ``cfg`` and ``validators`` (enabled, default),
    built from ``cfg`` when not given."""
    enabled, default = validators if validators is not None else build_validators(cfg)
    return Signer(bundle, signing_policy(cfg), enabled, default)
