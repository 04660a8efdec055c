"""The one configuration object (design §7): every setting of the CA, typed, with its default and
its bounds, validated once by :func:`validate`.

Pure: built from values the loader has already read and parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from ..bundle import FileNames
from ..durations import format_duration
from ..errors import ConfigError
from ..jwt_svid import DEFAULT_JWT_TTL, JwtAlgorithm
from ..keys import KeyAlgorithm
from ..oidc import path_prefix_problem, url_problem
from ..spiffe_id import namespace_problem, trust_domain_problem
from .aws_iam import AwsIamSettings

MODES = ("auto", "kubernetes", "standalone")
# --bootstrap-policy: when a start may generate a first bundle in an empty store (design §5.2)
BOOTSTRAP_POLICIES = ("if-never-held", "never")
# Bounds that keep every certificate date computable and every setting sane; leaves are capped by
# the issuer's NotAfter anyway.
MAX_WORKLOAD_TTL = timedelta(days=3650)
MAX_CLOCK_SKEW = timedelta(hours=24)
MAX_EXPIRY_CHECK_INTERVAL = timedelta(days=30)
MAX_STORE_POLL_INTERVAL = timedelta(hours=24)
MAX_EMF_INTERVAL = timedelta(hours=1)
MAX_PROPAGATION_WINDOW = timedelta(days=30)
MAX_CALL_TIMEOUT = timedelta(minutes=10)  # --message-timeout, --handshake-timeout
MAX_IDLE_TIMEOUT = timedelta(hours=24)
# --upstream-timeout / --upstream-max-attempts (design §5.16): each AWS Private CA call's bound
MAX_UPSTREAM_TIMEOUT = timedelta(seconds=60)
MAX_UPSTREAM_ATTEMPTS = 10
MAX_WORKERS = 64
# --root-ttl / --issuer-ttl (design §4, §5.12): at most ten years, and long enough for the rotation
# thresholds to work. The automatic policy prepares a successor when half a lifetime L is left
# and activates it when a sixth is left (for L under 42 days; ``ca_core.rotation.state.margins``),
# and it takes steps only at expiry checks. So L/6 must span at least two checks
# (L >= 12 x --expiry-check-interval): the first check inside the last sixth activates the
# successor with at least a twelfth of L (one check interval) of the old certificate left, which
# is also the least the old issuer's last leaves live. A root must besides stay a trust anchor
# for the propagation window between being prepared (L/2 left) and activated (L/6 left):
# L/2 - L/6 >= window, i.e. L >= 3 x --root-propagation-window.
MAX_CA_TTL = timedelta(days=3650)
MIN_CA_TTL_CHECKS = 12
MIN_ROOT_TTL_WINDOWS = 3
MAX_JWT_TTL = timedelta(days=30)
MIN_JWT_KEY_TTL = timedelta(hours=24)  # a shorter one would rotate before its predecessor retires
MAX_JWT_CLAIM_LENGTH = 1024  # --jwt-issuer, --jwt-key-id

DEFAULT_JWKS_MIN_REFRESH = timedelta(minutes=10)
DEFAULT_JWKS_REQUEST_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class JwtIssuerSettings:
    """One entry of ``tokenValidators[name=jwks].options.issuers`` (design §6.5): a rule that
    accepts the tokens of one OIDC issuer and maps their claims to an identity.

    name: the rule's name in refusals, metrics and audit records; issuer: the pinned ``iss``;
    source: where its JWK Set comes from (as :class:`JwksSettings`' ``source``), None for OIDC
    discovery from ``issuer``; audiences: ``aud`` must hold one of them (empty: the CA's SPIFFE
    ID); claims: (claim, value) pairs the token must carry, a claim named by JSON Pointer
    (``/kubernetes.io/namespace``) or by its top-level name; namespace, app_id: templates
    building the identity (literal text and ``{/json/pointer}`` placeholders), both None for the
    default mapping (``sub`` = the SPIFFE ID); trust_domain: the mapped identity's (None: the
    CA's); the fetch settings as :class:`JwksSettings`'."""

    name: str
    issuer: str
    source: str | None = None
    audiences: tuple[str, ...] = ()
    claims: tuple[tuple[str, object], ...] = ()
    namespace: str | None = None
    app_id: str | None = None
    trust_domain: str | None = None
    ca_certificate: str | None = None
    min_refresh_interval: timedelta = DEFAULT_JWKS_MIN_REFRESH
    request_timeout: timedelta = DEFAULT_JWKS_REQUEST_TIMEOUT


@dataclass(frozen=True)
class JwksSettings:
    """``spec.mtls.tokenValidators[name=jwks].options`` (design §6, §7).

    source: an https:// URL (plain http:// is refused), a file path, or the JWKS JSON itself (optionally
    base64-encoded); ca_certificate: PEM text or a PEM file path trusted for an https source
    (None: the system's trust store); min_refresh_interval: the least time between two fetches;
    request_timeout: the bound of one fetch.
    """

    source: str
    ca_certificate: str | None = None
    min_refresh_interval: timedelta = DEFAULT_JWKS_MIN_REFRESH
    request_timeout: timedelta = DEFAULT_JWKS_REQUEST_TIMEOUT
    issuers: tuple[JwtIssuerSettings, ...] = ()  # when given, ``source`` is "" (design §6.5)

    def __repr__(self) -> str:  # the inline JWKS or CA PEM may be long: name the kind only
        src = self.source if len(self.source) < 200 else f"<inline JWKS, {len(self.source)} chars>"
        rules = f", issuers={[i.name for i in self.issuers]}" if self.issuers else ""
        return (
            f"JwksSettings(source={src!r}, min_refresh_interval={format_duration(self.min_refresh_interval)}"
            f"{rules})"
        )


@dataclass(frozen=True)
class Config:
    """Every setting of the CA, typed and validated. Build with :func:`load_config`.

    Durations are timedelta; ports ints (0 = any free port, for tests). Each field is an option of
    the table (``ca_core.config.options``) except those of :data:`FIELDS_WITHOUT_OPTION`.
    """

    port: int = 50001
    listen_address: str = "127.0.0.1"
    healthz_port: int = 8080
    metrics_port: int = 9090
    enable_metrics: bool = True
    trust_domain: str = "localhost"
    namespace: str = "default"
    mode: str = "auto"
    config: str | None = None
    kubeconfig: str | None = None
    token_audience: tuple[str, ...] | None = None
    server_names: tuple[str, ...] = ()
    kube_cluster_domain: str | None = None
    jwks: JwksSettings | None = None
    aws_iam: AwsIamSettings | None = None
    workload_cert_ttl: timedelta = timedelta(hours=24)
    allowed_clock_skew: timedelta = timedelta(minutes=15)
    ca_key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    root_key: str | None = None  # kms://...: a generated root's key is that KMS key (design §5.18)
    issuer_key: str | None = None  # kms://...: a generated issuer's key is that KMS key (design §5.18)
    jwt_enabled: bool = False
    jwt_ttl: timedelta = DEFAULT_JWT_TTL
    jwt_issuer: str | None = None
    jwt_signing_algorithm: JwtAlgorithm = JwtAlgorithm.RS256
    jwt_key_id: str | None = None
    jwt_key_ttl: timedelta = timedelta(days=90)  # 0: never rotated by --auto-rotate (design §5.17)
    expiry_check_interval: timedelta = timedelta(hours=1)
    store_poll_interval: timedelta = timedelta(0)
    bootstrap_policy: str = "if-never-held"
    auto_rotate: bool = False
    root_propagation_window: timedelta = timedelta(hours=24)
    root_ttl: timedelta | None = None  # None: a new bundle gets one year, a rotation keeps the root's
    issuer_ttl: timedelta | None = None  # None: likewise, of the issuer it replaces
    upstream_authority: str | None = None  # acm-pca://<CA ARN> (design §5.16)
    upstream_timeout: timedelta = timedelta(seconds=5)  # to connect, and to read each answer
    upstream_max_attempts: int = 2  # tries of each Private CA call, the first included
    log_level: str = "info"
    log_as_json: bool = False
    emf_interval: timedelta = timedelta(0)
    allow_insecure_on_network: bool = False
    max_concurrent_streams: int = 100
    max_in_flight: int = 1024
    max_in_flight_per_peer: int = 128
    message_timeout: timedelta = timedelta(seconds=10)
    max_connections: int = 4096
    handshake_timeout: timedelta = timedelta(seconds=10)
    idle_timeout: timedelta = timedelta(minutes=5)
    rate_limit: float = 1000.0
    identity_rate_limit: float = 0.0
    workers: int = 1
    oidc_enabled: bool = False
    oidc_server_listen_port: int = 9080
    oidc_server_listen_address: str = "localhost"
    oidc_server_tls_enabled: bool = True
    oidc_server_tls_cert_file: str | None = None
    oidc_server_tls_key_file: str | None = None
    oidc_jwks_uri: str | None = None
    oidc_path_prefix: str | None = None
    oidc_allowed_hosts: tuple[str, ...] = ()
    oidc_federation_bucket: str | None = None
    oidc_federation_prefix: str = ""
    oidc_federation_provider_url: str | None = None
    issuer_credentials: str = "./.sentry/credentials"
    trust_bundle_store: str | None = None
    issuer_ca_filename: str = "ca.crt"
    issuer_certificate_filename: str = "issuer.crt"
    issuer_key_filename: str = "issuer.key"
    kubernetes_detected: bool = field(default=False, repr=False)

    @property
    def store_url(self) -> str:
        """The trust-bundle store URL: ``--trust-bundle-store``, else ``file://`` + issuer credentials."""
        return self.trust_bundle_store or f"file://{self.issuer_credentials}"

    @property
    def file_names(self) -> FileNames:
        """The store's item names: ``--issuer-ca-filename``, ``--issuer-certificate-filename``, …"""
        return FileNames(self.issuer_ca_filename, self.issuer_certificate_filename, self.issuer_key_filename)

    @property
    def effective_mode(self) -> str:
        """``kubernetes`` or ``standalone`` (``auto`` resolved by KUBERNETES_SERVICE_HOST)."""
        if self.mode != "auto":
            return self.mode
        return "kubernetes" if self.kubernetes_detected else "standalone"

    def with_changes(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` applied. Raises ConfigError."""
        return validate(replace(self, **changes))

    def describe(self) -> dict[str, str]:
        """Settings as strings, for a start-up log line (no secrets are held here)."""
        out: dict[str, str] = {}
        for f in fields(self):
            v: object = getattr(self, f.name)
            if isinstance(v, timedelta):
                v = format_duration(v)
            elif isinstance(v, KeyAlgorithm | JwtAlgorithm):
                v = v.value
            elif isinstance(v, tuple):
                v = ",".join(v)
            out[f.name] = str(v)
        return out


# The fields of Config that no --flag / SENTRY_* option sets, and where each comes from instead
# (tests/ca_core/test_config.py checks that every other field has an option and every option a field).
FIELDS_WITHOUT_OPTION: dict[str, str] = {
    "namespace": "the NAMESPACE environment variable (the pod's namespace; default 'default')",
    "jwks": "spec.mtls.tokenValidators of the --config file (a structured value, not a flag)",
    "aws_iam": "spec.mtls.tokenValidators[name=aws-iam] of the --config file (design §6.6)",
    "kubernetes_detected": "derived: whether KUBERNETES_SERVICE_HOST is set (resolves --mode auto)",
}


def min_ca_ttl(cfg: Config, role: str) -> timedelta:
    """The shortest ``--root-ttl`` (``role`` "root") or ``--issuer-ttl`` ("issuer") the rotation
    thresholds work with under ``cfg`` (see :data:`MAX_CA_TTL`): 12 expiry-check intervals, and
    for a root also 3 propagation windows."""
    least = MIN_CA_TTL_CHECKS * cfg.expiry_check_interval
    if role == "root":
        least = max(least, MIN_ROOT_TTL_WINDOWS * cfg.root_propagation_window)
    return least


def lifetime_problems(cfg: Config) -> list[str]:
    """What is wrong with ``--root-ttl``/``--issuer-ttl`` in ``cfg`` (each problem names its flag
    and the reason): out of (0, 87600h], too short for the rotation thresholds
    (:func:`min_ca_ttl`), or an issuer longer than its root (an issuer never outlives its root)."""
    problems: list[str] = []
    for flag, role, ttl in (("--root-ttl", "root", cfg.root_ttl), ("--issuer-ttl", "issuer", cfg.issuer_ttl)):
        if ttl is None:
            continue
        if not timedelta(0) < ttl <= MAX_CA_TTL:
            problems.append(f"{flag} must be positive and at most 87600h (10 years)")
            continue
        least = min_ca_ttl(cfg, role)
        if ttl < least:
            interval = format_duration(cfg.expiry_check_interval)
            why = f"{MIN_CA_TTL_CHECKS} x --expiry-check-interval {interval}"
            if role == "root" and least > MIN_CA_TTL_CHECKS * cfg.expiry_check_interval:
                why = (
                    f"{MIN_ROOT_TTL_WINDOWS} x --root-propagation-window "
                    f"{format_duration(cfg.root_propagation_window)}: a root is prepared with half its "
                    "lifetime left and must be a trust anchor for the window before it activates with "
                    "a sixth left"
                )
            else:
                why += (
                    ": rotation steps are taken at expiry checks, and the last sixth of a lifetime, "
                    "when a successor activates, must span two of them"
                )
            problems.append(
                f"{flag} {format_duration(ttl)} is too short: at least {format_duration(least)} ({why})"
            )
    if (
        cfg.root_ttl is not None
        and cfg.issuer_ttl is not None
        and timedelta(0) < cfg.root_ttl < cfg.issuer_ttl
    ):
        problems.append(
            f"--issuer-ttl {format_duration(cfg.issuer_ttl)} is longer than --root-ttl "
            f"{format_duration(cfg.root_ttl)}: an issuer never outlives its root (it would be cut "
            "to the root's NotAfter); make it at most the root's"
        )
    return problems


def validate(cfg: Config) -> Config:
    """``cfg`` itself if every cross-checked bound holds; else ConfigError listing every problem
    (``invalid configuration: P1; P2``), each naming its flag or variable."""
    problems: list[str] = []
    if p := trust_domain_problem(cfg.trust_domain):
        problems.append(f"--trust-domain: {p}")
    if p := namespace_problem(cfg.namespace):
        problems.append(f"NAMESPACE: {p}")
    if not timedelta(0) < cfg.workload_cert_ttl <= MAX_WORKLOAD_TTL:
        problems.append("--workload-cert-ttl must be positive and at most 87600h (10 years)")
    if not timedelta(0) <= cfg.allowed_clock_skew <= MAX_CLOCK_SKEW:
        problems.append("--allowed-clock-skew must be between 0s and 24h")
    if not timedelta(0) < cfg.expiry_check_interval <= MAX_EXPIRY_CHECK_INTERVAL:
        problems.append("--expiry-check-interval must be positive and at most 720h (30 days)")
    if not timedelta(0) <= cfg.store_poll_interval <= MAX_STORE_POLL_INTERVAL:
        problems.append("--store-poll-interval must be between 0s (off) and 24h")
    if cfg.emf_interval != timedelta(0) and not timedelta(seconds=1) <= cfg.emf_interval <= MAX_EMF_INTERVAL:
        problems.append("--emf-interval must be 0s (off) or between 1s and 1h")
    if not timedelta(0) <= cfg.root_propagation_window <= MAX_PROPAGATION_WINDOW:
        problems.append("--root-propagation-window must be between 0s and 720h (30 days)")
    problems += lifetime_problems(cfg)
    if not timedelta(0) < cfg.upstream_timeout <= MAX_UPSTREAM_TIMEOUT:
        problems.append("--upstream-timeout must be positive and at most 60s")
    if not 1 <= cfg.upstream_max_attempts <= MAX_UPSTREAM_ATTEMPTS:
        problems.append(f"--upstream-max-attempts must be between 1 and {MAX_UPSTREAM_ATTEMPTS}")
    if cfg.upstream_authority is not None:
        from ..upstream import UPSTREAM_KEY_ALGORITHMS

        if cfg.ca_key_algorithm not in UPSTREAM_KEY_ALGORITHMS:
            problems.append(
                f"--ca-key-algorithm {cfg.ca_key_algorithm.value} cannot be used with --upstream-authority "
                "(AWS Private CA signs only RSA and ECDSA P-256/P-384 keys: use ecdsa-p256 or ecdsa-p384)"
            )
        if cfg.root_key is not None:
            problems.append(
                "--root-key and --upstream-authority exclude each other (an upstream means no root key)"
            )
    for flag, value in (
        ("--message-timeout", cfg.message_timeout),
        ("--handshake-timeout", cfg.handshake_timeout),
    ):
        if not timedelta(0) < value <= MAX_CALL_TIMEOUT:
            problems.append(f"{flag} must be positive and at most 10m")
    if not timedelta(0) < cfg.idle_timeout <= MAX_IDLE_TIMEOUT:
        problems.append("--idle-timeout must be positive and at most 24h")
    if not timedelta(0) < cfg.jwt_ttl <= MAX_JWT_TTL:
        problems.append("--jwt-ttl must be positive and at most 720h (30 days)")
    if cfg.jwt_key_ttl and cfg.jwt_key_ttl < MIN_JWT_KEY_TTL:
        problems.append("--jwt-key-ttl must be 0 (no automatic JWT key rotation) or at least 24h")
    if cfg.jwt_issuer is not None and not cfg.jwt_enabled:
        problems.append("--jwt-issuer is set but --jwt-enabled is false (as Dapr's Sentry, this is refused)")
    for flag, text in (("--jwt-issuer", cfg.jwt_issuer), ("--jwt-key-id", cfg.jwt_key_id)):
        if text is not None and not 0 < len(text) <= MAX_JWT_CLAIM_LENGTH:
            problems.append(f"{flag} must be 1 to {MAX_JWT_CLAIM_LENGTH} characters")
        elif text is not None and not text.isprintable():
            problems.append(f"{flag} must be printable text (no control characters)")
    for name in (cfg.issuer_ca_filename, cfg.issuer_certificate_filename, cfg.issuer_key_filename):
        if not name or "/" in name or name in (".", ".."):
            problems.append(f"file name {name!r} must be a plain file name")
    problems.extend(oidc_problems(cfg))
    problems.extend(oidc_jwt_problems(cfg, cfg.jwt_enabled, cfg.jwt_issuer))
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return cfg


def oidc_problems(cfg: Config) -> list[str]:
    """The problems of the OIDC discovery server's and the federation publisher's settings
    (design §9.9): TLS needs both a certificate and a key (as Dapr's Sentry requires); URLs are
    absolute without query or fragment; the federation bucket is never the trust bundle's own."""
    problems: list[str] = []
    if cfg.oidc_enabled and cfg.oidc_server_tls_enabled:
        for flag, value in (
            ("--oidc-server-tls-cert-file", cfg.oidc_server_tls_cert_file),
            ("--oidc-server-tls-key-file", cfg.oidc_server_tls_key_file),
        ):
            if not value:
                problems.append(
                    f"{flag} is required with --oidc-enabled (unless --oidc-server-tls-enabled=false)"
                )
    if bool(cfg.oidc_server_tls_cert_file) != bool(cfg.oidc_server_tls_key_file):
        problems.append("--oidc-server-tls-cert-file and --oidc-server-tls-key-file go together")
    if cfg.oidc_jwks_uri is not None and (p := url_problem(cfg.oidc_jwks_uri, https_only=False)):
        problems.append(f"--oidc-jwks-uri: {p}")
    if cfg.oidc_path_prefix and (p := path_prefix_problem(cfg.oidc_path_prefix)):
        problems.append(f"--oidc-path-prefix: {p}")
    bucket = cfg.oidc_federation_bucket
    if bucket is not None:
        if not _BUCKET.fullmatch(bucket):
            problems.append(f"--oidc-federation-bucket: {bucket!r} is not an S3 bucket name")
        if bucket == bundle_bucket(cfg.store_url):
            problems.append(
                f"--oidc-federation-bucket: {bucket!r} holds the trust bundle, whose keys sit beside "
                "its public part; publish the OIDC documents to a bucket of their own"
            )
        if cfg.oidc_federation_provider_url is None:
            problems.append("--oidc-federation-provider-url is required with --oidc-federation-bucket")
    elif cfg.oidc_federation_provider_url is not None:
        problems.append("--oidc-federation-provider-url needs --oidc-federation-bucket")
    if cfg.oidc_federation_provider_url is not None and (p := url_problem(cfg.oidc_federation_provider_url)):
        problems.append(f"--oidc-federation-provider-url: {p}")
    prefix = cfg.oidc_federation_prefix
    if prefix:
        p = "must not start with '/'" if prefix.startswith("/") else path_prefix_problem("/" + prefix)
        if p:
            problems.append(f"--oidc-federation-prefix: {p}")
    return problems


def oidc_jwt_problems(cfg: Config, jwt_enabled: bool, jwt_issuer: str | None) -> list[str]:
    """The problems of the OIDC settings against JWT issuance (``--jwt-enabled``,
    ``--jwt-issuer``; design §9.9): both ways of discovery need JWT-SVIDs, and the published
    documents are an issuer's only when the tokens' ``iss`` is the provider URL. Called by
    :func:`validate` once the JWT options are fields of Config."""
    problems: list[str] = []
    federation = cfg.oidc_federation_bucket is not None
    if (cfg.oidc_enabled or federation) and not jwt_enabled:
        flag = "--oidc-enabled" if cfg.oidc_enabled else "--oidc-federation-bucket"
        problems.append(f"{flag} needs --jwt-enabled (there is no JWKS to serve without it)")
    url = cfg.oidc_federation_provider_url
    if federation and jwt_enabled and (jwt_issuer or "").rstrip("/") != (url or "").rstrip("/"):
        problems.append(
            f"--jwt-issuer ({jwt_issuer or 'unset'}) must be --oidc-federation-provider-url ({url}): "
            "verifiers accept a token only from the issuer whose documents they read"
        )
    return problems


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bundle_bucket(store_url: str) -> str | None:
    """The S3 bucket of an ``s3://BUCKET/KEY`` store URL, else None."""
    if not store_url.startswith("s3://"):
        return None
    return store_url[len("s3://") :].split("/", 1)[0].split("?", 1)[0] or None
