"""The CA's policies from its configuration, each decided once (design §10): issuance settings, the
leaf bound a rotation must respect, whether an empty store may get a new CA, which token validators
are enabled and which is the default, and the INSECURE opt-in (the rule for the CA's own TLS server
certificate is :mod:`.server_certificate`'s).

Values in, values out: every entry point (the server, the CLI, the Lambda functions) asks here
through ``handlers.composition``, which only wires.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from .config import Config, JwksSettings
from .config.aws_iam import AwsIamSettings
from .durations import format_duration
from .errors import BundleError, ConfigError
from .service import SigningPolicy
from .spiffe_id import SpiffeId
from .validators import TokenValidatorKind

if TYPE_CHECKING:
    from .bundle import TrustBundle
    from .bundle_settings import BundleSettings
    from .jwt_svid import JwtIssuer
    from .keys import KeyAlgorithm
    from .rotation.state import RotationPolicy

log = logging.getLogger("sentryca")


def signing_policy(cfg: Config, derived_cluster_domain: str | None = None) -> SigningPolicy:
    """The issuance settings of ``cfg``: trust domain, the CA's namespace, workload TTL, clock skew,
    and the cluster domain (:func:`cluster_domain`; ``derived_cluster_domain``: the lookup's result)."""
    return SigningPolicy(
        trust_domain=cfg.trust_domain,
        namespace=cfg.namespace,
        workload_ttl=cfg.workload_cert_ttl,
        clock_skew=cfg.allowed_clock_skew,
        cluster_domain=cluster_domain(cfg, derived_cluster_domain),
    )


def needs_cluster_domain_lookup(cfg: Config) -> bool:
    """Whether a start or restart with ``cfg`` looks the cluster domain up (design §3.4): in
    kubernetes mode when ``--kube-cluster-domain`` is not set."""
    return cfg.kube_cluster_domain is None and cfg.effective_mode == "kubernetes"


def cluster_domain(cfg: Config, derived: str | None) -> str:
    """The cluster domain of the scheduler's DNS SANs (design §3.4): ``--kube-cluster-domain``;
    else, in kubernetes mode, ``derived`` (the domain of ``kubernetes.default.svc``'s canonical
    name) when the lookup gave one; else the CA's trust domain, as Dapr's Sentry falls back."""
    if cfg.kube_cluster_domain is not None:
        return cfg.kube_cluster_domain
    if derived is not None and cfg.effective_mode == "kubernetes":
        return derived
    return cfg.trust_domain


def jwt_issuer(cfg: Config, bundle: TrustBundle) -> JwtIssuer | None:
    """The JWT-SVID signer of ``cfg`` over ``bundle`` (design §11), None with ``--jwt-enabled``
    off. The ``kid`` is ``--jwt-key-id`` (which must name the key's entry in ``jwks.json``), else
    that entry's. Raises BundleError when the bundle has no JWT key, its JWK Set does not publish
    it, or the key does not fit ``--jwt-signing-algorithm``."""
    if not cfg.jwt_enabled:
        return None
    from .jwt_svid import JwtIssuer, signing_key_id

    if bundle.jwt_key is None or bundle.jwks is None:
        raise BundleError("--jwt-enabled is set but the trust bundle holds no JWT key (jwt.key, jwks.json)")
    kid = signing_key_id(bundle.jwks, bundle.jwt_key, key_id=cfg.jwt_key_id)
    return JwtIssuer.create(
        bundle.jwt_key,
        cfg.jwt_signing_algorithm,
        kid,
        ttl=cfg.jwt_ttl,
        clock_skew=cfg.allowed_clock_skew,
        issuer=cfg.jwt_issuer,
    )


def stale_signing_bound(cfg: Config) -> timedelta:
    """How long a CA running with ``cfg`` may go on signing with an issuer after another writer
    (a replica, a worker, the CLI) activated a new one in the store: ``--store-poll-interval``
    when set (the poll reloads any new version). Without polling, ``--expiry-check-interval``: the
    CA then reads the store only when its own rotation check, run at that interval, finds a step
    due; for an activation it holds the same prepared root, so it finds the same step due, loses
    the conditional write and reloads the store. (A prepared root it never loaded is seen only at a
    restart: the runbook says so.)"""
    return cfg.store_poll_interval or cfg.expiry_check_interval


def leaf_bound(cfg: Config) -> timedelta:
    """How long a leaf signed by a retired issuer may still be valid (design §5.10): the workload
    TTL, plus the clock skew it is backdated by, plus :func:`stale_signing_bound` (another CA
    signs with the old issuer until it notices)."""
    return cfg.workload_cert_ttl + cfg.allowed_clock_skew + stale_signing_bound(cfg)


def rotation_policy(cfg: Config) -> RotationPolicy:
    """The rotation settings of ``cfg`` (``ca_core.rotation``): names and key algorithm of
    generated roots and issuers, ``--auto-rotate``, ``--root-propagation-window``,
    :func:`leaf_bound`, and ``--root-ttl``/``--issuer-ttl`` (unset: one year; what a rotation of a
    bundle generates is :func:`bundle_rotation_policy`'s)."""
    from .certs import DEFAULT_CA_LIFETIME
    from .rotation.state import RotationPolicy  # here: the expiry function never loads the rotation rules

    return RotationPolicy(
        trust_domain=cfg.trust_domain,
        ca_identity=signing_policy(cfg).ca_identity,
        auto=cfg.auto_rotate,
        propagation_window=cfg.root_propagation_window,
        leaf_bound=leaf_bound(cfg),
        clock_skew=cfg.allowed_clock_skew,
        algorithm=cfg.ca_key_algorithm,
        root_lifetime=cfg.root_ttl or DEFAULT_CA_LIFETIME,
        issuer_lifetime=cfg.issuer_ttl or DEFAULT_CA_LIFETIME,
        upstream=cfg.upstream_authority,
        jwt_publish=jwt_publish_period(cfg),
        jwt_retire=jwt_retire_period(cfg),
        jwt_key_lifetime=cfg.jwt_key_ttl or None,
        jwt_key_id_fixed=cfg.jwt_key_id is not None,
    )


def jwt_publish_period(cfg: Config) -> timedelta:
    """How long a new JWT key is published before it signs (design §5.17): the longest a
    verifier caches a JWK Set (the OIDC server's ``max-age``), plus :func:`stale_signing_bound`
    (a CA serves the JWK Set of the bundle in force until it notices the change), plus the
    longest federation takes to publish a change (its re-check after a failure)."""
    from .oidc import MAX_AGE_SECONDS
    from .rotation.state import FEDERATION_DELAY

    return timedelta(seconds=MAX_AGE_SECONDS) + stale_signing_bound(cfg) + FEDERATION_DELAY


def jwt_retire_period(cfg: Config) -> timedelta:
    """How long a former JWT key stays published after its successor began to sign (design
    §5.17): :func:`stale_signing_bound` (a CA signs with it until it notices), plus ``--jwt-ttl``
    (its last tokens' lifetime), plus ``--allowed-clock-skew`` (a verifier's leeway on ``exp``)."""
    return stale_signing_bound(cfg) + cfg.jwt_ttl + cfg.allowed_clock_skew


def lifetime_warnings(cfg: Config, settings: BundleSettings | None = None) -> list[str]:
    """What a production CA warns about the lifetimes of ``cfg`` over the bundle described by
    ``settings`` (None: a bundle about to be generated from ``cfg``), each a sentence naming the
    flags (design §4, §5.12):

    - ``--workload-cert-ttl`` longer than what an issuer has left when its successor activates
      (a sixth of its lifetime, 7 days at most): leaves signed late in an issuer's life are cut
      to its NotAfter, down to that, so workloads renew more often (as SPIRE warns past CA TTL / 6);
    - ``--issuer-ttl`` longer than the bundle's root: issuers are cut to the root's NotAfter;
    - a lifetime under 30 days without ``--auto-rotate``: the certificate runs out unless an
      operator rotates it in time."""
    from .bundle_settings import UNKNOWN, lifetimes
    from .rotation.state import ACTIVATE_WITHIN

    bundle = settings or UNKNOWN
    kept = lifetimes(bundle, cfg)
    root_length = cfg.root_ttl or bundle.root_validity or kept.root
    issuer_length = min(cfg.issuer_ttl or bundle.issuer_validity or kept.issuer, root_length)
    out: list[str] = []
    left = min(issuer_length / 6, ACTIVATE_WITHIN)
    if cfg.workload_cert_ttl > left:
        out.append(
            f"--workload-cert-ttl {format_duration(cfg.workload_cert_ttl)} is longer than the "
            f"{format_duration(left)} an issuer of {format_duration(issuer_length)} has left when its "
            "successor activates (a sixth of its lifetime): leaves signed late in an issuer's life are "
            f"cut to its NotAfter, down to {format_duration(left)}, and workloads renew that much sooner. "
            f"For full-length leaves use --workload-cert-ttl {format_duration(left)} or less, or a "
            "longer --issuer-ttl"
        )
    if cfg.issuer_ttl is not None and cfg.root_ttl is None and bundle.root_validity is not None:
        if cfg.issuer_ttl > bundle.root_validity:
            out.append(
                f"--issuer-ttl {format_duration(cfg.issuer_ttl)} is longer than the bundle's root "
                f"({format_duration(bundle.root_validity)}): an issuer never outlives its root, so "
                "issuers are cut to its NotAfter"
            )
    if not cfg.auto_rotate:
        for flag, ttl in (("--root-ttl", cfg.root_ttl), ("--issuer-ttl", cfg.issuer_ttl)):
            if ttl is not None and ttl < timedelta(days=30):
                out.append(
                    f"{flag} {format_duration(ttl)} without --auto-rotate: such certificates expire "
                    "unless an operator rotates them in time (`sentryca rotate issuer|root`); short "
                    "lifetimes are meant for --auto-rotate true"
                )
    return out


# --- bootstrapping an empty store (design §5.2) -----------------------------------------------


@dataclass(frozen=True)
class BootstrapVerdict:
    """Whether a new root and issuer may be generated in an empty store; ``message``: why not
    (for the operator: the store, what was found, how to restore, how to start anew), or a
    warning to log when allowed against the evidence (``bundle init --force``)."""

    allowed: bool
    message: str = ""


def key_option_warnings(cfg: Config, bundle: TrustBundle) -> list[str]:
    """What a start warns when ``--root-key`` or ``--issuer-key`` name a key the loaded ``bundle``
    does not use (design §5.18): both apply only to a bundle being created, so on an existing one
    they change nothing until a rotation moves the key. Compared only where the reference can be
    (a key ARN against the stored ``kms://<ARN>``; a key id or alias names the same key in
    another form, which only KMS could resolve)."""

    def differs(wanted: str | None, held: str | None) -> bool:
        if wanted is None:
            return False
        return held is None or (wanted.startswith("kms://arn:") and wanted != held)

    warnings = []
    if differs(cfg.root_key, bundle.root_key_uri):
        held = bundle.root_key_uri or ("a local key" if bundle.root_key is not None else "none held")
        warnings.append(
            f"--root-key {cfg.root_key} is not the bundle's root key ({held}) and applies only to a new "
            f"bundle: this one keeps its root until `sentryca rotate root --root-key {cfg.root_key}`"
        )
    if differs(cfg.issuer_key, bundle.issuer_key_uri):
        warnings.append(
            f"--issuer-key {cfg.issuer_key} is not the bundle's issuer key "
            f"({bundle.issuer_key_uri or 'a local key'}) and applies only to a new bundle: this one keeps "
            f"its issuer key until `sentryca rotate issuer --issuer-key {cfg.issuer_key}`"
        )
    return warnings


def restore_command(store: str) -> str:
    """The command that restores ``store`` from a backup written by ``sentryca bundle export``."""
    return f"sentryca bundle import --trust-bundle-store {store} --from DIR"


def may_generate(
    policy: str, evidence: str | None, store: str, *, by_operator: bool = False, force: bool = False
) -> BootstrapVerdict:
    """Whether an empty ``store`` may get a newly generated bundle.

    policy: ``--bootstrap-policy`` (``if-never-held`` or ``never``); evidence: the store's proof
    of having held a bundle (``BundleStore.held_before``), or None. A start (``by_operator``
    False) generates only with ``if-never-held`` and no evidence: a store that lost its bundle
    must be restored, since a new root breaks every workload holding the old anchors.
    ``sentryca bundle init`` (``by_operator``) is the explicit way to a new CA, whatever the
    policy; over evidence it needs ``force``."""
    restore = (
        f"Restore the bundle from a backup: `{restore_command(store)}` (DIR written by "
        '`sentryca bundle export`; docs/runbook.md, "Restore")'
    )
    if by_operator:
        if evidence is None:
            return BootstrapVerdict(True)
        if force:
            return BootstrapVerdict(
                True,
                f"generating a new root in {store}, which held a trust bundle before ({evidence}), as "
                "--force asks: workloads holding the old trust anchors will not trust it",
            )
        return BootstrapVerdict(
            False,
            f"{store} holds no trust bundle, but it held one before: {evidence}. Nothing was written. "
            f"{restore}. To generate a new root anyway, run `sentryca bundle init` again with --force: "
            "every workload holding the old trust anchors will then stop trusting the CA.",
        )
    if evidence is not None:
        return BootstrapVerdict(
            False,
            f"refusing to start: {store} holds no trust bundle, but it held one before: {evidence}. "
            "A new root would break TLS for every workload holding the old trust anchors, so nothing "
            f"was written. {restore}, then start the CA. To start a brand-new CA here deliberately: "
            f"`sentryca bundle init --trust-bundle-store {store} --force`.",
        )
    if policy == "never":
        return BootstrapVerdict(
            False,
            f"refusing to start: {store} holds no trust bundle, and --bootstrap-policy is never: the "
            f"CA does not generate one. Nothing was written. {restore}, or create a new CA "
            f"deliberately: `sentryca bundle init --trust-bundle-store {store}`; then start the CA.",
        )
    return BootstrapVerdict(True)


def bundle_rotation_policy(cfg: Config, settings: BundleSettings) -> RotationPolicy:
    """:func:`rotation_policy` for the steps a running CA takes on its own (design §5.12, §5.15):
    the trust domain, the issuer's SPIFFE ID and the key algorithm come from what the bundle says
    about itself (``ca_core.bundle_settings.settings_of``; a prepared root's algorithm first, as
    the operator chose it), the configuration's only where the bundle says nothing. An automatic
    rotation never moves a CA to another trust domain, issuer ID or key algorithm, whatever the
    configuration of the replica that happens to take the step. Lifetimes:
    ``--root-ttl``/``--issuer-ttl`` when set, else those of the certificates replaced
    (``bundle_settings.lifetimes``)."""
    from .bundle_settings import lifetimes

    base = rotation_policy(cfg)
    kept = lifetimes(settings, cfg)
    return replace(
        base,
        trust_domain=settings.trust_domain or base.trust_domain,
        ca_identity=settings.ca_identity or base.ca_identity,
        algorithm=_bundle_algorithm(cfg, settings) or base.algorithm,
        root_lifetime=kept.root,
        issuer_lifetime=kept.issuer,
    )


def _bundle_algorithm(cfg: Config, settings: BundleSettings) -> KeyAlgorithm | None:
    """The key algorithm of what the bundle's rotations generate: a prepared root's, else the
    active root's; with an upstream authority (design §5.16, its root is not the CA's to
    generate) the issuer's."""
    if cfg.upstream_authority is not None:
        return settings.issuer_algorithm
    return settings.prepared_algorithm or settings.root_algorithm


# --- token validators -------------------------------------------------------------------------


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
    explicit opt-in ``--allow-insecure-on-network`` (design §6.1). Raises ConfigError otherwise;
    logs a warning when the opt-in is used."""
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


@dataclass(frozen=True)
class ValidatorChoice:
    """Which token validators a configuration enables (in this order) and the default one (None:
    requests must name one)."""

    enabled: tuple[TokenValidatorKind, ...]
    default: TokenValidatorKind | None


def select_validators(cfg: Config) -> ValidatorChoice:
    """The validators of ``cfg`` (design §6.4; Sentry's selection rules):

    kubernetes mode: KUBERNETES (the default), plus JWKS when configured;
    standalone without ``tokenValidators``: INSECURE (the default; :func:`check_insecure_allowed`);
    standalone with JWKS configured: only JWKS, no default (requests must name it);
    AWS_IAM is added when configured, in either mode, and never the default (INSECURE is then off).
    Raises ConfigError when INSECURE would be reachable from a network without the opt-in."""
    enabled: list[TokenValidatorKind] = []
    default: TokenValidatorKind | None = None
    if cfg.effective_mode == "kubernetes":
        enabled.append(TokenValidatorKind.KUBERNETES)
        default = TokenValidatorKind.KUBERNETES
    elif cfg.jwks is None and cfg.aws_iam is None:
        check_insecure_allowed(cfg)
        enabled.append(TokenValidatorKind.INSECURE)
        default = TokenValidatorKind.INSECURE
    if cfg.jwks is not None:
        enabled.append(TokenValidatorKind.JWKS)
    if cfg.aws_iam is not None:  # design §6.6: never a default, requests name it
        enabled.append(TokenValidatorKind.AWS_IAM)
    return ValidatorChoice(tuple(enabled), default)


@dataclass(frozen=True)
class ValidatorSettings:
    """Every setting the validators are built from (``handlers.composition.build_validators``,
    design §6.4): two configurations with equal settings get equivalent validators, so a restart
    between them keeps the running ones (their JWKS key cache, their Kubernetes client). Files
    named by a setting (``kubeconfig``, a JWKS ``ca_certificate`` path) are compared by name, not
    content."""

    mode: str  # the effective mode: kubernetes or standalone
    jwks: JwksSettings | None
    aws_iam: AwsIamSettings | None
    kubeconfig: str | None
    token_audience: tuple[str, ...] | None
    ca_identity: SpiffeId  # from the trust domain and namespace
    loopback_only: bool  # the listen address, as it decides whether INSECURE needs the opt-in
    allow_insecure_on_network: bool

    @classmethod
    def of(cls, cfg: Config) -> ValidatorSettings:
        return cls(
            mode=cfg.effective_mode,
            jwks=cfg.jwks,
            aws_iam=cfg.aws_iam,
            kubeconfig=cfg.kubeconfig,
            token_audience=cfg.token_audience,
            ca_identity=signing_policy(cfg).ca_identity,
            loopback_only=listens_on_loopback_only(cfg),
            allow_insecure_on_network=cfg.allow_insecure_on_network,
        )
