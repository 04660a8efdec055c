"""The composition root: builds the store, bundle, validators and signer from a Config.

Every entry point (the server, the CLI, the Lambda functions) builds through here, and this
module only wires: each decision it applies is ``ca_core.policy``'s. The heavier parts are
imported where they are built, so the expiry function, which needs only a store, loads neither
the signing nor the rotation code (its cold start is budgeted).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from adapters.stores import (
    BundleStore,
    FileBundleStore,
    Retry,
    StoredBundle,
    load_or_create_stored,
    open_store,
    parse_stored,
)
from ca_core.bundle import TrustBundle
from ca_core.config import Config
from ca_core.errors import BundleError

if TYPE_CHECKING:
    from ca_core.keys import PrivateKey
    from ca_core.service import Signer
    from ca_core.spiffe_id import SpiffeId
    from ca_core.validators import TokenValidatorKind, Validator

log = logging.getLogger(__name__)


def store_retry() -> Retry:
    """Start-up retries for a store that cannot be reached: 5 attempts, exponential backoff from
    0.5 s with full jitter (the SDK's own retries of throttling come on top)."""
    return Retry(sleep=time.sleep, random=random.random)


def build_store(cfg: Config, url: str | None = None) -> BundleStore:
    """The configured trust-bundle store, or the store at ``url`` (e.g. a backup destination)
    with the file names and Kubernetes access of ``cfg``. Raises ConfigError for an unusable URL."""
    return open_store(url or cfg.store_url, cfg.file_names, kubeconfig=cfg.kubeconfig)


def directory_store(directory: str) -> FileBundleStore:
    """A file store over ``directory`` with the default file names (what ``bundle export``
    writes and ``bundle import --from`` reads)."""
    return FileBundleStore(directory)


def build_validators(cfg: Config) -> tuple[dict[TokenValidatorKind, Validator], TokenValidatorKind | None]:
    """The enabled validators of ``cfg`` (chosen by ``ca_core.policy.select_validators``), built,
    and the default one. Raises ConfigError when one cannot be built (Kubernetes configuration,
    JWKS source) or INSECURE would be reachable from a network without the opt-in."""
    from ca_core import policy
    from ca_core.validators import InsecureValidator, TokenValidatorKind

    choice = policy.select_validators(cfg)
    ca_identity = policy.signing_policy(cfg).ca_identity
    validators: dict[TokenValidatorKind, Validator] = {}
    for kind in choice.enabled:
        if kind is TokenValidatorKind.KUBERNETES:
            from adapters.kube_api import KubernetesApi
            from ca_core.validators.kubernetes import KubernetesValidator

            api = KubernetesApi.connect(cfg.kubeconfig, clock=time.monotonic)
            validators[kind] = KubernetesValidator(api, ca_identity, cfg.token_audience)
        elif kind is TokenValidatorKind.INSECURE:
            validators[kind] = InsecureValidator()
        elif kind is TokenValidatorKind.JWKS and cfg.jwks is not None:
            from adapters.jwks_source import JwksCache
            from ca_core.validators.jwks import JwksValidator

            if cfg.jwks.issuers:
                from ca_core.claim_mapping import Template
                from ca_core.validators.oidc_issuers import IssuerRule, IssuersValidator

                rules = [
                    IssuerRule(
                        r.name,
                        r.issuer,
                        JwksCache.for_issuer(r, clock=time.monotonic),
                        r.audiences,
                        r.claims,
                        Template.parse(r.namespace, "namespace") if r.namespace else None,
                        Template.parse(r.app_id, "appId") if r.app_id else None,
                        r.trust_domain,
                    )
                    for r in cfg.jwks.issuers
                ]
                validators[kind] = IssuersValidator(rules, ca_identity)
            else:
                keys = JwksCache.from_settings(cfg.jwks, clock=time.monotonic)
                validators[kind] = JwksValidator(keys, ca_identity)
        elif kind is TokenValidatorKind.AWS_IAM and cfg.aws_iam is not None:
            from datetime import UTC

            from adapters.sts import StsClient
            from ca_core.validators.aws_iam import AwsIamValidator, default_server_id

            server_id = cfg.aws_iam.server_id or default_server_id(ca_identity)
            validators[kind] = AwsIamValidator(
                cfg.aws_iam, StsClient(cfg.aws_iam), server_id, lambda: datetime.now(UTC)
            )
    log.info(
        "token validators: %s (default: %s)",
        ", ".join(k.name for k in validators),
        choice.default.name if choice.default else "none; requests must name one",
    )
    return validators, choice.default


@dataclass(frozen=True)
class LoadedBundle:
    bundle: TrustBundle
    version: str
    created: bool
    stored: StoredBundle  # as read (or read back after the create): for ``store.publish_public``


def load_bundle(
    cfg: Config,
    store: BundleStore,
    now: datetime,
    *,
    create_if_empty: bool = True,
    publish: bool = True,
    stored: StoredBundle | None = None,
    by_operator: bool = False,
    force: bool = False,
) -> LoadedBundle:
    """Load the store's bundle, or generate one (design §4) when the store is empty and
    ``ca_core.policy.may_generate`` allows it (design §5.2): at a start only with
    ``--bootstrap-policy if-never-held`` in a store that shows no sign of having held a bundle
    (``store.held_before()``); ``by_operator`` (``sentryca bundle init``) whatever the policy,
    and over such evidence only with ``force``. A refusal raises BundleError naming the store,
    the evidence and the commands that restore it or start anew; nothing is written.

    create_if_empty=False (a restart) raises BundleError for an empty store instead: a new CA is
    only ever made at a first start or by an explicit operator verb. publish=True repairs the
    store's public part from the loaded bundle (a first start: no current root, so loading is
    acceptance); a running CA passes False and publishes once its trust-continuity check
    accepted the bundle (``store.publish_public(loaded.stored)``).

    stored: the store's content when the caller has it already (a store poll just read it, a
    rotation step just wrote it, design §8.4–8.5): parsed as if loaded, without reading the store.
    """
    if stored is not None:
        bundle = parse_stored(store, stored)
        if publish:
            store.publish_public(stored)
        return LoadedBundle(bundle, stored.version, False, stored)
    from ca_core.bundle import generate_bundle
    from ca_core.certs import DEFAULT_CA_LIFETIME
    from ca_core.durations import format_duration
    from ca_core.policy import may_generate, signing_policy

    ca_identity = signing_policy(cfg).ca_identity
    held: list[str] = []  # the evidence a forced `bundle init` overrode

    def admit(evidence: str | None) -> None:
        if not create_if_empty:
            raise BundleError(
                f"{store.description} holds no trust bundle; a restart never creates a new CA "
                "(start the CA, or use `sentryca bundle init`, to create one)"
                + (f"; it held one before: {evidence}" if evidence else "")
            )
        verdict = may_generate(
            cfg.bootstrap_policy, evidence, store.description, by_operator=by_operator, force=force
        )
        if not verdict.allowed:
            raise BundleError(verdict.message)
        if verdict.message:
            log.warning("%s", verdict.message)
            held.append(verdict.message)

    def generate() -> TrustBundle:
        if cfg.upstream_authority is not None:
            bundle = upstream_first_bundle(cfg, cfg.upstream_authority, ca_identity, now)
            log.info(
                "no trust bundle in %s: %s signed a new issuer (%s, valid until %s) under its root %s; "
                "no root key is held",
                store.description,
                cfg.upstream_authority,
                bundle.issuer.subject.rfc4514_string(),
                bundle.issuer.not_valid_after_utc.isoformat(),
                bundle.trust_anchors[0].subject.rfc4514_string(),
            )
        else:
            if not held:
                log.info(
                    "no trust bundle in %s, and no sign that it ever held one: generating a new root and "
                    "issuer (%s; lifetimes %s and %s)%s",
                    store.description,
                    cfg.ca_key_algorithm.value,
                    format_duration(cfg.root_ttl or DEFAULT_CA_LIFETIME),
                    format_duration(cfg.issuer_ttl or DEFAULT_CA_LIFETIME),
                    "" if by_operator else "; --bootstrap-policy never would refuse this",
                )
            root_key = None
            if cfg.root_key:  # opened (and so checked) before anything is written
                from adapters.kms import open_key

                root_key = open_key(cfg.root_key, require_enabled=True)
                log.info(
                    "the new root's key is %s (%s): KMS signs the root", root_key.key_uri, root_key.key_spec
                )
            issuer_key = open_issuer_key(cfg)
            bundle = generate_bundle(
                cfg.trust_domain,
                ca_identity,
                now,
                algorithm=cfg.ca_key_algorithm,
                root_lifetime=cfg.root_ttl or DEFAULT_CA_LIFETIME,
                issuer_lifetime=cfg.issuer_ttl or DEFAULT_CA_LIFETIME,
                root_key=root_key,
                issuer_key=issuer_key,
            )
        if cfg.jwt_enabled:
            from ca_core.jwt_svid import new_jwt_items

            bundle = bundle.with_jwt(*new_jwt_items(cfg.jwt_signing_algorithm, key_id=cfg.jwt_key_id))
        return bundle

    bundle, stored, created = load_or_create_stored(store, generate, store_retry(), admit=admit)
    if publish and not created:
        store.publish_public(stored)
    return LoadedBundle(bundle, stored.version, created, stored)


def open_issuer_key(cfg: Config) -> PrivateKey | None:
    """``--issuer-key kms://...`` opened and checked before anything is written (design §5.18;
    :func:`adapters.kms.open_issuer_key`), or None: a local issuer key is generated."""
    from adapters.kms import open_issuer_key

    return open_issuer_key(cfg.issuer_key) if cfg.issuer_key else None


def upstream_first_bundle(cfg: Config, upstream: str, ca_identity: SpiffeId, now: datetime) -> TrustBundle:
    """A first bundle signed by ``upstream`` (``--upstream-authority``, design §5.16): a local issuer key of
    ``--ca-key-algorithm``, its certificate issued by AWS Private CA for ``--issuer-ttl`` (unset: one
    year, cut to the Private CA's NotAfter), the Private CA's root as the trust anchor, no root key.
    Calls bounded by ``--upstream-timeout``/``--upstream-max-attempts``; raises the adapter's errors
    (``adapters.acm_pca``: Unavailable while throttled or still pending after its bounded retries,
    PermissionDenied, CAError) or BundleError when the answer fails ``accept_issued``."""
    from adapters.acm_pca import bounded_authority
    from ca_core.certs import DEFAULT_CA_LIFETIME
    from ca_core.upstream import issuer_request, upstream_bundle

    request = issuer_request(
        ca_identity,
        cfg.ca_key_algorithm,
        now,
        lifetime=cfg.issuer_ttl or DEFAULT_CA_LIFETIME,
        backdate=cfg.allowed_clock_skew,
        key=open_issuer_key(cfg),
    )
    authority = bounded_authority(upstream, cfg.upstream_timeout.total_seconds(), cfg.upstream_max_attempts)
    return upstream_bundle(request, *authority.issue_issuer(request), now)


def ensure_jwt_key(cfg: Config, store: BundleStore, loaded: LoadedBundle, now: datetime) -> LoadedBundle:
    """design §5.2, §11: with ``--jwt-enabled``, a start on a bundle without a JWT key adds one
    (``--jwt-signing-algorithm``, kid ``--jwt-key-id`` or the thumbprint) by a conditional replace
    of the version it read: the X.509 items stay as they are, so trust continuity holds. A
    replica that loses the race loads the winner's bundle. Otherwise ``loaded`` as it is.
    Raises BundleError when the store changed into a bundle that still has no JWT key."""
    if not cfg.jwt_enabled or loaded.bundle.jwt_key is not None:
        return loaded
    from ca_core.jwt_svid import key_ids, new_jwt_items

    bundle = loaded.bundle.with_jwt(*new_jwt_items(cfg.jwt_signing_algorithm, key_id=cfg.jwt_key_id))
    items = {**loaded.stored.items, **bundle.to_items()}
    where = store.description
    version = store_retry().run(
        f"add the JWT key to the trust bundle in {where}",
        lambda: store.replace_version(items, loaded.version),
    )
    if version is not None:
        log.warning(
            "--jwt-enabled: the trust bundle in %s had no JWT key; added one (%s, kid %s)",
            where,
            cfg.jwt_signing_algorithm.value,
            ", ".join(key_ids(bundle.jwks or b"")),
        )
        return LoadedBundle(bundle, version, loaded.created, StoredBundle(items, version))
    log.info("the trust bundle in %s changed while adding a JWT key; loading it", where)
    again = load_bundle(cfg, store, now, create_if_empty=False, publish=False)
    if again.bundle.jwt_key is None:
        raise BundleError(
            f"--jwt-enabled: the trust bundle in {where} has no JWT key and changed while one was "
            "being added; start again"
        )
    return again


@dataclass(frozen=True)
class Refusal:
    """The store's newest bundle, refused at a start: its version token and the reason."""

    version: str
    detail: str


def screen_start(
    store: BundleStore, loaded: LoadedBundle, now: datetime
) -> tuple[LoadedBundle, Refusal | None]:
    """design §5.4 at a start: the store's newest bundle is served only when its record of the
    last accepted bundle (``store.load_accepted()``) accepts it (``ca_core.continuity.
    judge_against_record``; a deliberate replacement wrote that record itself). Refused: the
    newest bundle the store still keeps whose public part is the record (``find_accepted``) is
    served instead, with the refusal returned (the CA starts degraded); when the store keeps
    none, BundleError: the start is refused and nothing is written. A bundle just created, a
    store without a record or a record that cannot be read: served as loaded."""
    from ca_core.continuity import judge_against_record, refusal_message
    from ca_core.policy import restore_command

    if loaded.created:
        return loaded, None
    where = store.description
    retry = store_retry()
    try:
        record = retry.run(f"read the record of the last accepted bundle in {where}", store.load_accepted)
    except BundleError as e:
        log.warning("the record of the last accepted bundle in %s is unreadable (%s); not judged", where, e)
        return loaded, None
    if record is None:
        return loaded, None
    verdict = judge_against_record(record.items, loaded.bundle, loaded.stored.items, now)
    if verdict.allowed:
        return loaded, None
    reason = refusal_message(verdict, where)
    accepted = retry.run(
        f"find the last accepted bundle in {where}", lambda: store.find_accepted(record.items)
    )
    try:
        bundle = parse_stored(store, accepted) if accepted is not None else None
    except BundleError:
        bundle = None
    if accepted is None or bundle is None:
        raise BundleError(
            f"refusing to start: the newest trust bundle in {where} was refused ({reason}), and the "
            "store keeps no copy of the last accepted one to serve instead. Nothing was changed. "
            f"Restore the accepted bundle (`{restore_command(where)}`), or, if the replacement is "
            "deliberate, write it with `sentryca bundle import --force` (docs/runbook.md, "
            '"A refused bundle in the store")'
        )
    detail = (
        f"the newest trust bundle in {where} was refused at start ({reason}); serving the last "
        f"accepted one (version {accepted.version}) instead"
    )
    log.error("%s", detail)
    return LoadedBundle(bundle, accepted.version, False, accepted), Refusal(loaded.stored.version, detail)


def accepted_instead(store: BundleStore, error: BundleError) -> tuple[LoadedBundle, Refusal]:
    """A start found the store's newest content unusable (``error``): serve the last accepted
    bundle when the store keeps it (its record, then ``find_accepted``), the CA starting
    degraded; else ``error`` is raised again (design §5.3: refused, nothing written). An empty
    store is not this case: the bootstrap rule decided (design §5.2), and ``error`` is raised."""
    # key: what the upkeep's reads of the store report the same refusal under
    try:
        newest = store.load()
    except BundleError as e:  # content that cannot even be read as items
        key = str(e)
    else:
        if newest is None:
            raise error
        key = newest.version
    accepted, bundle = None, None
    try:
        record = store_retry().run(f"read the record in {store.description}", store.load_accepted)
        accepted = store.find_accepted(record.items) if record is not None else None
        bundle = parse_stored(store, accepted) if accepted is not None else None
    except BundleError:
        pass
    if accepted is None or bundle is None:
        raise error
    detail = (
        f"the newest content of {store.description} is unusable ({error}); serving the last accepted "
        f"bundle (version {accepted.version}) instead"
    )
    log.error("%s", detail)
    return LoadedBundle(bundle, accepted.version, False, accepted), Refusal(key, detail)


def derive_cluster_domain(cfg: Config, lookup: Callable[[], str] | None = None) -> str | None:
    """The cluster domain looked up for ``cfg`` (design §3.4), once per start or restart: None
    when ``ca_core.policy.needs_cluster_domain_lookup`` says no lookup is needed, or when it
    failed or timed out (logged with the fallback; the lookup waits at most 2 s). ``lookup``:
    ``adapters.cluster_domain.lookup_cluster_domain`` unless given (tests)."""
    from adapters.cluster_domain import API_SERVICE, ClusterDomainUnknown, lookup_cluster_domain
    from ca_core.policy import needs_cluster_domain_lookup

    if not needs_cluster_domain_lookup(cfg):
        return None
    try:
        domain = (lookup or lookup_cluster_domain)()
    except ClusterDomainUnknown as e:
        log.warning(
            "could not derive the Kubernetes cluster domain (%s); the scheduler's DNS SANs use the "
            "trust domain %s instead, as Dapr's Sentry does (set --kube-cluster-domain to choose)",
            e,
            cfg.trust_domain,
        )
        return None
    log.info("Kubernetes cluster domain %s (from the canonical name of %s)", domain, API_SERVICE)
    return domain


def build_signer(
    cfg: Config,
    bundle: TrustBundle,
    validators: tuple[dict[TokenValidatorKind, Validator], TokenValidatorKind | None] | None = None,
    derived_cluster_domain: str | None = None,
) -> Signer:
    """A Signer over ``bundle`` with the policy of ``cfg`` and ``validators`` (enabled, default),
    built from ``cfg`` when not given; ``derived_cluster_domain``: :func:`derive_cluster_domain`'s
    result."""
    from ca_core.policy import jwt_issuer, signing_policy
    from ca_core.service import Signer

    enabled, default = validators if validators is not None else build_validators(cfg)
    return Signer(
        bundle, signing_policy(cfg, derived_cluster_domain), enabled, default, jwt_issuer(cfg, bundle)
    )


# --- OIDC discovery and federation: the two values the JWT side provides (design §9.9) -----------


def token_issuer(cfg: Config) -> str | None:
    """The ``iss`` of the CA's JWT-SVIDs (``--jwt-issuer``), or None when it sets none: the OIDC
    discovery server then states the origin a request reached it at, as Dapr's Sentry does."""
    return cfg.jwt_issuer


def bundle_jwks(bundle: TrustBundle | None) -> bytes | None:
    """The JWKS document of ``bundle`` as stored (``jwks.json``), or None (no bundle, or a bundle
    without a JWT key): what the OIDC discovery server serves and the federation publishes."""
    return bundle.jwks if bundle is not None else None
