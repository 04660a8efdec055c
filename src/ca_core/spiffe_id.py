"""SPIFFE IDs and trust domains, per the SPIFFE-ID specification (spiffe.io, SPIFFE-ID.md §2).

A workload's SPIFFE ID in this CA has the Dapr shape ``spiffe://<trust-domain>/ns/<namespace>/<app-id>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PermissionDenied

SCHEME = "spiffe://"
MAX_TRUST_DOMAIN_LEN = 255  # SPIFFE-ID §2.1: a trust domain is at most 255 bytes
MAX_SPIFFE_ID_LEN = 2048  # SPIFFE-ID §2.3: URI length limit
MAX_APP_ID_LEN = 64  # Sentry's limit on app ids
DEFAULT_TRUST_DOMAIN = "public"  # Sentry's trust domain when none is configured

_TRUST_DOMAIN_CHARS = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TRUST_DOMAIN_LABEL = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?")


def trust_domain_problem(trust_domain: str) -> str | None:
    """Why ``trust_domain`` is not a valid SPIFFE trust domain, or None when it is.

    Rules (SPIFFE-ID §2.1): non-empty, at most 255 characters, only lowercase letters,
    digits, ``.``, ``-`` and ``_``; and this project's DNS shape (design §3.3): labels separated by
    single dots, each starting and ending with a letter or digit.
    """
    if not trust_domain:
        return "trust domain is empty"
    if len(trust_domain) > MAX_TRUST_DOMAIN_LEN:
        return f"trust domain is longer than {MAX_TRUST_DOMAIN_LEN} characters"
    if not _TRUST_DOMAIN_CHARS.fullmatch(trust_domain):
        return (
            f"trust domain {trust_domain!r} has characters other than lowercase letters, "
            "digits, '.', '-' and '_'"
        )
    if not all(_TRUST_DOMAIN_LABEL.fullmatch(label) for label in trust_domain.split(".")):
        return (
            f"trust domain {trust_domain!r} is not DNS-shaped (labels separated by single dots, "
            "each starting and ending with a letter or digit)"
        )
    return None


def app_id_problem(app_id: str) -> str | None:
    """Why ``app_id`` cannot be a Dapr app id, or None: non-empty, no ``.``, ≤ 64 characters,
    and a valid SPIFFE path segment (letters, digits, ``-``, ``_``)."""
    if not app_id:
        return "app id is empty"
    if "." in app_id:
        return "app id must not contain '.'"
    if len(app_id) > MAX_APP_ID_LEN:
        return f"app id is longer than {MAX_APP_ID_LEN} characters"
    if not _PATH_SEGMENT_CHARS.fullmatch(app_id):
        return "app id has characters other than letters, digits, '-' and '_'"
    return None


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` is not a valid DNS label (RFC 1123 §2.1, as Kubernetes namespaces), or None."""
    if not namespace:
        return "namespace is empty"
    if len(namespace) > 63:
        return "namespace is longer than 63 characters"
    if not _DNS_LABEL.fullmatch(namespace):
        return (
            f"namespace {namespace!r} is not a DNS label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return None


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A workload SPIFFE ID ``spiffe://<trust_domain>/ns/<namespace>/<app_id>``.

    Build it with :meth:`for_workload`, which validates each part; ``str()`` gives the URI.
    """

    trust_domain: str
    namespace: str
    app_id: str

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, app_id: str) -> SpiffeId:
        """Validate the parts and build the ID; raises PermissionDenied naming every problem."""
        problems = [
            p
            for p in (
                trust_domain_problem(trust_domain),
                namespace_problem(namespace),
                app_id_problem(app_id),
            )
            if p
        ]
        if problems:
            raise PermissionDenied("; ".join(problems), reason="invalid_identity")
        sid = cls(trust_domain, namespace, app_id)
        if len(str(sid)) > MAX_SPIFFE_ID_LEN:
            raise PermissionDenied("SPIFFE ID is longer than 2048 bytes", reason="invalid_identity")
        return sid

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/<ns>/<id>``; raises ValueError when it is not of that shape."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"not a spiffe:// URI: {uri!r}")
        rest = uri[len(SCHEME) :]
        parts = rest.split("/")
        if len(parts) != 4 or parts[1] != "ns":
            raise ValueError(f"not of the form spiffe://<td>/ns/<namespace>/<id>: {uri!r}")
        try:
            return cls.for_workload(parts[0], parts[2], parts[3])
        except PermissionDenied as e:
            raise ValueError(str(e)) from None

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/{self.app_id}"
