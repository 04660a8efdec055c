"""The one configuration object (SPEC §7), filled from flags, ``SENTRY_*`` environment variables
and a Dapr-Configuration-shaped YAML file, in that order of precedence, validated once.

Pure: the environment and file contents are passed in, never looked up here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .bundle import FileNames
from .durations import format_duration, parse_duration
from .errors import ConfigError
from .keys import KeyAlgorithm
from .spiffe_id import namespace_problem, trust_domain_problem

if TYPE_CHECKING:  # argparse is only a type here: the Lambda functions import this module cold
    import argparse

MODES = ("auto", "kubernetes", "standalone")
# Bounds that keep every certificate date computable and every setting sane; leaves are capped by
# the issuer's NotAfter anyway.
MAX_WORKLOAD_TTL = timedelta(days=3650)
MAX_CLOCK_SKEW = timedelta(hours=24)
MAX_EXPIRY_CHECK_INTERVAL = timedelta(days=30)
MAX_STORE_POLL_INTERVAL = timedelta(hours=24)
MAX_PROPAGATION_WINDOW = timedelta(days=30)


def _bool(text: str) -> bool:
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _port(text: str) -> int:
    n = _integer(text)
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} is out of range 0-65535")
    return n


MAX_WORKERS = 64


def _workers(text: str) -> int:
    n = _integer(text)
    if not 0 <= n <= MAX_WORKERS:
        raise ValueError(f"{n} must be between 0 (one per CPU) and {MAX_WORKERS}")
    return n


def _positive_int(text: str) -> int:
    n = _integer(text)
    if n < 1:
        raise ValueError(f"{n} must be at least 1")
    return n


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v < float("inf"):
        raise ValueError(f"{text!r} must be a number of requests per second, 0 or more (0: no limit)")
    return v


def _mode(text: str) -> str:
    v = text.strip().lower()
    if v not in MODES:
        raise ValueError(f"unknown mode {text!r}; use one of {', '.join(MODES)}")
    return v


def _algorithm(text: str) -> KeyAlgorithm:
    return KeyAlgorithm.parse(text)


def _audiences(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    if not items:
        raise ValueError("--token-audience needs at least one audience (comma-separated)")
    return items


_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _server_names(text: str) -> tuple[str, ...]:
    """Comma-separated DNS names and IP addresses (RFC 1123 names, lowercase; IPv4/IPv6)."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    for name in names:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if not _DNS_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is neither a DNS name nor an IP address") from None
    return names


def _log_level(text: str) -> str:
    v = text.strip().lower()
    if v not in ("debug", "info", "warn", "warning", "error", "fatal"):
        raise ValueError(f"unknown log level {text!r}; use debug, info, warn, error or fatal")
    return {"warn": "warning", "fatal": "critical"}.get(v, v)


