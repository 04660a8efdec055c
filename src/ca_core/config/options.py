"""The option table (design §7): every ``--flag`` ↔ ``SENTRY_FLAG`` ↔ :class:`Config` field, with the
parser of its text value. The single source of the settings a flag or the environment may give.

A parser takes the flag's text and returns the typed value, or raises ValueError with a message the
loader prefixes with the source (``--port: ...``, ``SENTRY_PORT: ...``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..durations import parse_duration
from .values import (
    parse_algorithm,
    parse_audiences,
    parse_bool,
    parse_bootstrap_policy,
    parse_cluster_domain,
    parse_hosts,
    parse_jwt_algorithm,
    parse_kms_ref,
    parse_log_level,
    parse_mode,
    parse_non_negative_int,
    parse_port,
    parse_positive_int,
    parse_rate,
    parse_server_names,
    parse_upstream,
    parse_workers,
)

if TYPE_CHECKING:  # argparse is only a type here: the Lambda functions import this package cold
    import argparse


@dataclass(frozen=True)
class Option:
    """One configuration option: ``--flag`` ↔ ``SENTRY_FLAG`` ↔ attribute ``dest``.

    parse: text → typed value, ValueError on a bad one; help: the ``--help`` line, whose
    ``(default X)`` states the :class:`Config` default; env: the variable, if not ``SENTRY_<FLAG>``.
    """

    flag: str
    parse: Callable[[str], Any]
    help: str
    env: str | None = None  # default: SENTRY_<FLAG>

    @property
    def dest(self) -> str:
        """The :class:`Config` field (and argparse dest): the flag with ``-`` → ``_``."""
        return self.flag.replace("-", "_")

    @property
    def env_name(self) -> str:
        """The environment variable: ``env``, else ``SENTRY_`` + the flag upper-cased."""
        return self.env or "SENTRY_" + self.flag.upper().replace("-", "_")


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("port", parse_port, "gRPC port (default 50001)"),
    Option("listen-address", str, "bind address of gRPC, /healthz and /metrics (default 127.0.0.1)"),
    Option("healthz-port", parse_port, "HTTP port of /healthz and /livez (default 8080)"),
    Option("metrics-port", parse_port, "Prometheus metrics port (default 9090)"),
    Option("enable-metrics", parse_bool, "serve Prometheus metrics (default true)"),
    Option("trust-domain", str, "the CA's (control-plane) trust domain (default localhost)"),
    Option(
        "mode", parse_mode, "auto, kubernetes or standalone: selects the default validators (default auto)"
    ),
    Option("config", str, "YAML file in the shape of Dapr's Configuration (spec.mtls.*)"),
    Option(
        "token-audience",
        parse_audiences,
        "TokenReview audiences, comma-separated (default: dapr.io/sentry and the CA's SPIFFE ID)",
    ),
    Option(
        "server-names",
        parse_server_names,
        "extra DNS names / IPs for the CA's TLS certificate, comma-separated, e.g. the load "
        "balancer's name (always: localhost, 127.0.0.1, ::1 and a specific --listen-address)",
    ),
    Option(
        "kube-cluster-domain",
        parse_cluster_domain,
        "the Kubernetes cluster domain in the scheduler's DNS SANs, e.g. cluster.local (unset: in "
        "kubernetes mode derived from kubernetes.default.svc's canonical name, else and on failure "
        "the trust domain, as Dapr's Sentry does)",
    ),
    Option("workload-cert-ttl", parse_duration, "workload certificate lifetime, Go duration (default 24h)"),
    Option("allowed-clock-skew", parse_duration, "NotBefore backdating, Go duration (default 15m)"),
    Option(
        "ca-key-algorithm",
        parse_algorithm,
        "for generated roots and issuers: ecdsa-p256, ecdsa-p384, ed25519",
    ),
    Option(
        "root-key",
        parse_kms_ref,
        "where a generated root's key lives: kms://<key id, ARN or alias> of an asymmetric SIGN_VERIFY "
        "KMS key (ECC_NIST_P256, ECC_NIST_P384, RSA_*); the root is signed by KMS and the store keeps "
        "only the reference (root.kms) (default: a local key of --ca-key-algorithm, kept as root.key)",
    ),
    Option(
        "issuer-key",
        parse_kms_ref,
        "where a generated issuer's key lives: kms://<key id, ARN or alias> of an asymmetric SIGN_VERIFY "
        "KMS key; every leaf is then signed by KMS Sign (a network call each, at most KMS's Sign quota) "
        "and the store keeps only the reference (issuer.kms) (default: a local key of "
        "--ca-key-algorithm, kept as issuer.key)",
    ),
    Option(
        "jwt-enabled",
        parse_bool,
        "issue JWT-SVIDs (response fields jwt and per_audience_jwts) beside each certificate, signed "
        "by the bundle's JWT key (jwt.key, published in jwks.json; generated when missing) (default false)",
    ),
    Option(
        "jwt-ttl",
        parse_duration,
        "JWT-SVID lifetime, never past the certificate's NotAfter; Go duration, up to 720h (default 24h)",
    ),
    Option("jwt-issuer", str, "the iss claim of JWT-SVIDs (default: none); needs --jwt-enabled"),
    Option(
        "jwt-signing-algorithm",
        parse_jwt_algorithm,
        "RS256 (RSA-2048), ES256 or EdDSA: the JWT key generated, and what a stored one must be "
        "(default RS256)",
    ),
    Option(
        "jwt-key-id",
        str,
        "the kid of JWT-SVIDs; must name the JWT key's entry in jwks.json (default: that entry's "
        "kid, for a generated key the base64 SHA-256 JWK thumbprint, RFC 7638)",
    ),
    Option(
        "jwt-key-ttl",
        parse_duration,
        "with --auto-rotate, how long a JWT key signs before its successor does; 0 never rotates it "
        "automatically; Go duration, 0 or at least 24h (default 2160h, 90 days)",
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
        "bootstrap-policy",
        parse_bootstrap_policy,
        "when a start may generate a new root and issuer in an empty store: if-never-held (only "
        "in a store that shows no sign of having held a bundle) or never (only `sentryca bundle "
        "init` creates one; a start on an empty store is refused) (default if-never-held)",
    ),
    Option(
        "auto-rotate",
        parse_bool,
        "rotate the root and the issuer automatically: prepare a successor when less than "
        "min(lifetime/2, 30 days) remains, activate it when less than min(lifetime/6, 7 days) "
        "remains (only for a root whose key the CA holds); with --jwt-enabled also the JWT signing "
        "key, every --jwt-key-ttl (default false)",
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
        "root-ttl",
        parse_duration,
        "lifetime of generated roots, Go duration, at least 3 x --root-propagation-window and 12 x "
        "--expiry-check-interval, at most 87600h (default: 8760h for a new bundle; a rotation "
        "keeps the lifetime of the root it replaces)",
    ),
    Option(
        "issuer-ttl",
        parse_duration,
        "lifetime of generated issuers, Go duration, at least 12 x --expiry-check-interval, at "
        "most --root-ttl; an issuer never outlives its root (default: 8760h for a new bundle, cut "
        "to the root's NotAfter; a rotation keeps the lifetime of the issuer it replaces)",
    ),
    Option(
        "upstream-authority",
        parse_upstream,
        "acm-pca://<CA ARN>: AWS Private CA signs the issuer (a path-length-0 subordinate CA for a "
        "key generated here) and its roots are the trust anchors; no root key is held, and "
        "--auto-rotate asks it for each new issuer (default: none, the CA's own root)",
    ),
    Option(
        "upstream-timeout",
        parse_duration,
        "AWS Private CA (--upstream-authority): how long one request may take to connect, and "
        "again to read each answer, before it counts as unreachable; Go duration, up to 60s "
        "(default 5s)",
    ),
    Option(
        "upstream-max-attempts",
        parse_positive_int,
        "AWS Private CA (--upstream-authority): tries of each call in all, the first included, "
        "with backoff and jitter between them (the SDK's own retries off), 1-10; the running CA "
        "then serves its current issuer and tries again at the next expiry check (default 2)",
    ),
    Option(
        "allow-insecure-on-network",
        parse_bool,
        "allow the INSECURE validator on a non-loopback --listen-address (default false)",
    ),
    Option(
        "max-concurrent-streams",
        parse_positive_int,
        "gRPC: most concurrent calls on one client connection (HTTP/2 streams; default 100)",
    ),
    Option(
        "max-in-flight",
        parse_positive_int,
        "gRPC: most SignCertificate calls the CA holds at once, from a call's start to its answer "
        "(waiting for the request message included); more get RESOURCE_EXHAUSTED (default 1024)",
    ),
    Option(
        "max-in-flight-per-peer",
        parse_non_negative_int,
        "gRPC: most calls (SignCertificate and health) one peer address holds at once; more get "
        "RESOURCE_EXHAUSTED. Behind a proxy that hides client addresses, raise it or set 0 (no such "
        "limit) (default 128)",
    ),
    Option(
        "message-timeout",
        parse_duration,
        "gRPC: how long a call's request message may take to arrive after the call starts; later "
        "gets DEADLINE_EXCEEDED. Go duration, up to 10m (default 10s)",
    ),
    Option(
        "max-connections",
        parse_positive_int,
        "gRPC: most client connections open at once, handshakes included; more are closed at once. "
        "The open-file limit is raised to this plus 256 where the hard limit allows (default 4096)",
    ),
    Option(
        "handshake-timeout",
        parse_duration,
        "gRPC: how long a new connection may take for its TLS handshake and HTTP/2 preface before it "
        "is closed. Go duration, up to 10m (default 10s)",
    ),
    Option(
        "idle-timeout",
        parse_duration,
        "gRPC: a client connection with no call for this long is closed (GOAWAY; clients reconnect "
        "when they next call). Go duration, up to 24h (default 5m)",
    ),
    Option(
        "rate-limit",
        parse_rate,
        "SignCertificate requests per second allowed to one caller (peer IP address), bursts of as "
        "many; more get RESOURCE_EXHAUSTED. 0: no limit (default 1000)",
    ),
    Option(
        "identity-rate-limit",
        parse_rate,
        "SignCertificate requests per second allowed to one proven identity (SPIFFE ID), checked "
        "after its validator proved it, bursts of as many; more get RESOURCE_EXHAUSTED. 0: no limit "
        "(default 0)",
    ),
    Option(
        "workers",
        parse_workers,
        "gRPC server processes sharing --port (SO_REUSEPORT), each a whole CA on the same store, "
        "under one supervisor that serves /healthz, /livez and /metrics for all; 0: one per CPU "
        "(default 1: no supervisor)",
    ),
    Option(
        "oidc-enabled",
        parse_bool,
        "serve the OIDC discovery document and the JWKS over HTTP(S) (default false)",
    ),
    Option("oidc-server-listen-port", parse_port, "port of the OIDC discovery server (default 9080)"),
    Option(
        "oidc-server-listen-address", str, "bind address of the OIDC discovery server (default localhost)"
    ),
    Option(
        "oidc-server-tls-enabled",
        parse_bool,
        "serve OIDC discovery over TLS with --oidc-server-tls-cert-file and --oidc-server-tls-key-file "
        "(both required then); false: plain HTTP, for a TLS-terminating proxy in front (default true)",
    ),
    Option("oidc-server-tls-cert-file", str, "PEM certificate chain of the OIDC discovery server"),
    Option("oidc-server-tls-key-file", str, "PEM private key of the OIDC discovery server"),
    Option(
        "oidc-jwks-uri",
        str,
        "the jwks_uri the discovery document states, when verifiers reach the JWKS elsewhere "
        "(default: the server's own <prefix>/jwks.json)",
    ),
    Option("oidc-path-prefix", str, "URL path prefix of the two OIDC endpoints, e.g. /oidc (default: none)"),
    Option(
        "oidc-allowed-hosts",
        parse_hosts,
        "hosts (Host or X-Forwarded-Host, with or without port) the OIDC server answers, "
        "comma-separated; others get 403 (default: any host)",
    ),
    Option(
        "oidc-federation-bucket",
        str,
        "S3 bucket to publish the OIDC discovery document and the JWKS to on every JWKS change, for "
        "cloud federation without a server (never the trust bundle's bucket; default: not published)",
    ),
    Option(
        "oidc-federation-prefix",
        str,
        "key prefix in --oidc-federation-bucket, e.g. sentryca: the documents are then "
        "sentryca/.well-known/openid-configuration and sentryca/jwks.json (default: none)",
    ),
    Option(
        "oidc-federation-provider-url",
        str,
        "the https URL the published documents are read from, the issuer of the JWT-SVIDs, e.g. "
        "https://BUCKET.s3.REGION.amazonaws.com/PREFIX (required with --oidc-federation-bucket)",
    ),
    Option("log-level", parse_log_level, "debug, info, warn, error (default info)"),
    Option("log-as-json", parse_bool, "log JSON lines (default false)"),
    Option(
        "emf-interval",
        parse_duration,
        "write the signing metrics to stdout as CloudWatch Embedded Metric Format documents this "
        "often (what changed since the last one), for CloudWatch Logs to extract; Go duration, "
        "0s = never (default 0s)",
    ),
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


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Add ``options`` as flags whose default is 'unset' (so env and file can fill them)."""
    for opt in options:
        parser.add_argument(
            f"--{opt.flag}", dest=opt.dest, default=None, metavar=opt.dest.upper(), help=opt.help
        )
