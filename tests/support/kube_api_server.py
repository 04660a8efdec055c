"""A small Kubernetes API server for tests: real HTTP on 127.0.0.1, real Kubernetes JSON.

It lets the official ``kubernetes`` client (or anything speaking the REST protocol) run
unmodified against an in-memory object store. Made for reuse: validators use pods, Dapr
Configurations and TokenReviews; stores use Secrets and ConfigMaps.

Objects are keyed by (group/version, resource plural, namespace, name); ``group/version`` is
``v1`` for the core group (``/api/v1/...``) and e.g. ``dapr.io/v1alpha1`` for ``/apis/...``.
Cluster-scoped objects use namespace ``""``. Served, for any resource:

    GET    collection            list (``{"kind": "<Kind>List", "items": [...]}``)
    GET    .../<name>            read, 404 NotFound
    POST   collection            create; name from metadata.name; 409 AlreadyExists; 201
    PUT    .../<name>            replace; 404 NotFound; 409 Conflict when the body's
                                 metadata.resourceVersion is set and differs
    DELETE .../<name>            delete, 404 NotFound
    GET    /version              the server's version (readiness probes)

Every write bumps one server-wide resourceVersion (a decimal string, as Kubernetes). Errors are
``Status`` objects with ``reason`` and ``code``. Hooks, checked in this order per request:

- ``fail(status=..., hang=..., path=..., times=...)``: forced failures (an HTTP status, or a
  hang until ``release_hangs()``/``stop()``), optionally only for paths containing ``path``
  and only ``times`` times;
- ``bearer_token``: when set, requests without ``Authorization: Bearer <it>`` get 401;
- ``handle(method, group_version, plural, fn)``: a handler for a resource that is not stored,
  e.g. TokenReview creation (see :class:`TokenReviews`); ``fn(ApiRequest) -> (status, body)``.
  A handler may instead return None to let the store serve the request after it ran: that is
  how a test puts another writer between a client's read and its write (``fn`` may call
  ``put``/``delete``; see :meth:`KubeApiServer.before`).

``requests`` records every request (method, path, parsed JSON body) for assertions.

    with KubeApiServer() as api:
        api.put("v1", "pods", "prod", {"metadata": {"name": "p"}, "spec": {...}})
        api.write_kubeconfig(tmp_path / "kubeconfig")
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Key = tuple[str, str, str, str]  # (group/version, plural, namespace, name)

# /api/v1[/namespaces/<ns>]/<plural>[/<name>]  or  /apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>]
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?/?$"
)

# Kinds of the resources tests use; others get a kind derived from the plural.
KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "configurations": "Configuration",
    "tokenreviews": "TokenReview",
    "namespaces": "Namespace",
}


def kind_of(plural: str) -> str:
    return KINDS.get(plural) or plural[:-1].capitalize()


def status_body(code: int, reason: str, message: str, *, name: str = "", plural: str = "") -> dict:
    """A Kubernetes ``Status`` object (what the API returns for errors)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "kind": plural},
        "code": code,
    }


@dataclass(frozen=True)
class ApiRequest:
    """One request as the server saw it. ``body`` is parsed JSON (None when empty)."""

    method: str
    path: str
    group_version: str | None
    plural: str | None
    namespace: str
    name: str | None
    body: Any
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int | None
    hang: bool
    path: str | None
    times: int | None


