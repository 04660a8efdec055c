"""Trust-bundle stores: the ``BundleStore`` port (``base``) and one module per backend.

The URL of ``--trust-bundle-store`` selects the adapter (see :func:`open_store`): ``file://DIR``
(``files``), ``s3://BUCKET/KEY`` (``s3``), ``secretsmanager://NAME-OR-ARN`` (``secretsmanager``),
``kubernetes://NAMESPACE/SECRET`` (``kubernetes_secret``). The AWS adapters import boto3 lazily,
the Kubernetes adapter the ``kubernetes`` client.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlparse

from ca_core.errors import ConfigError
from ca_core.spiffe_id import namespace_problem

from .base import (
    NO_RETRY,
    BundleStore,
    Retry,
    StoredBundle,
    decode_document,
    encode_document,
    load_or_create,
    load_or_create_stored,
    parse_stored,
)
from .files import FileBundleStore, FileNames

__all__ = [
    "NO_RETRY",
    "BundleStore",
    "FileBundleStore",
    "FileNames",
    "Retry",
    "StoreContext",
    "StoredBundle",
    "decode_document",
    "encode_document",
    "load_or_create",
    "load_or_create_stored",
    "open_store",
    "parse_stored",
]


@dataclass(frozen=True)
class StoreContext:
    """What an adapter may need besides its URL: ``file_names``, the item names of the file and
    Kubernetes stores (``--issuer-*-filename``); ``kubeconfig``, the Kubernetes API access of the
    Kubernetes store (a kubeconfig file, or None for the in-cluster service account)."""

    file_names: FileNames = field(default_factory=FileNames)
    kubeconfig: str | None = None


SCHEMES = "file://DIR, s3://BUCKET/KEY, secretsmanager://NAME-OR-ARN or kubernetes://NAMESPACE/SECRET"


def _split(url: str, scheme: str) -> tuple[str, dict[str, str]]:
    """``rest`` after ``scheme://`` and the query options (``?kms-key-id=...``)."""
    rest = url[len(scheme) + 3 :]
    rest, _, query = rest.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(f"trust bundle store {url!r}: malformed options {query!r}") from None
    return rest, options


def _only(url: str, options: dict[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        raise ConfigError(f"trust bundle store {url!r}: unknown option(s) {', '.join(unknown)}{hint}")


def _file(url: str, ctx: StoreContext) -> BundleStore:
    parsed = urlparse(url)
    path = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
    if not path:
        raise ConfigError(
            f"trust bundle store {url!r}: file:// needs a directory, e.g. file://./.sentry/credentials"
        )
    return FileBundleStore(path, ctx.file_names)


def _s3(url: str, ctx: StoreContext) -> BundleStore:
    from .s3 import S3BundleStore

    rest, options = _split(url, "s3")
    _only(url, options, ("kms-key-id",))
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(
            f"trust bundle store {url!r}: use s3://BUCKET/KEY (an object key, e.g. sentry/bundle.json)"
        )
    return S3BundleStore(bucket, key, kms_key_id=options.get("kms-key-id") or None)


def _secretsmanager(url: str, ctx: StoreContext) -> BundleStore:
    from .secretsmanager import SecretsManagerBundleStore

    rest, options = _split(url, "secretsmanager")
    _only(url, options, ("kms-key-id",))
    if not rest:
        raise ConfigError(f"trust bundle store {url!r}: use secretsmanager://NAME or secretsmanager://ARN")
    return SecretsManagerBundleStore(rest, kms_key_id=options.get("kms-key-id") or None)


# A Secret's name: a DNS subdomain (RFC 1123), as the Kubernetes API validates it.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _kubernetes(url: str, ctx: StoreContext) -> BundleStore:
    from .kubernetes_secret import KubernetesSecretBundleStore

    rest, options = _split(url, "kubernetes")
    _only(url, options, ())
    namespace, _, secret = rest.partition("/")
    if not namespace or not secret or "/" in secret:
        raise ConfigError(f"trust bundle store {url!r}: use kubernetes://NAMESPACE/SECRET")
    if p := namespace_problem(namespace):
        raise ConfigError(f"trust bundle store {url!r}: namespace: {p}")
    if len(secret) > 253 or not _DNS_SUBDOMAIN.match(secret):
        raise ConfigError(
            f"trust bundle store {url!r}: {secret!r} is not a valid Secret name (lower-case letters, "
            "digits, '-' and '.', at most 253 characters, e.g. dapr-trust-bundle)"
        )
    return KubernetesSecretBundleStore(namespace, secret, ctx.file_names, kubeconfig=ctx.kubeconfig)


# scheme → factory(url, context).
FACTORIES: dict[str, Callable[[str, StoreContext], BundleStore]] = {
    "file": _file,
    "s3": _s3,
    "secretsmanager": _secretsmanager,
    "kubernetes": _kubernetes,
}


def open_store(
    url: str, file_names: FileNames | None = None, *, kubeconfig: str | None = None
) -> BundleStore:
    """The store for ``url``: ``file://DIR`` (relative or absolute), ``s3://BUCKET/KEY``,
    ``secretsmanager://NAME-OR-ARN`` (both with optional ``?kms-key-id=KEY``),
    ``kubernetes://NAMESPACE/SECRET``. ``file_names``: item names in the file and Kubernetes
    stores; ``kubeconfig``: Kubernetes API access for the Kubernetes store (None: in-cluster).
    Creating a store does no I/O. Raises ConfigError for a malformed URL or an unknown scheme.
    """
    scheme, sep, _ = url.partition("://")
    factory = FACTORIES.get(scheme) if sep else None
    if factory is None:
        raise ConfigError(f"trust bundle store {url!r}: unknown scheme {scheme!r}; use {SCHEMES}")
    return factory(url, StoreContext(file_names or FileNames(), kubeconfig))
