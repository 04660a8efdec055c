"""The OIDC discovery server (design §9.9): GET ``<prefix>/.well-known/openid-configuration`` and
``<prefix>/jwks.json`` on a port of its own, over TLS unless switched off, as Dapr's Sentry serves
them for cloud providers that federate the CA's JWT-SVIDs.

One request per connection (HTTP/1.1 with ``Connection: close``, or HTTP/1.0). It runs on an
asyncio event loop in a thread of its own: a slow handshake, a client trickling its request or not
reading the answer holds no thread, only a socket, and each is bounded in time (the TLS handshake,
the request head, the answer) and in number (MAX_CONNECTIONS). The request head is read up to
MAX_HEAD_BYTES and parsed by the standard library's header parser.

Answers: 200 with the document (``Cache-Control: public, max-age=3600``); 403 for a ``Host`` (or
``X-Forwarded-Host``) that ``--oidc-allowed-hosts`` does not list; 404 for another path, or when
the bundle has no JWKS; 405 with ``Allow: GET, HEAD`` for another method; 400 for a request that
is not HTTP; 500 when the bundle's JWKS cannot be served (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.message
import http.client
import io
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from ca_core import oidc
from ca_core.config import Config
from ca_core.errors import CAError, ConfigError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256  # open at once, handshakes excluded (those are bounded by HANDSHAKE_TIMEOUT)
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_DISCARDED_BODY = 64 * 1024  # a request body read (and dropped) before answering
HANDSHAKE_TIMEOUT = 10.0  # seconds for the TLS handshake
REQUEST_TIMEOUT = 10.0  # seconds for the whole request head, from the handshake's end
WRITE_TIMEOUT = 10.0  # seconds for the client to take the answer
RELOAD_CHECK = 30.0  # seconds between two looks at the TLS files (a renewed certificate)
ALLOW = "GET, HEAD"
_HOST_VALUE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(:[0-9]{1,5})?")

JwksProvider = Callable[[], "bytes | None"]


@dataclass(frozen=True)
class OidcSettings:
    """What the server serves, from the ``--oidc-*`` options: where it listens, the TLS files
    (None: plain HTTP), the path prefix, the allowed hosts, the ``jwks_uri`` override and the
    issuer (None: the request's own origin and prefix, as Dapr's Sentry derives it)."""

    listen_address: str
    port: int
    tls_cert_file: str | None
    tls_key_file: str | None
    path_prefix: str | None
    allowed_hosts: tuple[str, ...]
    jwks_uri: str | None
    issuer: str | None

    @classmethod
    def of(cls, cfg: Config, issuer: str | None = None) -> OidcSettings:
        """The settings of ``cfg``; ``issuer``: the JWT issuer (``--jwt-issuer``) when set."""
        tls = cfg.oidc_server_tls_enabled
        return cls(
            cfg.oidc_server_listen_address,
            cfg.oidc_server_listen_port,
            cfg.oidc_server_tls_cert_file if tls else None,
            cfg.oidc_server_tls_key_file if tls else None,
            cfg.oidc_path_prefix,
            cfg.oidc_allowed_hosts,
            cfg.oidc_jwks_uri,
            issuer,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def socket(self) -> tuple[str, int, str | None, str | None]:
        """What is fixed when the server opens: a change needs a new server; the rest changes in
        place (:meth:`OidcServer.reconfigure`)."""
        return (self.listen_address, self.port, self.tls_cert_file, self.tls_key_file)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def open_oidc(cfg: Config, jwks: JwksProvider, *, reuse_port: bool = False) -> OidcServer | None:
    """The started OIDC discovery server of ``cfg``, or None when ``--oidc-enabled`` is off;
    ``reuse_port``: bind with SO_REUSEPORT (the ``--workers`` processes share the port). Raises as
    :meth:`OidcServer.start`."""
    if not cfg.oidc_enabled:
        return None
    return OidcServer(oidc_settings(cfg), jwks, reuse_port=reuse_port).start()


def oidc_settings(cfg: Config) -> OidcSettings:
    """The server's settings of ``cfg``; the issuer: ``composition.token_issuer``."""
    from . import composition

    return OidcSettings.of(cfg, composition.token_issuer(cfg))


