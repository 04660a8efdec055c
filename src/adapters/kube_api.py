"""The Kubernetes API: the official ``kubernetes`` client, built once for every Kubernetes adapter
(the KUBERNETES validator's calls here, the Kubernetes Secret store in ``stores``), and
:class:`KubernetesApi`, the validator's port (design §6).

``kubernetes`` is imported lazily, here and in the store only. Every transport or API failure
becomes Unavailable, except 404 (the object does not exist: an identity failure). Tokens are
never logged, nor any API body that echoes one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ca_core.errors import ConfigError, Unavailable
from ca_core.validators.kubernetes import Pod, TokenReviewResult

log = logging.getLogger(__name__)

CONFIGURATION_GROUP, CONFIGURATION_VERSION, CONFIGURATION_PLURAL = "dapr.io", "v1alpha1", "configurations"
DEFAULT_REQUEST_TIMEOUT = 5.0  # seconds, per API call (a request makes at most three)
PROBE_INTERVAL = 2.0  # seconds between readiness probes while not yet ready


def api_client(kubeconfig: str | None) -> Any:
    """A ``kubernetes.client.ApiClient`` from ``kubeconfig`` (a file) or, when None, the
    in-cluster service account. The client does no retries of its own (callers bound each call
    with a timeout and decide what to retry). Raises ConfigError when neither configuration can
    be loaded. Nothing is contacted yet."""
    import yaml
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError) as e:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster configuration"
        hint = "" if kubeconfig else " (outside a cluster, give --kubeconfig)"
        raise ConfigError(f"cannot load {where}: {e}{hint}") from None
    configuration.retries = False  # one attempt per call: the timeout is the bound
    return client.ApiClient(configuration)


class KubernetesApi:
    """The calls the KUBERNETES validator makes (``ca_core.validators.kubernetes.KubernetesApiPort``),
    over the official ``kubernetes`` client.

    api_client: a ``kubernetes.client.ApiClient``; request_timeout: seconds per call; clock:
    monotonic seconds (spaces the readiness probes). Every method raises Unavailable when the API
    cannot be used (unreachable, timeout, any status but 404); the readers return None for 404.
    """

    def __init__(
        self,
        api_client: Any,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._client = api_client
        self._auth = client.AuthenticationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._version = client.VersionApi(api_client)
        self.request_timeout = request_timeout
        self._clock = clock
        self._answered = False  # the API has answered a call (readiness)
        self._probe_lock = threading.Lock()
        self._last_probe: float | None = None
        self._last_problem = "the Kubernetes API has not been contacted yet"

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> KubernetesApi:
        """Client from ``kubeconfig`` (a file) or the in-cluster service account
        (:func:`api_client`). Raises ConfigError when neither can be loaded. Nothing is
        contacted yet."""
        return cls(api_client(kubeconfig), request_timeout, clock=clock)

    def close(self) -> None:
        self._client.close()

    def _mark_answered(self) -> None:
        if not self._answered:
            log.info("Kubernetes API reachable: the KUBERNETES validator is ready")
        self._answered = True

    def _call(self, what: str, fn: Callable[[], Any], *, not_found_ok: bool) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            result = fn()
        except ApiException as e:
            # str(e) holds the response body, which for a TokenReview echoes the token: never log it.
            if e.status == 404 and not_found_ok:
                self._mark_answered()
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
        self._mark_answered()
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

    def get_pod(self, namespace: str, name: str) -> Pod | None:
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

    def get_configuration(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """GET dapr.io/v1alpha1 configurations/<name> in ``namespace``; None when it does not exist."""
        doc: Mapping[str, Any] | None = self._call(
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
        return doc

    def probe(self) -> str | None:
        """None once the API has answered any call; otherwise the last problem, after a GET
        /version (timeout: the request timeout, at most 2 s) when none was made in the last
        PROBE_INTERVAL seconds. Never raises."""
        if self._answered:
            return None
        with self._probe_lock:
            now = self._clock()
            if not self._answered and (self._last_probe is None or now - self._last_probe >= PROBE_INTERVAL):
                self._last_probe = now
                timeout = min(self.request_timeout, 2.0)
                try:
                    self._call(
                        "version probe",
                        lambda: self._version.get_code(_request_timeout=(timeout, timeout)),
                        not_found_ok=False,
                    )
                except Unavailable as e:
                    self._last_problem = str(e)
        return None if self._answered else self._last_problem