@dataclass(frozen=True)
class Option:
    """One configuration option: ``--flag`` ↔ ``SENTRY_FLAG`` ↔ attribute ``dest``."""

    flag: str
    parse: Callable[[str], Any]
    help: str
    env: str | None = None  # default: SENTRY_<FLAG>

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env_name(self) -> str:
        return self.env or "SENTRY_" + self.flag.upper().replace("-", "_")


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("port", _port, "gRPC port (default 50001)"),
    Option("listen-address", str, "bind address of gRPC, /healthz and /metrics (default 127.0.0.1)"),
    Option("healthz-port", _port, "HTTP port of /healthz and /livez (default 8080)"),
    Option("metrics-port", _port, "Prometheus metrics port (default 9090)"),
    Option("enable-metrics", _bool, "serve Prometheus metrics (default true)"),
    Option("trust-domain", str, "the CA's (control-plane) trust domain (default localhost)"),
    Option("mode", _mode, "auto, kubernetes or standalone: selects the default validators (default auto)"),
    Option("config", str, "YAML file in the shape of Dapr's Configuration (spec.mtls.*)"),
    Option(
        "token-audience",
        _audiences,
        "TokenReview audiences, comma-separated (default: dapr.io/sentry and the CA's SPIFFE ID)",
    ),
    Option(
        "server-names",
        _server_names,
        "extra DNS names / IPs for the CA's TLS certificate, comma-separated, e.g. the load "
        "balancer's name (always: localhost, 127.0.0.1, ::1 and a specific --listen-address)",
    ),
    Option("workload-cert-ttl", parse_duration, "workload certificate lifetime, Go duration (default 24h)"),
    Option("allowed-clock-skew", parse_duration, "NotBefore backdating, Go duration (default 15m)"),
    Option(
        "ca-key-algorithm", _algorithm, "for generated roots and issuers: ecdsa-p256, ecdsa-p384, ed25519"
    ),
    Option(
        "expiry-check-interval",
        parse_duration,
        "how often the watcher checks root/issuer expiry (default 1h)",
    ),
    Option(
        "store-poll-interval",
        parse_duration,
        "how often the running CA checks the store for a new bundle version and restarts in place "
        "when it changed, Go duration; 0s = never (default 0s)",
    ),
    Option(
        "auto-rotate",
        _bool,
        "rotate the root and the issuer automatically: prepare a successor when less than "
        "min(lifetime/2, 30 days) remains, activate it when less than min(lifetime/6, 7 days) "
        "remains (only for a root whose key the CA holds; default false)",
    ),
    Option(
        "root-propagation-window",
        parse_duration,
        "how long a new root is in the trust anchors before its issuer signs (so workloads learn it "
        "first: a workload learns new anchors when it renews, so set it to at least "
        "--workload-cert-ttl for a rotation no workload notices; shorter is allowed, e.g. for tests), "
        "Go duration, 0s-720h (default 24h)",
    ),
    Option(
        "allow-insecure-on-network",
        _bool,
        "allow the INSECURE validator on a non-loopback --listen-address (default false)",
    ),
    Option(
        "max-concurrent-streams",
        _positive_int,
        "gRPC: most concurrent calls on one client connection (HTTP/2 streams; default 100)",
    ),
    Option(
        "rate-limit",
        _rate,
        "SignCertificate requests per second allowed to one caller (peer IP address), bursts of as "
        "many; more get RESOURCE_EXHAUSTED. 0: no limit (default 1000)",
    ),
    Option(
        "workers",
        _workers,
        "gRPC server processes sharing --port (SO_REUSEPORT), each a whole CA on the same store, "
        "under one supervisor that serves /healthz, /livez and /metrics for all; 0: one per CPU "
        "(default 1: no supervisor)",
    ),
    Option("log-level", _log_level, "debug, info, warn, error (default info)"),
    Option("log-as-json", _bool, "log JSON lines (default false)"),
)

STORE_OPTIONS: tuple[Option, ...] = (
    Option("issuer-credentials", str, "directory of the file store (default ./.sentry/credentials)"),
    Option(
        "trust-bundle-store",
        str,
        "file://DIR (default: file:// + --issuer-credentials), s3://BUCKET/KEY, secretsmanager://NAME-OR-ARN "
        "(both with optional ?kms-key-id=KEY), kubernetes://NAMESPACE/SECRET",
    ),
    Option(
        "kubeconfig",
        str,
        "kubeconfig file for the Kubernetes API (validator, kubernetes:// store; default: in-cluster)",
    ),
    Option("issuer-ca-filename", str, "trust anchors file name / Secret key (default ca.crt)"),
    Option(
        "issuer-certificate-filename", str, "issuer certificate file name / Secret key (default issuer.crt)"
    ),
    Option("issuer-key-filename", str, "issuer key file name / Secret key (default issuer.key)"),
)


