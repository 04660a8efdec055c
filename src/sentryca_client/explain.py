"""What a failed call to the CA means, in one sentence that names the flag to change: the
message both command lines (``sentryca request``/``sign`` and ``sentryca-client request``) print
for a :class:`~sentryca_client.diagnose.Diagnosis`."""

from __future__ import annotations

from .diagnose import Cause, Diagnosis, split_server

ANCHORS_HINT = (
    "--trust-anchors must be the CA's ca.crt: the one in its --issuer-credentials directory, or "
    "from `sentryca bundle show --out DIR`"
)
# OpenSSL's reasons when the server's chain leads to none of the trust anchors
_NOT_CHAINED = ("unable to get local issuer certificate", "self signed certificate in certificate chain")


def explain(d: Diagnosis, server: str, trust_anchors: str, timeout: float, server_name: str | None) -> str:
    """The message for a failed call to ``server`` (``--server`` HOST:PORT) whose cause is ``d``;
    ``trust_anchors``, ``timeout`` (seconds) and ``server_name``: the flags the call used. A
    status the CA itself sent reads "the CA refused the request: CODE: details"."""
    server_arg, server = server, f"--server {server}"
    tried = f"{d.address}: " if d.address and d.address != server_arg else ""
    at = f" ({d.address})" if tried else ""
    anchors = f"--trust-anchors {trust_anchors}"
    if d.cause is Cause.NAME_NOT_RESOLVED:
        host = split_server(server_arg)[0]
        message = f"{server}: the host name {host} does not resolve ({d.reason}); check --server"
    elif d.cause is Cause.REFUSED:
        message = (
            f"nothing is listening at {server} ({tried}connection refused): is the CA running, and is "
            "this its gRPC port (`sentryca serve` prints it)?"
        )
    elif d.cause is Cause.NO_ROUTE:
        message = f"cannot reach {server} ({tried}{d.reason}): check --server and the network"
    elif d.cause is Cause.TIMED_OUT:
        message = (
            f"no connection to {server}{at} within --timeout {timeout:g} s: a wrong address, "
            "or a firewall dropping the packets"
        )
    elif d.cause is Cause.UNTRUSTED:
        why = (
            f"does not chain to {anchors} ({d.reason})"
            if d.reason in _NOT_CHAINED
            else f"does not verify against {anchors} ({d.reason})"
        )
        message = f"TLS handshake with {server} failed: the CA's certificate {why}. {ANCHORS_HINT}"
    elif d.cause is Cause.WRONG_NAME:
        name = server_name or split_server(server_arg)[0]
        given = "--server-name" if server_name else "--server"
        message = (
            f"TLS handshake with {server} failed: the CA's certificate has no SAN for {name!r} (the "
            f"name {given} gives). Use --server-name with a name it holds (localhost, 127.0.0.1, ::1, "
            "its listen address and its --server-names)"
        )
    elif d.cause is Cause.HANDSHAKE:
        message = (
            f"TLS handshake with {server}{at} failed ({d.reason}): is --server the CA's gRPC port "
            "(not its /healthz or /metrics port)?"
        )
    elif d.cause is Cause.NO_ANSWER:
        message = (
            f"{server}{at} accepted the connection but did not answer within {timeout:g} s: is it "
            "the CA's gRPC port? (a busy CA: raise --timeout)"
        )
    elif d.cause is Cause.ANSWERED:
        message = f"the CA refused the request: {d.code.name}: {d.details}"
    else:
        message = f"the call to {server} failed: {d.code.name}: {d.details}"
    return message
