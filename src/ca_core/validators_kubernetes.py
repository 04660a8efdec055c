"""KUBERNETES validator (SPEC §6): a TokenReview proves the service account, the token's pod
(read from the API) proves the app id, the pod's Configuration gives the trust domain.

The rules are pure functions (:func:`expected_id`, :func:`pod_name_claim`, :func:`parse_username`);
:class:`KubernetesApi` is the adapter over the official ``kubernetes`` client (imported lazily)
and maps every transport or API failure to Unavailable, except 404 (the object does not exist,
an identity failure). Tokens are never logged, nor any API body that echoes one.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PermissionDenied, Unavailable
from .spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .validators import Identity, SignRequest, TokenValidatorKind, check_common

log = logging.getLogger(__name__)

LEGACY_AUDIENCE = "dapr.io/sentry"  # what Dapr sidecars before 1.13 ask for
ANNOTATION_APP_ID = "dapr.io/app-id"
ANNOTATION_CONTROL_PLANE = "dapr.io/control-plane"
ANNOTATION_CONFIG = "dapr.io/config"
CONTROL_PLANE_SERVICES = frozenset({"operator", "placement", "injector", "sentry", "scheduler"})
CONFIGURATION_GROUP, CONFIGURATION_VERSION, CONFIGURATION_PLURAL = "dapr.io", "v1alpha1", "configurations"
DEFAULT_REQUEST_TIMEOUT = 5.0  # seconds, per API call (a request makes at most three)
PROBE_INTERVAL = 2.0  # seconds between readiness probes while not yet ready


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
    """The app id ``pod`` may obtain and whether it is a control-plane service (SPEC §6).

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


# --- the API adapter --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenReviewResult:
    authenticated: bool
    username: str
    error: str


