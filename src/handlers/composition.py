"""The composition root: builds the store, bundle, validators and signer from a Config.

The server, the CLI (and later the serverless handlers) all build through here.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime

from ca_core.bundle import TrustBundle, generate_bundle
from ca_core.config import Config
from ca_core.service import Signer, SigningPolicy
from ca_core.stores import BundleStore, Retry, load_or_create, open_store
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


def store_retry() -> Retry:
    """Start-up retries for a store that cannot be reached: 5 attempts, exponential backoff from
    0.5 s with full jitter (the SDK's own retries of throttling come on top)."""
    return Retry(sleep=time.sleep, random=random.random)


def build_store(cfg: Config) -> BundleStore:
    """The configured trust-bundle store (raises ConfigError for an unusable URL)."""
    return open_store(cfg.store_url, cfg.file_names, kubeconfig=cfg.kubeconfig)


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


def load_bundle(cfg: Config, store: BundleStore, now: datetime) -> LoadedBundle:
    """Load the store's bundle, or generate one (SPEC §4) when the store is empty (SPEC §5)."""
    policy = signing_policy(cfg)

    def generate() -> TrustBundle:
        log.info(
            "no trust bundle in %s: generating a new root and issuer (%s)",
            store.description,
            cfg.ca_key_algorithm.value,
        )
        return generate_bundle(cfg.trust_domain, policy.ca_identity, now, algorithm=cfg.ca_key_algorithm)

    bundle, version, created = load_or_create(store, generate, store_retry())
    return LoadedBundle(bundle, version, created)


def build_signer(cfg: Config, bundle: TrustBundle) -> Signer:
    """A Signer over ``bundle`` with the validators and policy of ``cfg``."""
    validators, default = build_validators(cfg)
    return Signer(bundle, signing_policy(cfg), validators, default)
