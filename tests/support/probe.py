"""Asking a running CertificateAuthority from outside, as an operator's tools and a client do:
its /healthz, one metric, one signing round trip."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import sentryca_client as client

from .pki import make_csr


def healthz(ca: Any, timeout: float = 5) -> tuple[int, dict]:
    """(HTTP status, JSON body) of /healthz of ``ca`` (anything with a ``healthz_port``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ca.healthz_port}/healthz", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metric(ca: Any, name: str) -> float:
    """The value of an unlabelled metric on the CA's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{ca.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def signs(ca: Any, anchors: bytes) -> bool:
    """Whether a client gets a verified SVID for spiffe://…/ns/prod/orders from the CA."""
    with client.channel(f"localhost:{ca.grpc_port}", anchors) as chan:
        response = client.sign(chan, make_csr(), "orders", "prod")
    return client.verify_response(response, anchors).spiffe_id.endswith("/orders")
