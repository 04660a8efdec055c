"""The Kubernetes side of the tests, on the loopback fake API server (support/kube_api_server.py):
a running server with its kubeconfig (the kube_api fixture), and a cluster with pods, Dapr
Configurations and service account tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from support.kube_api_server import KubeApiServer, TokenReviews

KUBE_NAMESPACE = "sentryca-test"


@dataclass
class KubeApi:
    """A running fake API server and a kubeconfig file pointing at it."""

    server: Any
    kubeconfig: str


class Cluster:
    """The fake API server with helpers to add pods, Configurations and service account tokens."""

    def __init__(self, server: KubeApiServer) -> None:
        self.server = server
        self.reviews = TokenReviews(server)

    def pod(self, ns: str, name: str, sa: str = "default", **annotations: str) -> None:
        self.server.put(
            "v1",
            "pods",
            ns,
            {
                "metadata": {"name": name, "annotations": annotations},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app:1"}]},
            },
        )

    def configuration(self, ns: str, name: str, trust_domain: str | None) -> None:
        spec = {"accessControl": {"trustDomain": trust_domain}} if trust_domain is not None else {}
        self.server.put("dapr.io/v1alpha1", "configurations", ns, {"metadata": {"name": name}, "spec": spec})

    def token(self, ns: str, sa: str, pod: str | None) -> str:
        """A service account token (its signature is the API server's business: the TokenReview
        vouches for it) bound to ``pod``, registered with the TokenReview endpoint."""
        claims = {"iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:{ns}:{sa}"}
        if pod is not None:
            claims["kubernetes.io"] = {"namespace": ns, "pod": {"name": pod, "uid": "u"}}
        token = jwt.encode(claims | {"jti": secrets.token_hex(8)}, secrets.token_bytes(32), algorithm="HS256")
        self.reviews.tokens[token] = f"system:serviceaccount:{ns}:{sa}"
        return token