JWKS_OPTION_KEYS = ("source", "caCertificate", "minRefreshInterval", "requestTimeout")
DEFAULT_JWKS_MIN_REFRESH = timedelta(minutes=10)
DEFAULT_JWKS_REQUEST_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class JwksSettings:
    """``spec.mtls.tokenValidators[name=jwks].options`` (SPEC §6, §7).

    source: an https:// URL (plain http:// is refused), a file path, or the JWKS JSON itself (optionally
    base64-encoded); ca_certificate: PEM text or a PEM file path trusted for an https source
    (None: the system's trust store); min_refresh_interval: the least time between two fetches;
    request_timeout: the bound of one fetch.
    """

    source: str
    ca_certificate: str | None = None
    min_refresh_interval: timedelta = DEFAULT_JWKS_MIN_REFRESH
    request_timeout: timedelta = DEFAULT_JWKS_REQUEST_TIMEOUT

    def __repr__(self) -> str:  # the inline JWKS or CA PEM may be long: name the kind only
        src = self.source if len(self.source) < 200 else f"<inline JWKS, {len(self.source)} chars>"
        return (
            f"JwksSettings(source={src!r}, min_refresh_interval={format_duration(self.min_refresh_interval)})"
        )


@dataclass(frozen=True)
class Config:
    """Every setting of the CA, typed and validated. Build with :func:`load_config`.

    Durations are timedelta; ports ints (0 = any free port, for tests).
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
    jwks: JwksSettings | None = None
    workload_cert_ttl: timedelta = timedelta(hours=24)
    allowed_clock_skew: timedelta = timedelta(minutes=15)
    ca_key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    expiry_check_interval: timedelta = timedelta(hours=1)
    store_poll_interval: timedelta = timedelta(0)
    auto_rotate: bool = False
    root_propagation_window: timedelta = timedelta(hours=24)
    log_level: str = "info"
    log_as_json: bool = False
    allow_insecure_on_network: bool = False
    max_concurrent_streams: int = 100
    rate_limit: float = 1000.0
    workers: int = 1
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
        return FileNames(self.issuer_ca_filename, self.issuer_certificate_filename, self.issuer_key_filename)

    @property
    def effective_mode(self) -> str:
        """``kubernetes`` or ``standalone`` (``auto`` resolved by KUBERNETES_SERVICE_HOST)."""
        if self.mode != "auto":
            return self.mode
        return "kubernetes" if self.kubernetes_detected else "standalone"

    def with_changes(self, **changes: Any) -> Config:
        """A validated copy with ``changes`` applied."""
        return _validated(replace(self, **changes))

    def describe(self) -> dict[str, str]:
        """Settings as strings, for a start-up log line (no secrets are held here)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, timedelta):
                v = format_duration(v)
            elif isinstance(v, KeyAlgorithm):
                v = v.value
            elif isinstance(v, tuple):
                v = ",".join(v)
            out[f.name] = str(v)
        return out


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Add ``options`` as flags whose default is 'unset' (so env and file can fill them)."""
    for opt in options:
        parser.add_argument(
            f"--{opt.flag}", dest=opt.dest, default=None, metavar=opt.dest.upper(), help=opt.help
        )


def _parse_value(opt: Option, raw: str, source: str) -> Any:
    try:
        return opt.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_config_file(text: str, path: str) -> dict[str, Any]:
    """Settings from a Dapr Configuration YAML (``spec.mtls.workloadCertTTL``,
    ``allowedClockSkew``, ``tokenValidators``). Raises ConfigError naming the file and field."""
    import yaml  # here, not at the top: the Lambda functions import this module on a cold start

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: spec must be a mapping")
    mtls = spec.get("mtls") or {}
    if not isinstance(mtls, dict):
        raise ConfigError(f"{path}: spec.mtls must be a mapping")
    out: dict[str, Any] = {}
    for key, dest in (("workloadCertTTL", "workload_cert_ttl"), ("allowedClockSkew", "allowed_clock_skew")):
        if mtls.get(key) not in (None, ""):
            try:
                out[dest] = parse_duration(str(mtls[key]))
            except ValueError as e:
                raise ConfigError(f"{path}: spec.mtls.{key}: {e}") from None
    validators = mtls.get("tokenValidators")
    if validators not in (None, "", []):
        jwks = _read_token_validators(validators, f"{path}: spec.mtls.tokenValidators")
        if jwks is not None:
            out["jwks"] = jwks
    return out


def _read_token_validators(items: Any, where: str) -> JwksSettings | None:
    """The additional validators of a Configuration file: only ``jwks`` may be configured;
    KUBERNETES and INSECURE follow from ``--mode`` (SPEC §7). Raises ConfigError."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of {{name, options}}")
    jwks: JwksSettings | None = None
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{at}: expected a mapping with a 'name'")
        name = item["name"].strip().lower()
        if name in ("kubernetes", "insecure", "selfhosted"):
            raise ConfigError(
                f"{at}: {name!r} cannot be configured here: KUBERNETES and INSECURE follow from "
                "--mode (kubernetes mode enables KUBERNETES, standalone mode without other validators "
                "enables INSECURE); only 'jwks' may be listed"
            )
        if name != "jwks":
            raise ConfigError(f"{at}: unknown token validator {item['name']!r}; only 'jwks' may be listed")
        if jwks is not None:
            raise ConfigError(f"{at}: 'jwks' is listed more than once")
        jwks = _jwks_settings(item.get("options"), f"{at}.options")
    return jwks