class OidcServer:
    """The discovery server of ``settings``; ``jwks`` returns the bundle's JWKS document in force
    (None: the bundle has none, both paths answer 404), read on every request. :meth:`start` binds
    (port 0: any free port, see :attr:`port`); :meth:`stop` closes it."""

    def __init__(self, settings: OidcSettings, jwks: JwksProvider, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self._jwks = jwks
        self._reuse_port = reuse_port
        from .server.event_loop import LoopThread  # here: handlers.server imports this module

        self._paths = oidc.endpoints(settings.path_prefix)
        self._loop = LoopThread("oidc-loop")
        self._server: asyncio.Server | None = None
        self._open = 0
        self._context: ssl.SSLContext | None = None  # the TLS files as last loaded
        self._stamp: tuple[int, ...] | None = None  # their modification times and sizes then
        self._checked = time.monotonic()
        self._transports: set[asyncio.WriteTransport] = set()  # the connections open now
        self.port: int | None = None

    def start(self) -> OidcServer:
        """Load the TLS files and bind. Raises ConfigError when the certificate or key cannot be
        loaded, CAError when the address cannot be bound; nothing stays open then."""
        context = self._tls_context() if self.settings.tls else None
        try:
            self._server = self._loop.run(self._listen(context))
        except OSError as e:
            self._loop.close()
            raise CAError(
                f"cannot listen on {self.settings.listen_address}:{self.settings.port} for OIDC "
                f"discovery: {e.strerror or e}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "OIDC discovery on %s://%s:%s%s (hosts: %s)",
            "https" if context else "http",
            self.settings.listen_address,
            self.port,
            self._paths.discovery,
            ", ".join(self.settings.allowed_hosts) or "any",
        )
        return self

    def reconfigure(self, settings: OidcSettings) -> None:
        """Serve ``settings`` from the next request on; its :attr:`OidcSettings.socket` must be
        this server's (else open a new server)."""
        if settings.socket != self.settings.socket:
            raise ValueError("the OIDC server's address, port or TLS files changed: open a new server")
        self.settings, self._paths = settings, oidc.endpoints(settings.path_prefix)

    def stop(self) -> None:
        """Stop accepting and close the port; connections still open are cut. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                self._loop.run(self._close(server), timeout=5.0)
        self._loop.close()

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for transport in list(self._transports):
            transport.abort()
        await asyncio.wait_for(server.wait_closed(), 1.0)

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS files loaded (and their stamp noted); raises ConfigError when they cannot be."""
        stamp = self._files_stamp()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.settings.tls_cert_file), str(self.settings.tls_key_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot load the OIDC server's TLS certificate {self.settings.tls_cert_file} and key "
                f"{self.settings.tls_key_file}: {e}"
            ) from None
        context.sni_callback = self._pick_context
        self._context, self._stamp = context, stamp
        return context

    def _files_stamp(self) -> tuple[int, ...] | None:
        try:
            cert, key = os.stat(str(self.settings.tls_cert_file)), os.stat(str(self.settings.tls_key_file))
        except OSError:
            return None
        return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)

    def _pick_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, in_use: ssl.SSLContext
    ) -> None:
        """At each TLS handshake (the ClientHello callback): at most every RELOAD_CHECK seconds,
        load the TLS files again when they changed (a renewed certificate; a pair that does not
        load, e.g. half written, keeps the previous one, logged), and hand the handshake the
        context of the files last loaded."""
        try:
            now = time.monotonic()
            if now - self._checked >= RELOAD_CHECK:
                self._checked = now
                stamp = self._files_stamp()
                if stamp is not None and stamp != self._stamp:
                    try:
                        self._tls_context()
                        log.info(
                            "OIDC discovery: TLS certificate reloaded from %s", self.settings.tls_cert_file
                        )
                    except ConfigError as e:
                        self._stamp = stamp  # tried: again once the files change
                        log.warning("OIDC discovery: keeping the previous TLS certificate: %s", e)
            if self._context is not None and self._context is not in_use:
                connection.context = self._context
        except Exception:  # a failure here would fail the handshake: keep the context in use
            log.exception("OIDC discovery: TLS certificate reload failed")

    async def _listen(self, context: ssl.SSLContext | None) -> asyncio.Server:
        return await asyncio.start_server(
            self._connection,
            self.settings.listen_address,
            self.settings.port,
            ssl=context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context else None,
            limit=MAX_HEAD_BYTES,
            reuse_port=self._reuse_port or None,
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open += 1
        self._transports.add(writer.transport)
        try:
            answer = await self._read_and_answer(reader)
            if answer is not None:
                writer.write(_encode(answer))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass  # a client gone or too slow: nothing to answer
        finally:
            self._open -= 1
            self._transports.discard(writer.transport)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> Answer | None:
        """The answer to the request ``reader`` brings, or None (nothing to answer: closed, too
        slow)."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _text(431, "request head too large")
        except asyncio.IncompleteReadError:
            return None
        line, _, rest = head.partition(b"\r\n")
        parts = line.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "not an HTTP/1 request")
        try:
            headers = http.client.parse_headers(io.BytesIO(rest))
        except http.client.HTTPException:
            return _text(400, "malformed headers")
        method, target, _version = parts
        answer = self.answer(method, target, headers)
        if method == "HEAD":  # the headers of the GET, no body
            answer = dataclasses.replace(answer, body=b"")
        await self._discard_body(reader, headers)
        return answer

    async def _discard_body(self, reader: asyncio.StreamReader, headers: email.message.Message) -> None:
        """Read a small request body so that closing the connection does not reset it before the
        client read the answer; a large or chunked one is left (the connection closes anyway)."""
        length = headers.get("Content-Length", "0")
        if length.isdigit() and 0 < int(length) <= MAX_DISCARDED_BODY:
            with contextlib.suppress(asyncio.IncompleteReadError):
                await asyncio.wait_for(reader.readexactly(int(length)), REQUEST_TIMEOUT)

    def answer(self, method: str, target: str, headers: email.message.Message) -> Answer:
        """The answer to ``method target`` with ``headers`` (the order of checks: path, host,
        method, the JWKS)."""
        path, paths = target.split("?", 1)[0], self._paths
        if path not in (paths.discovery, paths.jwks):
            return _text(404, "not found")
        sent = [h for h in (headers.get("Host"), headers.get("X-Forwarded-Host")) if h is not None]
        host = sent[-1] if sent else ""  # the forwarded host when sent, as Dapr's Sentry checks it
        if (
            not sent
            or not all(_HOST_VALUE.fullmatch(h) for h in sent)
            or not oidc.host_allowed(self.settings.allowed_hosts, host)
        ):
            log.warning("OIDC discovery: refused a request for host %r", host[:100])
            return _text(403, "forbidden: host not allowed")
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", (("Allow", ALLOW),))
        jwks = self._jwks()
        if not jwks:
            return _text(404, "the trust bundle has no JWKS")
        try:
            body = jwks if path == paths.jwks else self._discovery(headers, jwks, paths)
            oidc.public_keys(jwks)
        except ConfigError as e:
            log.error("OIDC discovery: the bundle's JWKS cannot be served: %s", e)
            return _text(500, "the JWKS cannot be served")
        return Answer(
            200,
            (
                ("Content-Type", "application/json"),
                ("Cache-Control", oidc.CACHE_CONTROL),
                ("Content-Length", str(len(body))),
            ),
            body,
        )

    def _discovery(self, headers: email.message.Message, jwks: bytes, paths: oidc.Endpoints) -> bytes:
        """The discovery document: the configured issuer, else this request's origin (the
        ``X-Forwarded-Host`` only when it passed a list of named hosts) and path prefix; the
        ``jwks_uri`` override, else the issuer's origin and this server's JWKS path."""
        s = self.settings
        issuer = s.issuer
        origin = None
        if issuer is None or s.jwks_uri is None:
            host = headers.get("Host") or ""
            forwarded = headers.get("X-Forwarded-Host")
            if forwarded and oidc.concrete_hosts(s.allowed_hosts):
                host = forwarded
            origin = f"{'https' if s.tls else 'http'}://{host}"
        if issuer is None:
            issuer = f"{origin}{paths.prefix}"
        jwks_uri = s.jwks_uri or _origin(issuer) + paths.jwks
        return oidc.discovery_document(issuer, jwks_uri, jwks)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _text(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> Answer:
    body = message.encode() + b"\n"
    headers = (("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *extra)
    return Answer(status, headers, body)


def _encode(answer: Answer) -> bytes:
    reason = http.client.responses.get(answer.status, "")
    lines = [f"HTTP/1.1 {answer.status} {reason}", *(f"{k}: {v}" for k, v in answer.headers)]
    lines += ["Connection: close", "X-Content-Type-Options: nosniff"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body
