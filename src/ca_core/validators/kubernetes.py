"""KUBERNETES validator (design §6): a TokenReview proves the service account, the token's pod
(read from the API) proves the app id, the pod's Configuration gives the trust domain.

Rules only: :func:`parse_username`, :func:`pod_name_claim`, :func:`expected_id`,
:func:`configuration_trust_domain` and :class:`KubernetesValidator`, which asks the API through
:class:`KubernetesApiPort` (``adapters.kube_api`` implements it over the official client). Tokens
are never logged, nor any API body that echoes one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import PermissionDenied
from ..spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .base import Identity, SignRequest, TokenValidatorKind, check_common

LEGACY_AUDIENCE = "dapr.io/sentry"  # what Dapr sidecars before 1.13 ask for
ANNOTATION_APP_ID = "dapr.io/app-id"
ANNOTATION_CONTROL_PLANE = "dapr.io/control-plane"
ANNOTATION_CONFIG = "dapr.io/config"
CONTROL_PLANE_SERVICES = frozenset({"operator", "placement", "injector", "sentry", "scheduler"})


def default_audiences(ca_identity: SpiffeId) -> tuple[str, ...]:
    """Sentry's TokenReview audiences: ``dapr.io/sentry`` and the CA's SPIFFE ID."""
    return (LEGACY_AUDIENCE, str(ca_identity))


# --- pure rules -------------------------------------------------------------------------------


def parse_username(username: str) -> tuple[str, str]:
    """``system:serviceaccount:<ns>:<sa>`` → (ns, sa); raises PermissionDenied otherwise."""
    parts = username.split(":")
    if len(parts) != 4 or parts[0] != "system" or parts[1] != "serviceaccount" or not all(parts[2:]):
        raise PermissionDenied(
            f"the token's user {username[:100]!r} is not a service account "
            "(expected system:serviceaccount:<namespace>:<name>)",
            reason="token_not_service_account",
        )
    return parts[2], parts[3]


def pod_name_claim(token: str) -> str:
    """The claim ``kubernetes.io`` → ``pod`` → ``name`` of a JWT, read without verifying the
    signature (the TokenReview did that). Raises PermissionDenied when absent or unreadable."""
    missing = PermissionDenied(
        "the token has no kubernetes.io/pod/name claim (a bound service account token is required)",
        reason="pod_claim_missing",
    )
    parts = token.split(".")
    if len(parts) != 3:
        raise missing
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
        name = claims["kubernetes.io"]["pod"]["name"]
    except (ValueError, KeyError, TypeError, RecursionError):  # deeply nested JSON: RecursionError
        raise missing from None
    if not isinstance(name, str) or not name:
        raise missing
    return name


@dataclass(frozen=True)
class Pod:
    """What the validator needs of a pod."""

    name: str
    namespace: str
    service_account: str
    annotations: Mapping[str, str] = field(default_factory=dict)


def expected_id(pod: Pod, ca_namespace: str) -> tuple[str, bool]:
    """The app id ``pod`` may obtain and whether it is a control-plane service (design §6).

    Control plane: annotation ``dapr.io/control-plane`` ∈ CONTROL_PLANE_SERVICES, only in the
    CA's namespace, never with ``dapr.io/app-id`` → ``dapr-<name>``. Otherwise the
    ``dapr.io/app-id`` annotation, else the pod name. Raises PermissionDenied for a misuse.
    """
    annotations = pod.annotations
    if ANNOTATION_CONTROL_PLANE in annotations:
        service = annotations[ANNOTATION_CONTROL_PLANE]
        if pod.namespace != ca_namespace:
            raise PermissionDenied(
                f"pod {pod.name!r} claims to be control-plane service {service!r} in namespace "
                f"{pod.namespace!r}; control-plane services run only in {ca_namespace!r}",
                reason="control_plane_namespace",
            )
        if service not in CONTROL_PLANE_SERVICES:
            raise PermissionDenied(
                f"pod {pod.name!r}: unknown control-plane service {service[:64]!r} "
                f"(known: {', '.join(sorted(CONTROL_PLANE_SERVICES))})",
                reason="control_plane_unknown",
            )
        if ANNOTATION_APP_ID in annotations:
            raise PermissionDenied(
                f"control-plane pod {pod.name!r} must not have the {ANNOTATION_APP_ID} annotation",
                reason="control_plane_app_id",
            )
        return f"dapr-{service}", True
    return annotations.get(ANNOTATION_APP_ID) or pod.name, False


@dataclass(frozen=True)
class TokenReviewResult:
    """The status of a TokenReview: authenticated, the user's name, the API's error text."""

    authenticated: bool
    username: str
    error: str


def configuration_trust_domain(doc: Mapping[str, Any]) -> str:
    """``spec.accessControl.trustDomain`` of a Configuration, or ``public`` when empty or absent."""
    spec = doc.get("spec") if isinstance(doc, Mapping) else None
    access = spec.get("accessControl") if isinstance(spec, Mapping) else None
    td = access.get("trustDomain") if isinstance(access, Mapping) else None
    return td if isinstance(td, str) and td else DEFAULT_TRUST_DOMAIN


# --- the port -------------------------------------------------------------------------------


class KubernetesApiPort(Protocol):
    """The Kubernetes API calls the validator makes. Every call raises Unavailable when the API
    cannot be used (unreachable, timeout, any status but 404); the readers return None for an
    object that does not exist (404)."""

    def token_review(self, token: str, audiences: tuple[str, ...]) -> TokenReviewResult:
        """Create an authentication.k8s.io/v1 TokenReview of ``token`` for ``audiences``."""
        ...

    def get_pod(self, namespace: str, name: str) -> Pod | None:
        """The pod ``namespace/name``, or None."""
        ...

    def get_configuration(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The dapr.io/v1alpha1 Configuration ``namespace/name`` as a document, or None."""
        ...

    def probe(self) -> str | None:
        """None once the API has answered any call; otherwise why not, after trying it (an
        implementation may limit how often). Never raises."""
        ...


