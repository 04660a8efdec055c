"""Small HTTP servers: ``/healthz`` (readiness), ``/livez`` (liveness) and ``/metrics``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ca_core.errors import CAError

log = logging.getLogger(__name__)

Route = Callable[[], tuple[int, str, bytes]]


def json_route(probe: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    """A route answering 200 when ``probe`` says ready, 503 otherwise, with its details as JSON."""

    def route() -> tuple[int, str, bytes]:
        ok, details = probe()
        return (200 if ok else 503), "application/json", json.dumps(details).encode() + b"\n"

    return route


class HttpEndpoints:
    """A threaded HTTP server on ``(address, port)`` answering GET for the given routes.

    port 0 picks a free port (see :attr:`port`). Unknown paths get 404; other methods 405.
    Raises CAError when the address cannot be bound (e.g. the port is in use).
    """

    def __init__(self, address: str, port: int, routes: dict[str, Route]) -> None:
        routes = dict(routes)

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # seconds: an idle or slow client cannot hold a thread forever

            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    try:
                        status, ctype, body = route()
                    except Exception:
                        log.exception("HTTP endpoint %s failed", self.path)
                        status, ctype, body = 500, "text/plain", b"internal error\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_error(405)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http %s " + format, self.address_string(), *args)

        family_server = ThreadingHTTPServer
        if ":" in address:
            import socket

            class V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            family_server = V6Server
        try:
            self._server = family_server((address, port), Handler)
        except OSError as e:
            raise CAError(
                f"cannot listen on {address}:{port} for {', '.join(routes)}: {e.strerror}"
            ) from None
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name=f"http-{self.port}", daemon=True
        )

    def start(self) -> HttpEndpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; returns when the serving thread has ended."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
