"""The trust of an adapter's outbound HTTPS calls (a JWKS source, STS): a ``caCertificate`` option
given as PEM text or a PEM file path, else the system's store."""

from __future__ import annotations

import ssl

from ca_core.errors import ConfigError


def trust_context(ca_certificate: str | None, where: str) -> ssl.SSLContext:
    """A client context verifying the server's chain and host name against ``ca_certificate``
    (PEM text when it holds ``-----BEGIN``, else a file path), or the system's store when None.
    Raises ConfigError naming ``where`` (the option) when the certificates cannot be loaded."""
    if ca_certificate is None:
        return ssl.create_default_context()
    try:
        if "-----BEGIN" in ca_certificate:
            return ssl.create_default_context(cadata=ca_certificate)
        return ssl.create_default_context(cafile=ca_certificate)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(f"{where}: cannot be loaded ({e})") from None
