"""The Kubernetes cluster domain, derived as Dapr's Sentry derives it (design §3.4): the canonical
name of the API server's Service ``kubernetes.default.svc`` (``kubernetes.default.svc.cluster.local``
in a cluster whose domain is ``cluster.local``) without that prefix.

The lookup is the system resolver's (``getaddrinfo`` with ``AI_CANONNAME``: ``/etc/hosts``, then DNS
with the pod's search domains), run on a daemon thread and waited for at most ``timeout`` seconds,
so a resolver that hangs delays a start or restart by that bound and nothing else. The caller
(``handlers.composition.derive_cluster_domain``) logs a failure and falls back; signing never waits
for a lookup.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

API_SERVICE = "kubernetes.default.svc"
DEFAULT_TIMEOUT = 2.0  # seconds, as Dapr's Sentry bounds its lookup


class ClusterDomainUnknown(Exception):
    """The lookup gave no cluster domain; the message says why (for the log line)."""


def canonical_name(host: str) -> str:
    """The canonical name the system resolver gives ``host`` (``getaddrinfo`` with
    ``AI_CANONNAME``; the first result's). Raises OSError (``socket.gaierror``) when it does not
    resolve."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME)
    return infos[0][3] if infos else ""


def domain_from_canonical_name(name: str) -> str:
    """``kubernetes.default.svc.<domain>[.]`` → ``<domain>`` (lower case). Raises
    ClusterDomainUnknown when ``name`` is not under ``kubernetes.default.svc.`` (a resolver without
    the cluster's search domains answers with the name itself)."""
    text = name.strip().rstrip(".").lower()
    prefix = API_SERVICE + "."
    domain = text[len(prefix) :] if text.startswith(prefix) else ""
    if not domain or any(not label for label in domain.split(".")):
        raise ClusterDomainUnknown(
            f"the canonical name of {API_SERVICE} is {name!r}, not {API_SERVICE}.<cluster domain>"
        )
    return domain


def lookup_cluster_domain(
    resolve: Callable[[str], str] = canonical_name, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """The cluster domain from ``resolve(API_SERVICE)`` (the canonical name), waited for at most
    ``timeout`` seconds. Raises ClusterDomainUnknown naming the cause: the name did not resolve,
    the lookup took longer than ``timeout`` (its thread is left to finish on its own), or the
    canonical name has no domain (:func:`domain_from_canonical_name`)."""
    outcome: list[str | BaseException] = []

    def run() -> None:
        try:
            outcome.append(resolve(API_SERVICE))
        except Exception as e:  # noqa: BLE001 - reported to the caller below
            outcome.append(e)

    worker = threading.Thread(target=run, name="cluster-domain-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise ClusterDomainUnknown(f"looking up {API_SERVICE} took longer than {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise ClusterDomainUnknown(f"{API_SERVICE} does not resolve: {result}")
    return domain_from_canonical_name(result)
