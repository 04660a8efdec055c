"""The parsers of the option table's text values (design §7.1): each takes the flag's text and
returns the typed value, or raises ValueError with a message the loader prefixes with the source
(``--port: ...``, ``SENTRY_PORT: ...``)."""

from __future__ import annotations

import ipaddress
import re

from ..jwt_svid import JwtAlgorithm
from ..keys import KeyAlgorithm
from .model import BOOTSTRAP_POLICIES, MAX_WORKERS, MODES


def parse_bool(text: str) -> bool:
    v = str(text).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_kms_ref(text: str) -> str:
    v = str(text).strip()
    if not v.startswith("kms://") or len(v) == len("kms://") or any(c.isspace() for c in v):
        raise ValueError(f"not a KMS key reference: {text!r} (use kms://<key id, key ARN or alias>)")
    return v


def parse_integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def parse_port(text: str) -> int:
    n = parse_integer(text)
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} is out of range 0-65535")
    return n


def parse_workers(text: str) -> int:
    n = parse_integer(text)
    if not 0 <= n <= MAX_WORKERS:
        raise ValueError(f"{n} must be between 0 (one per CPU) and {MAX_WORKERS}")
    return n


def parse_positive_int(text: str) -> int:
    n = parse_integer(text)
    if n < 1:
        raise ValueError(f"{n} must be at least 1")
    return n


def parse_non_negative_int(text: str) -> int:
    n = parse_integer(text)
    if n < 0:
        raise ValueError(f"{n} must be 0 or more")
    return n


def parse_rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v < float("inf"):
        raise ValueError(f"{text!r} must be a number of requests per second, 0 or more (0: no limit)")
    return v


def parse_mode(text: str) -> str:
    v = text.strip().lower()
    if v not in MODES:
        raise ValueError(f"unknown mode {text!r}; use one of {', '.join(MODES)}")
    return v


def parse_bootstrap_policy(text: str) -> str:
    v = text.strip().lower()
    if v not in BOOTSTRAP_POLICIES:
        raise ValueError(f"unknown bootstrap policy {text!r}; use one of {', '.join(BOOTSTRAP_POLICIES)}")
    return v


def parse_algorithm(text: str) -> KeyAlgorithm:
    return KeyAlgorithm.parse(text)


def parse_upstream(text: str) -> str:
    from ..upstream import parse_upstream  # here: the functions import the options cold

    parse_upstream(text)  # the ARN's shape; ValueError names the expected one
    return text.strip()


def parse_jwt_algorithm(text: str) -> JwtAlgorithm:
    return JwtAlgorithm.parse(text)


def parse_audiences(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    if not items:
        raise ValueError("--token-audience needs at least one audience (comma-separated)")
    return items


_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def parse_server_names(text: str) -> tuple[str, ...]:
    """Comma-separated DNS names and IP addresses (RFC 1123 names, lowercase; IPv4/IPv6)."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    for name in names:
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            if not _DNS_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is neither a DNS name nor an IP address") from None
    return names


def parse_cluster_domain(text: str) -> str:
    """A DNS name (RFC 1123, lowercase), a trailing dot dropped: ``cluster.local``."""
    name = text.strip().lower().removesuffix(".")
    if not _DNS_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a DNS name (e.g. cluster.local)")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    raise ValueError(f"{text!r} is an IP address, not a DNS name (e.g. cluster.local)")


def parse_hosts(text: str) -> tuple[str, ...]:
    """Comma-separated host names, optionally with a port, or ``*`` (Dapr's string list)."""
    hosts = tuple(h.strip().lower() for h in text.split(",") if h.strip())
    for host in hosts:
        if host != "*" and not _HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name, host:port or *")
    return hosts


_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)(:[0-9]{1,5})?")


def parse_log_level(text: str) -> str:
    v = text.strip().lower()
    if v not in ("debug", "info", "warn", "warning", "error", "fatal"):
        raise ValueError(f"unknown log level {text!r}; use debug, info, warn, error or fatal")
    return {"warn": "warning", "fatal": "critical"}.get(v, v)