@dataclass
class KubeApiServer:
    """The server. Use as a context manager, or ``start()`` / ``stop()``."""

    bearer_token: str | None = None
    version: dict = field(
        default_factory=lambda: {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
    )

    def __post_init__(self) -> None:
        self._objects: dict[Key, dict] = {}
        self._handlers: dict[tuple[str, str, str], Callable[[ApiRequest], tuple[int, Any] | None]] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._rv = itertools.count(1)
        self._release = threading.Event()
        self.requests: list[ApiRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KubeApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release any hanging request. The port is closed on return."""
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig pointing at this server (token: ``bearer_token`` unless given)."""
        user: dict[str, Any] = {}
        if token or self.bearer_token:
            user["token"] = token or self.bearer_token
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(doc))  # JSON is YAML
        return path

    # --- the store ----------------------------------------------------------------------------

    def put(self, group_version: str, plural: str, namespace: str, obj: dict) -> dict:
        """Create or replace an object directly (no conflict checks); returns the stored copy."""
        with self._lock:
            return self._store(group_version, plural, namespace, obj)

    def get(self, group_version: str, plural: str, namespace: str, name: str) -> dict | None:
        with self._lock:
            obj = self._objects.get((group_version, plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def delete(self, group_version: str, plural: str, namespace: str, name: str) -> bool:
        with self._lock:
            return self._objects.pop((group_version, plural, namespace, name), None) is not None

    def _store(self, gv: str, plural: str, namespace: str, obj: dict, existing: dict | None = None) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("name", "")
        if namespace:
            meta["namespace"] = namespace
        meta["resourceVersion"] = str(next(self._rv))
        old_meta = (existing or {}).get("metadata", {})
        meta["uid"] = old_meta.get("uid") or meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or datetime.now(UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        obj.setdefault("apiVersion", gv)
        obj.setdefault("kind", kind_of(plural))
        self._objects[(gv, plural, namespace, meta["name"])] = obj
        return copy.deepcopy(obj)

    # --- hooks --------------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        group_version: str,
        plural: str,
        fn: Callable[[ApiRequest], tuple[int, Any] | None],
    ):
        """Serve ``method`` on ``group_version``/``plural`` with ``fn`` instead of the store
        (``fn`` returning None: the store serves the request after ``fn`` ran)."""
        self._handlers[(method.upper(), group_version, plural)] = fn

    def before(self, method: str, group_version: str, plural: str, fn: Callable[[ApiRequest], None]) -> None:
        """Run ``fn(request)`` once, before the store serves the next ``method`` on
        ``group_version``/``plural`` (e.g. a concurrent writer's ``put``); later requests are
        served as usual."""
        done = threading.Event()

        def once(req: ApiRequest) -> None:
            if not done.is_set():
                done.set()
                fn(req)

        self.handle(method, group_version, plural, once)

    def fail(
        self,
        status: int | None = None,
        *,
        hang: bool = False,
        path: str | None = None,
        times: int | None = None,
    ) -> None:
        """Force failures: answer ``status`` (a Status body), or hang (until ``release_hangs()``
        or ``stop()``), for requests whose path contains ``path`` (all if None), ``times`` times
        (forever if None). The newest matching rule wins."""
        if status is None and not hang:
            raise ValueError("give a status or hang=True")
        with self._lock:
            self._failures.insert(0, _Failure(status, hang, path, times))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def release_hangs(self) -> None:
        self._release.set()
        self._release = threading.Event()

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(h, 400, status_body(400, "BadRequest", "body is not JSON"))
            return
        path = h.path.split("?", 1)[0]
        m = _PATH.match(path)
        gv = plural = name = None
        ns = ""
        if m:
            gv = m["core"] or f"{m['group']}/{m['version']}"
            plural, name, ns = m["plural"], m["name"], m["ns"] or ""
        req = ApiRequest(
            h.command, path, gv, plural, ns, name, body, {k.lower(): v for k, v in h.headers.items()}
        )
        with self._lock:
            self.requests.append(req)
            failure = self._take_failure(path)
        if failure is not None:
            if failure.hang:
                self._release.wait()
                return  # the client has given up; send nothing
            # Like the real API server's answers to invalid objects, the message echoes the request
            # (a TokenReview's carries the token): callers must never log an error body.
            echo = f": {json.dumps(body)[:4000]}" if body else ""
            self._send(h, failure.status, status_body(failure.status, "Forced", f"forced failure{echo}"))
            return
        if (
            self.bearer_token is not None
            and req.headers.get("authorization") != f"Bearer {self.bearer_token}"
        ):
            self._send(h, 401, status_body(401, "Unauthorized", "Unauthorized"))
            return
        if path.rstrip("/") == "/version":
            self._send(h, 200, self.version)
            return
        if not m:
            self._send(h, 404, status_body(404, "NotFound", f"no route for {path}"))
            return
        handler = self._handlers.get((h.command, gv, plural))
        answer = handler(req) if handler is not None else None
        if answer is not None:
            code, out = answer
            self._send(h, code, out)
            return
        code, out = self._crud(req)
        self._send(h, code, out)

    def _take_failure(self, path: str) -> _Failure | None:
        for f in self._failures:
            if f.path is None or f.path in path:
                if f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        self._failures.remove(f)
                return f
        return None

    def _crud(self, req: ApiRequest) -> tuple[int, Any]:
        gv, plural, ns, name = req.group_version, req.plural, req.namespace, req.name
        assert gv is not None and plural is not None
        key = (gv, plural, ns, name or "")
        with self._lock:
            if req.method == "GET" and name is None:
                items = [
                    copy.deepcopy(o)
                    for (g, p, n, _), o in sorted(self._objects.items())
                    if g == gv and p == plural and (not ns or n == ns)
                ]
                return 200, {
                    "kind": kind_of(plural) + "List",
                    "apiVersion": gv,
                    "metadata": {"resourceVersion": str(next(self._rv))},
                    "items": items,
                }
            if req.method == "POST" and name is None:
                if not isinstance(req.body, dict) or not (req.body.get("metadata") or {}).get("name"):
                    return 422, status_body(422, "Invalid", "metadata.name is required", plural=plural)
                obj_name = req.body["metadata"]["name"]
                if (gv, plural, ns, obj_name) in self._objects:
                    return 409, status_body(
                        409,
                        "AlreadyExists",
                        f'{plural} "{obj_name}" already exists',
                        name=obj_name,
                        plural=plural,
                    )
                return 201, self._store(gv, plural, ns, req.body)
            existing = self._objects.get(key)
            if name is None or req.method not in ("GET", "PUT", "DELETE"):
                return 405, status_body(405, "MethodNotAllowed", f"{req.method} is not served here")
            if existing is None:
                return 404, status_body(
                    404, "NotFound", f'{plural} "{name}" not found', name=name, plural=plural
                )
            if req.method == "GET":
                return 200, copy.deepcopy(existing)
            if req.method == "DELETE":
                del self._objects[key]
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Success",
                    "details": {"name": name},
                }
            if not isinstance(req.body, dict):
                return 422, status_body(422, "Invalid", "a JSON object is required", name=name, plural=plural)
            given = (req.body.get("metadata") or {}).get("resourceVersion")
            if given and given != existing["metadata"]["resourceVersion"]:
                return 409, status_body(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified',
                    name=name,
                    plural=plural,
                )
            body = copy.deepcopy(req.body)
            body.setdefault("metadata", {})["name"] = name
            return 200, self._store(gv, plural, ns, body, existing)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


class TokenReviews:
    """A TokenReview endpoint (``POST /apis/authentication.k8s.io/v1/tokenreviews``).

    ``tokens``: token → username, or → ``{"error": "..."}`` for a review that reports an error.
    Unknown tokens, or tokens whose allowed audiences (``audiences[token]``, default: any) do
    not intersect the requested ones, are answered ``authenticated: false``. ``seen`` holds
    the audiences of every review (never the tokens).
    """

    def __init__(self, server: KubeApiServer) -> None:
        self.tokens: dict[str, str | dict] = {}
        self.audiences: dict[str, set[str]] = {}
        self.seen: list[list[str]] = []
        server.handle("POST", "authentication.k8s.io/v1", "tokenreviews", self._review)

    def _review(self, req: ApiRequest) -> tuple[int, Any]:
        spec = (req.body or {}).get("spec") or {}
        token, requested = spec.get("token", ""), list(spec.get("audiences") or [])
        self.seen.append(requested)
        status: dict[str, Any] = {"authenticated": False}
        entry = self.tokens.get(token)
        allowed = self.audiences.get(token)
        if isinstance(entry, dict):
            status = {"authenticated": False, "error": entry["error"]}
        elif entry is not None and (allowed is None or allowed & set(requested)):
            status = {
                "authenticated": True,
                "user": {"username": entry, "uid": str(uuid.uuid4()), "groups": ["system:serviceaccounts"]},
                "audiences": sorted(allowed & set(requested)) if allowed else requested,
            }
        out = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return 201, out