def _jwks_settings(options: Any, where: str) -> JwksSettings:
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping with at least 'source'")
    unknown = sorted(set(options) - set(JWKS_OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(JWKS_OPTION_KEYS)}"
        )
    source = options.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}.source: required (an https:// URL, a file path or the JWKS JSON)")
    ca = options.get("caCertificate")
    if ca is not None and (not isinstance(ca, str) or not ca.strip()):
        raise ConfigError(f"{where}.caCertificate: expected PEM text or a file path")
    durations = {}
    for key, default in (
        ("minRefreshInterval", DEFAULT_JWKS_MIN_REFRESH),
        ("requestTimeout", DEFAULT_JWKS_REQUEST_TIMEOUT),
    ):
        raw = options.get(key)
        if raw in (None, ""):
            durations[key] = default
            continue
        try:
            value = parse_duration(str(raw))
        except ValueError as e:
            raise ConfigError(f"{where}.{key}: {e}") from None
        if value <= timedelta(0):
            raise ConfigError(f"{where}.{key}: must be positive")
        durations[key] = value
    return JwksSettings(source.strip(), ca, durations["minRefreshInterval"], durations["requestTimeout"])


def load_config(
    flags: argparse.Namespace | Mapping[str, Any],
    env: Mapping[str, str],
    read_file: Callable[[str], str] | None = None,
) -> Config:
    """Merge flags > ``SENTRY_*`` env > ``--config`` file > defaults into a validated Config.

    flags: parsed argparse namespace (unset flags are None) or a mapping of dest → string;
    env: the process environment (NAMESPACE and KUBERNETES_SERVICE_HOST are read from it too);
    read_file: returns a file's text (for ``--config``). Raises ConfigError naming the source.
    """
    given = dict(flags) if isinstance(flags, Mapping) else vars(flags)
    values: dict[str, Any] = {}
    config_path = given.get("config") or env.get("SENTRY_CONFIG")
    if config_path:
        if read_file is None:
            raise ConfigError("--config given but no way to read files")
        try:
            text = read_file(config_path)
        except OSError as e:
            raise ConfigError(f"--config {config_path}: cannot read ({e.strerror})") from None
        values.update(read_config_file(text, config_path))
    for opt in (*SERVE_OPTIONS, *STORE_OPTIONS):
        if opt.env_name in env and env[opt.env_name] != "":
            values[opt.dest] = _parse_value(opt, env[opt.env_name], opt.env_name)
        if given.get(opt.dest) is not None:
            values[opt.dest] = _parse_value(opt, given[opt.dest], f"--{opt.flag}")
    if env.get("NAMESPACE"):
        values["namespace"] = env["NAMESPACE"]
    values["kubernetes_detected"] = bool(env.get("KUBERNETES_SERVICE_HOST"))
    return _validated(Config(**values))


def _validated(cfg: Config) -> Config:
    problems = []
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
    if not timedelta(0) <= cfg.root_propagation_window <= MAX_PROPAGATION_WINDOW:
        problems.append("--root-propagation-window must be between 0s and 720h (30 days)")
    for name in (cfg.issuer_ca_filename, cfg.issuer_certificate_filename, cfg.issuer_key_filename):
        if not name or "/" in name or name in (".", ".."):
            problems.append(f"file name {name!r} must be a plain file name")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return cfg
