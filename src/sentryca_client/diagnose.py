"""Why a call to the CA failed, told apart from what grpcio exposes: the status code and
``details()`` (gRPC core words each transport failure in a stable way: "Connection refused",
"errors resolving …", "CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed"), and,
when those are not conclusive (a deadline passed), one TCP connect to the address.

Only a status the CA itself sent is :attr:`Cause.ANSWERED`; every other cause means the request
never reached the CA's service.
"""

from __future__ import annotations

import enum
import re
import socket
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc is imported when used: ``sentryca-client`` quiets gRPC core's log first
    import grpc


class Cause(enum.Enum):
    """What went wrong, in the order a connection gets that far."""

    NAME_NOT_RESOLVED = "the server's host name does not resolve"
    REFUSED = "nothing listens at the address (connection refused)"
    NO_ROUTE = "no route to the address"
    TIMED_OUT = "no TCP connection to the address within the timeout"
    UNTRUSTED = "the server's TLS certificate does not verify against the trust anchors"
    WRONG_NAME = "the server's TLS certificate is not for the name used"
    HANDSHAKE = "the TLS handshake failed (not a TLS server, or it hung up)"
    NO_ANSWER = "connected, but no answer before the deadline"
    ANSWERED = "the CA answered with a status"
    OTHER = "the connection failed otherwise"


@dataclass(frozen=True)
class Diagnosis:
    """``cause``; ``code`` and ``details`` as grpcio gave them; ``reason``: the part of
    ``details`` (or of the probe's error) that names the cause, e.g. "Connection refused" or
    "unable to get local issuer certificate"; ``address``: the resolved address tried
    (``127.0.0.1:50001``, ``[::1]:50001``) when known."""

    cause: Cause
    code: grpc.StatusCode
    details: str
    reason: str
    address: str | None


# "… last error: UNKNOWN: ipv4:127.0.0.1:50001: Failed to connect to remote host: Connection refused"
_LAST_ERROR = re.compile(r"last error: [A-Z_]+: (?:ipv4|ipv6|unix):(?P<address>\S+?): (?P<reason>.*)$", re.S)
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: (?P<why>[^:]+)")
_SSL_REASON = re.compile(r"OPENSSL_internal:(?P<code>[A-Z_]+)")
_PATTERNS: tuple[tuple[Cause, re.Pattern[str]], ...] = (
    (Cause.UNTRUSTED, re.compile(r"CERTIFICATE_VERIFY_FAILED")),
    (Cause.WRONG_NAME, re.compile(r"Hostname Verification Check failed")),
    (Cause.NAME_NOT_RESOLVED, re.compile(r"errors resolving|DNS resolution failed")),
    (Cause.REFUSED, re.compile(r"Connection refused")),
    (Cause.NO_ROUTE, re.compile(r"No route to host|Network is unreachable|Host is unreachable")),
    (Cause.TIMED_OUT, re.compile(r"Connection timed out|Timeout occurred")),
    (Cause.HANDSHAKE, re.compile(r"[Hh]andshake|WRONG_VERSION_NUMBER")),
)
# words of gRPC core, never of the CA's own messages: the call did not reach the CA's service
_TRANSPORT = re.compile(
    r"^failed to connect to all addresses|^errors resolving|^DNS resolution failed|^Socket closed"
    r"|^Connection reset"
)


def diagnose(error: grpc.RpcError, server: str, probe_timeout: float = 2.0) -> Diagnosis:
    """The cause of ``error``, raised by a call to ``server`` (HOST:PORT, ``[v6]:PORT``).
    ``probe_timeout``: seconds for the one TCP connect made when a deadline passed. Never
    raises."""
    import grpc

    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    last = _LAST_ERROR.search(details)
    address = _unquote_address(last["address"]) if last else None
    reason = last["reason"].strip() if last else details
    if code == grpc.StatusCode.UNAVAILABLE and _TRANSPORT.search(details):
        for cause, pattern in _PATTERNS:
            if pattern.search(details):
                return Diagnosis(cause, code, details, _reason(cause, details, reason), address)
        return _probe(server, probe_timeout, code, details, Cause.OTHER)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
        # grpc says only that time ran out: a connect that hangs, or a server that never answers
        return _probe(server, probe_timeout, code, details, Cause.NO_ANSWER)
    return Diagnosis(Cause.ANSWERED, code, details, details, None)


def _reason(cause: Cause, details: str, reason: str) -> str:
    """The words of ``details`` that name ``cause``: OpenSSL's reason for a certificate that
    does not verify or a failed handshake, the resolver's last words for a name."""
    if cause is Cause.UNTRUSTED and (m := _VERIFY_FAILED.search(details)):
        return m["why"].strip()
    if cause is Cause.HANDSHAKE and (m := _SSL_REASON.search(details)):
        return m["code"]
    if cause is Cause.NAME_NOT_RESOLVED:
        return details.rsplit(": ", 1)[-1].rstrip("]").strip()
    return reason


def split_server(server: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or ``[v6]:PORT``; the host without brackets. Raises ValueError."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{server}: expected HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _unquote_address(address: str) -> str:
    return urllib.parse.unquote(address)  # gRPC writes an IPv6 address as %5B::1%5D:50001


def _probe(server: str, timeout: float, code: grpc.StatusCode, details: str, connected: Cause) -> Diagnosis:
    """One TCP connect to ``server``: the cause it shows, or ``connected`` when it connects."""
    try:
        host, port = split_server(server)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as e:
        return Diagnosis(Cause.NAME_NOT_RESOLVED, code, details, str(e), None)
    cause, reason, address = connected, details, None
    for family, kind, proto, _, sockaddr in infos:
        ip = str(sockaddr[0])
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                s.connect(sockaddr)
        except TimeoutError:
            cause, reason = Cause.TIMED_OUT, f"no TCP connection within {timeout:g} s"
        except ConnectionRefusedError:
            cause, reason = Cause.REFUSED, "Connection refused"
        except OSError as e:
            cause, reason = Cause.NO_ROUTE, e.strerror or str(e)
        else:
            return Diagnosis(connected, code, details, details, address)
    return Diagnosis(cause, code, details, reason, address)
