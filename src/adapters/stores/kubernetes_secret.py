"""The Kubernetes Secret store (``kubernetes://NAMESPACE/SECRET``), Dapr's own layout.

The Secret (type Opaque) is the source of truth. Its keys are the item names of
``--issuer-ca-filename``, ``--issuer-certificate-filename`` and ``--issuer-key-filename``
(``ca.crt``, ``issuer.crt``, ``issuer.key`` by default, as Dapr's Sentry and Helm chart write
them), plus ``root.key`` when the CA made the root and ``rotation.json`` once rotation keeps
state, and Dapr's JWT items ``jwt.key`` and ``jwks.json`` (the ConfigMap carries ``jwks.json``,
as Dapr's Sentry distributes it). Other keys in the Secret are kept on every write. A Secret
that exists without any bundle key (Dapr's Helm chart creates ``dapr-trust-bundle`` empty) is an
empty store.

Writes are conditional. Create: POST; 409 AlreadyExists means the Secret exists: if it holds
no bundle key it is filled with a PUT carrying the resourceVersion just read (409 Conflict:
another replica filled it first), otherwise another replica won. Replace: PUT with
``metadata.resourceVersion`` = the expected version; 409 Conflict means someone else won.
Version token: the Secret's resourceVersion.

The public part (anchors and issuer chain, no key) is a ConfigMap with the Secret's name,
readable by anyone allowed to read ConfigMaps: key ``<--issuer-ca-filename>`` (``ca.crt``, what
Dapr's sidecars and injector read) and ``<--issuer-certificate-filename>`` (``issuer.crt``, so
the expiry check and ``sentryca inspect`` need no Secret access), and the annotation
``sentryca/bundle-version`` (the Secret's resourceVersion it mirrors). It is written after the
Secret, and repaired from the Secret by ``publish_public`` when it differs or is missing, never
the other way. ``load`` never writes: the CA publishes only a bundle it accepted (a bundle that
parses may still be refused for trust continuity, design §5), so a refused bundle is never
distributed and a refused start writes nothing. Every ConfigMap write first
re-reads the Secret and is skipped when its resourceVersion is no longer the one mirrored, so an
older bundle is never mirrored over a newer one. Other keys of the ConfigMap are kept.

Both objects also carry the annotation ``sentryca/bundle-anchors`` (``sha256:<hex>`` of the
``ca.crt`` item written, so it can be matched against a backup with ``sha256sum``), set on every
write and kept when the bundle keys are removed: with the ConfigMap's ``sentryca/bundle-version``
it is the evidence ``held_before`` reports for a Secret deleted or emptied (the ConfigMap survives
the Secret's deletion; a ConfigMap still holding ``ca.crt``, as Dapr's Sentry writes it, counts
too: workloads may hold those anchors).

Errors: unreachable API, timeouts, 429 and 5xx → Unavailable ``store_unreachable`` (retried at
start); 401/403 → ``store_denied`` naming the RBAC the CA needs; other API refusals (e.g. 404
on create: no such namespace) → ``store_misconfigured``; 404 on the Secret → empty store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ca_core.bundle import ANCHORS, ISSUER_CHAIN, JWKS, ROTATION_STATE, STORE_ITEMS, FileNames
from ca_core.errors import BundleError, Unavailable
from ca_core.rotation.document import public_items

from .base import StoredBundle

log = logging.getLogger(__name__)

VERSION_ANNOTATION = "sentryca/bundle-version"
ANCHORS_ANNOTATION = "sentryca/bundle-anchors"
DEFAULT_REQUEST_TIMEOUT = 10.0  # seconds per API call (connect and read)
_SYNC_ATTEMPTS = 3


class _Conflict(Exception):
    """A conditional write lost (409, or 404 for a PUT on an object deleted meanwhile)."""


class KubernetesSecretBundleStore:
    """A trust bundle in a Kubernetes Secret plus its public ConfigMap.

    namespace, secret: where (the ConfigMap has the Secret's name); names: Secret keys of the
    items; kubeconfig: a kubeconfig file, or None for the in-cluster service account;
    api_client: a ``kubernetes.client.ApiClient`` (default: built from ``kubeconfig`` on first
    use); request_timeout: seconds per API call.
    """

    def __init__(
        self,
        namespace: str,
        secret: str,
        names: FileNames | None = None,
        *,
        kubeconfig: str | None = None,
        api_client: Any = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.namespace, self.secret = namespace, secret
        self.names = names or FileNames()
        self.kubeconfig = kubeconfig
        self.request_timeout = request_timeout
        self.description = f"kubernetes://{namespace}/{secret}"
        self._keys = {item: key for item, key in self.names.mapping().items() if item in STORE_ITEMS}
        self._public_keys = {i: self._keys[i] for i in (ANCHORS, ISSUER_CHAIN, ROTATION_STATE, JWKS)}
        self._api_client = api_client
        self._core: Any = None

    # -- the client -------------------------------------------------------------------------

    @property
    def core(self) -> Any:
        """The CoreV1Api (the client is built, not contacted, on first use; ConfigError when
        neither ``kubeconfig`` nor the in-cluster configuration loads)."""
        if self._core is None:
            from kubernetes import client

            if self._api_client is None:
                from adapters.kube_api import api_client

                self._api_client = api_client(self.kubeconfig)
            self._core = client.CoreV1Api(self._api_client)
        return self._core

    def labels(self) -> dict[str, str]:
        return {item: f"{self.description} key {key}" for item, key in self._keys.items()}

    def _where(self, kind: str) -> str:
        return f"{kind} {self.namespace}/{self.secret}"

    def _call(self, kind: str, doing: str, fn: Callable[[], Any], *, absent_ok: bool = False) -> Any:
        """Run one API call. Returns None for 404 when ``absent_ok``; raises _Conflict for 409;
        everything else that fails becomes Unavailable with the port's reasons."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        where = f"{self.description} ({self._where(kind)})"
        try:
            return fn()
        except ApiException as e:
            status = int(e.status or 0)
            if status == 404 and absent_ok:
                return None
            if status == 409:
                raise _Conflict() from None
            answer = f"the Kubernetes API answered {status} {e.reason or ''}".rstrip()
            if status in (401, 403):
                raise Unavailable(
                    f"{where}: cannot {doing}: {answer}; check the credentials (--kubeconfig or the "
                    f"service account token) and that the CA may get, create and update secrets and "
                    f"configmaps in namespace {self.namespace!r}",
                    reason="store_denied",
                ) from None
            if status == 429 or status >= 500 or status == 0:
                raise Unavailable(f"{where}: cannot {doing}: {answer}", reason="store_unreachable") from None
            if status == 404:
                answer += f" (does namespace {self.namespace!r} exist?)"
            raise Unavailable(f"{where}: cannot {doing}: {answer}", reason="store_misconfigured") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise Unavailable(
                f"{where}: cannot {doing}: the Kubernetes API is unreachable ({type(e).__name__})",
                reason="store_unreachable",
            ) from None

    def _timeout(self) -> tuple[float, float]:
        return (self.request_timeout, self.request_timeout)

    def _serialise(self, obj: Any) -> dict[str, Any]:
        """A read object as the JSON body of a PUT (every field kept: labels, owners, ...)."""
        return self._api_client.sanitize_for_serialization(obj)

    # -- Secret ----------------------------------------------------------------------------

    def _read_secret(self, doing: str) -> Any:
        return self._call(
            "Secret",
            doing,
            lambda: self.core.read_namespaced_secret(
                self.secret, self.namespace, _request_timeout=self._timeout()
            ),
            absent_ok=True,
        )

    def _items(self, secret: Any) -> dict[str, bytes]:
        """The bundle items in ``secret`` (only the keys present); BundleError for a value that
        is not base64 (the API never returns one, a broken proxy might)."""
        data = secret.data or {}
        items = {}
        for item, key in self._keys.items():
            if key in data:
                try:
                    items[item] = base64.b64decode(data[key] or "", validate=True)
                except (binascii.Error, ValueError):
                    raise BundleError("is not base64 data", item=self.labels()[item]) from None
        return items

    def _secret_body(self, items: Mapping[str, bytes], base: Any) -> dict[str, Any]:
        if base is None:
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": self.secret, "namespace": self.namespace},
                "type": "Opaque",
            }
            foreign: dict[str, str] = {}
        else:
            body = self._serialise(base)
            ours = set(self._keys.values())
            foreign = {k: v for k, v in (body.get("data") or {}).items() if k not in ours}
        unknown = sorted(set(items) - set(self._keys))
        if unknown:
            raise BundleError(f"unknown bundle items {', '.join(unknown)}", item=self.description)
        body["data"] = foreign | {
            self._keys[i]: base64.b64encode(v).decode("ascii") for i, v in items.items()
        }
        body.pop("stringData", None)
        meta = body.setdefault("metadata", {})
        meta["annotations"] = (meta.get("annotations") or {}) | {ANCHORS_ANNOTATION: _anchors_digest(items)}
        return body

    def load(self) -> StoredBundle | None:
        secret = self._read_secret("read the trust bundle")
        if secret is None:
            return None
        items = self._items(secret)
        if not items:
            return None  # a Secret without bundle keys, e.g. created empty by Dapr's Helm chart
        return StoredBundle(items, secret.metadata.resource_version)

    def publish_public(self, stored: StoredBundle) -> None:
        """Repair the ConfigMap from ``stored`` (an accepted bundle) when it differs or is
        missing, only while the Secret's resourceVersion is still ``stored.version``; failures
        are logged."""
        self._sync_config_map(stored, repair=True)

    def held_before(self) -> str | None:
        """The Secret's ``sentryca/bundle-anchors`` annotation (a Secret emptied of its bundle
        keys), else the ConfigMap's annotations or its ``ca.crt`` (a Secret deleted or emptied);
        None when neither shows a bundle."""
        secret = self._read_secret("read the trust bundle Secret's annotations")
        if secret is not None and not self._items(secret):
            digest = (secret.metadata.annotations or {}).get(ANCHORS_ANNOTATION)
            if digest:
                return (
                    f"the Secret {self.namespace}/{self.secret} has no bundle keys, but its annotation "
                    f"{ANCHORS_ANNOTATION}={digest} records the bundle it held"
                )
        cm = self._read_config_map("read the public part of the trust bundle")
        if cm is None:
            return None
        annotations = cm.metadata.annotations or {}
        marks = [
            f"{a}={annotations[a]}" for a in (ANCHORS_ANNOTATION, VERSION_ANNOTATION) if annotations.get(a)
        ]
        anchors_key = self._public_keys[ANCHORS]
        if (cm.data or {}).get(anchors_key):
            marks.append(f"key {anchors_key}, the trust anchors workloads were given")
        if not marks:
            return None
        state = "is deleted" if secret is None else "holds no bundle keys"
        return (
            f"the Secret {self.namespace}/{self.secret} {state}, but the ConfigMap "
            f"{self.namespace}/{self.secret} still mirrors a bundle ({'; '.join(marks)})"
        )

    def create(self, items: Mapping[str, bytes]) -> bool:
        body = self._secret_body(items, None)
        try:
            written = self._call(
                "Secret",
                "create the trust bundle",
                lambda: self.core.create_namespaced_secret(
                    self.namespace, body, _request_timeout=self._timeout()
                ),
            )
        except _Conflict:
            # The Secret exists. Empty (e.g. from Dapr's Helm chart): fill it, conditionally.
            existing = self._read_secret("read the trust bundle")
            if existing is None or self._items(existing):
                return False
            written = self._put_secret(items, existing, "fill the empty trust bundle Secret")
            if written is None:
                return False
        self._sync_config_map(StoredBundle(dict(items), written.metadata.resource_version))
        return True

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        return self.replace_version(items, expected_version) is not None

    def replace_version(self, items: Mapping[str, bytes], expected_version: str) -> str | None:
        existing = self._read_secret("read the trust bundle")
        if existing is None or existing.metadata.resource_version != expected_version:
            return None
        written = self._put_secret(items, existing, "replace the trust bundle")
        if written is None:
            return None
        # The ConfigMap is not written here: it is the record of the last accepted bundle,
        # published by whoever accepted this one (``publish_public``, design §5.5).
        version: str = written.metadata.resource_version  # the written Secret's, which load() reports
        return version

    def _put_secret(self, items: Mapping[str, bytes], existing: Any, doing: str) -> Any:
        """PUT ``items`` over ``existing`` with its resourceVersion; None when another writer won."""
        body = self._secret_body(items, existing)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        try:
            return self._call(
                "Secret",
                doing,
                lambda: self.core.replace_namespaced_secret(
                    self.secret, self.namespace, body, _request_timeout=self._timeout()
                ),
                absent_ok=True,  # deleted meanwhile: another writer's business, not ours
            )
        except _Conflict:
            return None

    # -- ConfigMap (the public part) ----------------------------------------------------------

    def _read_config_map(self, doing: str) -> Any:
        return self._call(
            "ConfigMap",
            doing,
            lambda: self.core.read_namespaced_config_map(
                self.secret, self.namespace, _request_timeout=self._timeout()
            ),
            absent_ok=True,
        )

    def load_public(self) -> StoredBundle | None:
        cm = self._read_config_map("read the public part of the trust bundle")
        if cm is None:
            return None
        data = cm.data or {}
        items = {item: data[key].encode() for item, key in self._public_keys.items() if data.get(key)}
        if not items:
            return None
        annotations = cm.metadata.annotations or {}
        return StoredBundle(items, annotations.get(VERSION_ANNOTATION) or cm.metadata.resource_version)

    def load_accepted(self) -> StoredBundle | None:
        """The record of the last accepted bundle: the ConfigMap (its public items)."""
        return self.load_public()

    def find_accepted(self, record: Mapping[str, bytes]) -> StoredBundle | None:
        """None: a Secret keeps no earlier versions."""
        return None

    def _public_data(self, stored: StoredBundle) -> dict[str, str] | None:
        try:
            public = public_items(stored.items)
            return {
                key: public[item].decode("ascii") for item, key in self._public_keys.items() if item in public
            }
        except UnicodeDecodeError:
            return None

    def _sync_config_map(self, stored: StoredBundle, *, repair: bool = False) -> None:
        """Make the ConfigMap mirror ``stored`` (the Secret as accepted or just written). Its
        failures are logged, never raised: the ConfigMap is derived and repaired by
        ``publish_public``. When another writer changes the ConfigMap meanwhile: after a write,
        the Secret is read again and mirrored; for a ``repair`` (publishing an accepted bundle)
        only ``stored`` is ever mirrored, and only while the Secret is still at its version."""
        try:
            for _ in range(_SYNC_ATTEMPTS):
                want = self._public_data(stored)
                if want is None:
                    return
                cm = self._read_config_map("read the public part of the trust bundle")
                if cm is not None:
                    data = cm.data or {}
                    annotations = cm.metadata.annotations or {}
                    mirrored = {k: data[k] for k in self._public_keys.values() if k in data}
                    if mirrored == want and (annotations.get(VERSION_ANNOTATION) == stored.version):
                        return
                current = self._read_secret("check the trust bundle's version")
                if current is None or current.metadata.resource_version != stored.version:
                    # Another writer replaced the Secret since it was read: never mirror the
                    # older bundle over the public part; the newer writer (or the next load) does.
                    log.info(
                        "%s changed meanwhile; its ConfigMap is left to the newer writer", self.description
                    )
                    return
                if repair:
                    log.info("repairing the ConfigMap %s from the Secret", self._where("ConfigMap"))
                try:
                    self._write_config_map(want, stored.version, cm)
                    return
                except _Conflict:
                    if repair:
                        continue  # publish only the accepted ``stored``; the version check above
                        # leaves a Secret changed meanwhile to its writer or the next acceptance
                    secret = self._read_secret("read the trust bundle")
                    if secret is None or not self._items(secret):
                        return
                    stored = StoredBundle(self._items(secret), secret.metadata.resource_version)
            log.warning(
                "%s: the ConfigMap kept changing; it is repaired at the next publish", self.description
            )
        except (Unavailable, BundleError) as e:
            log.warning("cannot update the public part (ConfigMap) of %s: %s", self.description, e)

    def _write_config_map(self, want: dict[str, str], version: str, cm: Any) -> None:
        anchors_pem = want.get(self._public_keys[ANCHORS])
        anchors = (
            {ANCHORS_ANNOTATION: _anchors_digest({ANCHORS: anchors_pem.encode()})} if anchors_pem else {}
        )
        if cm is None:
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.secret,
                    "namespace": self.namespace,
                    "annotations": {VERSION_ANNOTATION: version, **anchors},
                },
                "data": want,
            }
            self._call(
                "ConfigMap",
                "create the public part of the trust bundle",
                lambda: self.core.create_namespaced_config_map(
                    self.namespace, body, _request_timeout=self._timeout()
                ),
            )
            return
        body = self._serialise(cm)
        ours = set(self._public_keys.values())
        body["data"] = {k: v for k, v in (body.get("data") or {}).items() if k not in ours} | want
        meta = body.setdefault("metadata", {})
        meta["annotations"] = (meta.get("annotations") or {}) | {VERSION_ANNOTATION: version, **anchors}
        meta["resourceVersion"] = cm.metadata.resource_version
        result = self._call(
            "ConfigMap",
            "update the public part of the trust bundle",
            lambda: self.core.replace_namespaced_config_map(
                self.secret, self.namespace, body, _request_timeout=self._timeout()
            ),
            absent_ok=True,
        )
        if result is None:
            raise _Conflict()


def _anchors_digest(items: Mapping[str, bytes]) -> str:
    """``sha256:<hex>`` of the ``ca.crt`` item (what ``sha256sum ca.crt`` of a backup shows)."""
    return "sha256:" + hashlib.sha256(items.get(ANCHORS, b"")).hexdigest()