class KubernetesApi:
    """The calls the validator makes, over the official ``kubernetes`` client.

    api_client: a ``kubernetes.client.ApiClient``; request_timeout: seconds per call.
    Every method raises Unavailable when the API cannot be used (unreachable, timeout, any
    status but 404); the readers return None for 404. ``on_success`` is called after every
    answered call (readiness).
    """

    def __init__(self, api_client: Any, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        from kubernetes import client

        self._client = api_client
        self._auth = client.AuthenticationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._version = client.VersionApi(api_client)
        self.request_timeout = request_timeout
        self.on_success: Callable[[], None] = lambda: None

    @classmethod
    def connect(
        cls, kubeconfig: str | None, request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> KubernetesApi:
        """Client from ``kubeconfig`` (a file) or the in-cluster service account
        (:func:`kube_client.api_client`). Raises ConfigError when neither can be loaded. Nothing
        is contacted yet."""
        from adapters.kube_client import api_client  # moves with KubernetesApi to adapters

        return cls(api_client(kubeconfig), request_timeout)

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Callable[[], Any], *, not_found_ok: bool) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            result = fn()
        except ApiException as e:
            # str(e) holds the response body, which for a TokenReview echoes the token: never log it.
            if e.status == 404 and not_found_ok:
                self.on_success()
                return None
            raise Unavailable(
                f"Kubernetes API answered {e.status} {e.reason or ''} to {what}".rstrip(),
                reason="kubernetes_unavailable",
            ) from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise Unavailable(
                f"Kubernetes API unreachable for {what}: {type(e).__name__}",
                reason="kubernetes_unavailable",
            ) from None
        self.on_success()
        return result

    def _timeout(self) -> tuple[float, float]:
        return (self.request_timeout, self.request_timeout)

    def token_review(self, token: str, audiences: tuple[str, ...]) -> TokenReviewResult:
        """POST authentication.k8s.io/v1 TokenReview with ``audiences``."""
        from kubernetes import client

        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=list(audiences)))
        review = self._call(
            "TokenReview create",
            lambda: self._auth.create_token_review(body, _request_timeout=self._timeout()),
            not_found_ok=False,
        )
        status = review.status
        if status is None:
            return TokenReviewResult(False, "", "")
        username = status.user.username if status.user is not None else ""
        return TokenReviewResult(bool(status.authenticated), username or "", status.error or "")

    def read_pod(self, namespace: str, name: str) -> Pod | None:
        """GET v1 pods/<name> in ``namespace``; None when it does not exist."""
        pod = self._call(
            f"pod {namespace}/{name} get",
            lambda: self._core.read_namespaced_pod(name, namespace, _request_timeout=self._timeout()),
            not_found_ok=True,
        )
        if pod is None:
            return None
        meta, spec = pod.metadata, pod.spec
        return Pod(
            name=meta.name or name,
            namespace=meta.namespace or namespace,
            service_account=(spec.service_account_name or "") if spec is not None else "",
            annotations=dict(meta.annotations or {}),
        )

    def read_configuration(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """GET dapr.io/v1alpha1 configurations/<name> in ``namespace``; None when it does not exist."""
        return self._call(
            f"Configuration {namespace}/{name} get",
            lambda: self._custom.get_namespaced_custom_object(
                CONFIGURATION_GROUP,
                CONFIGURATION_VERSION,
                namespace,
                CONFIGURATION_PLURAL,
                name,
                _request_timeout=self._timeout(),
            ),
            not_found_ok=True,
        )

    def probe(self, timeout: float) -> None:
        """GET /version: proves the API answers. Raises Unavailable."""
        self._call(
            "version probe",
            lambda: self._version.get_code(_request_timeout=(timeout, timeout)),
            not_found_ok=False,
        )


def configuration_trust_domain(doc: Mapping[str, Any]) -> str:
    """``spec.accessControl.trustDomain`` of a Configuration, or ``public`` when empty or absent."""
    spec = doc.get("spec") if isinstance(doc, Mapping) else None
    access = spec.get("accessControl") if isinstance(spec, Mapping) else None
    td = access.get("trustDomain") if isinstance(access, Mapping) else None
    return td if isinstance(td, str) and td else DEFAULT_TRUST_DOMAIN


# --- the validator ----------------------------------------------------------------------------


class KubernetesValidator:
    """KUBERNETES (SPEC §6). ``api``: a KubernetesApi; ``ca_identity``: the CA's SPIFFE ID (its
    trust domain is the control-plane trust domain, its namespace the control-plane namespace);
    ``audiences``: TokenReview audiences (default :func:`default_audiences`).

    validate() raises PermissionDenied (with a ``reason`` naming the failed check) or
    Unavailable (API unusable). The request's trust_domain is ignored: it comes from the pod.
    """

    kind = TokenValidatorKind.KUBERNETES

    def __init__(
        self,
        api: KubernetesApi,
        ca_identity: SpiffeId,
        audiences: tuple[str, ...] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._ca_identity = ca_identity
        self.audiences = tuple(audiences) if audiences else default_audiences(ca_identity)
        self._clock = clock
        self._ready = False
        self._probe_lock = threading.Lock()
        self._last_probe: float | None = None
        self._last_problem = "the Kubernetes API has not been contacted yet"
        api.on_success = self._mark_ready

    def _mark_ready(self) -> None:
        if not self._ready:
            log.info("Kubernetes API reachable: the KUBERNETES validator is ready")
        self._ready = True

    def ready(self) -> tuple[bool, str]:
        """(ready, detail): ready once the API has answered any call. While not ready, probes
        ``/version`` at most every PROBE_INTERVAL seconds."""
        if self._ready:
            return True, "Kubernetes API reachable"
        with self._probe_lock:
            now = self._clock()
            if not self._ready and (self._last_probe is None or now - self._last_probe >= PROBE_INTERVAL):
                self._last_probe = now
                try:
                    self._api.probe(min(self._api.request_timeout, 2.0))
                except Unavailable as e:
                    self._last_problem = str(e)
        return (True, "Kubernetes API reachable") if self._ready else (False, self._last_problem)

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
        pod = self._api.read_pod(sa_namespace, pod_name)
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
        doc = self._api.read_configuration(pod.namespace, name)
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