# --- the validator ----------------------------------------------------------------------------


class KubernetesValidator:
    """KUBERNETES (design §6). ``api``: the Kubernetes API port; ``ca_identity``: the CA's SPIFFE
    ID (its trust domain is the control-plane trust domain, its namespace the control-plane
    namespace); ``audiences``: TokenReview audiences (default :func:`default_audiences`).

    validate() raises PermissionDenied (with a ``reason`` naming the failed check) or
    Unavailable (API unusable). The request's trust_domain is ignored: it comes from the pod.
    """

    kind = TokenValidatorKind.KUBERNETES

    def __init__(
        self, api: KubernetesApiPort, ca_identity: SpiffeId, audiences: tuple[str, ...] | None = None
    ) -> None:
        self._api = api
        self._ca_identity = ca_identity
        self.audiences = tuple(audiences) if audiences else default_audiences(ca_identity)

    def ready(self) -> tuple[bool, str]:
        """(ready, detail): ready once the API has answered any call (the port probes it while
        not)."""
        problem = self._api.probe()
        return (True, "Kubernetes API reachable") if problem is None else (False, problem)

    def validate(self, request: SignRequest) -> Identity:
        check_common(request)
        if not request.token:
            raise PermissionDenied(
                "the request has no token (a service account token is required)", reason="token_missing"
            )
        review = self._api.token_review(request.token, self.audiences)
        if review.error:
            raise PermissionDenied(
                f"TokenReview refused the token: {review.error[:200]}", reason="token_review_error"
            )
        if not review.authenticated:
            raise PermissionDenied(
                "TokenReview did not authenticate the token (wrong audience, expired or revoked)",
                reason="token_not_authenticated",
            )
        sa_namespace, sa_name = parse_username(review.username)
        pod_name = pod_name_claim(request.token)
        if sa_namespace != request.namespace:
            raise PermissionDenied(
                f"namespace mismatch: expected {sa_namespace!r} (the token's service account), "
                f"received {request.namespace!r}",
                reason="namespace_mismatch",
            )
        pod = self._api.get_pod(sa_namespace, pod_name)
        if pod is None:
            raise PermissionDenied(
                f"the token's pod {sa_namespace}/{pod_name} does not exist", reason="pod_not_found"
            )
        if pod.service_account != sa_name:
            raise PermissionDenied(
                f"service account mismatch: pod {sa_namespace}/{pod_name} runs as "
                f"{pod.service_account!r}, the token is for {sa_name!r}",
                reason="service_account_mismatch",
            )
        app_id, control_plane = expected_id(pod, self._ca_identity.namespace)
        if app_id != request.app_id:
            raise PermissionDenied(
                f"app id mismatch: expected {app_id!r}, received {request.app_id!r}", reason="app_id_mismatch"
            )
        trust_domain = self._ca_identity.trust_domain if control_plane else self._trust_domain(pod)
        return Identity(SpiffeId(trust_domain, request.namespace, request.app_id))

    def _trust_domain(self, pod: Pod) -> str:
        if ANNOTATION_CONFIG not in pod.annotations:
            return DEFAULT_TRUST_DOMAIN
        name = pod.annotations[ANNOTATION_CONFIG]
        if not name:
            raise PermissionDenied(
                f"pod {pod.namespace}/{pod.name} has an empty {ANNOTATION_CONFIG} annotation",
                reason="config_annotation_empty",
            )
        doc = self._api.get_configuration(pod.namespace, name)
        if doc is None:
            raise PermissionDenied(
                f"Configuration {pod.namespace}/{name} (annotation {ANNOTATION_CONFIG} of pod "
                f"{pod.name}) does not exist",
                reason="config_not_found",
            )
        trust_domain = configuration_trust_domain(doc)
        if problem := trust_domain_problem(trust_domain):
            raise PermissionDenied(
                f"Configuration {pod.namespace}/{name}: spec.accessControl.trustDomain: {problem}",
                reason="config_trust_domain_invalid",
            )
        return trust_domain
