"""Trust-bundle stores: the ``BundleStore`` port (``base``) and one module per backend.

Only ``files`` (the embedded default) exists so far; the URL scheme of
``--trust-bundle-store`` selects the adapter (see :func:`open_store`).
"""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import ConfigError
from .base import BundleStore, StoredBundle, load_or_create
from .files import FileBundleStore, FileNames

__all__ = ["BundleStore", "FileBundleStore", "FileNames", "StoredBundle", "load_or_create", "open_store"]


def open_store(url: str, file_names: FileNames | None = None) -> BundleStore:
    """The store for ``url``: ``file://DIR`` (relative or absolute directory).

    Raises ConfigError for a malformed URL or a scheme this version does not support.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
        if not path:
            raise ConfigError(
                f"trust bundle store {url!r}: file:// needs a directory, e.g. file://./.sentry/credentials"
            )
        return FileBundleStore(path, file_names or FileNames())
    if parsed.scheme in ("s3", "secretsmanager", "kubernetes"):
        raise ConfigError(
            f"trust bundle store {url!r}: the {parsed.scheme} store is not available in this version; "
            "use file://DIR"
        )
    raise ConfigError(
        f"trust bundle store {url!r}: unknown scheme {parsed.scheme!r}; "
        "use file://DIR, s3://BUCKET/KEY, secretsmanager://NAME or kubernetes://NAMESPACE/SECRET"
    )
