"""One signing process of the front-end experiment (``front_experiment.py``), run by it.

Usage: ``front_signer.py SOCKET LOG_LEVEL``. Serves HTTP/1.1 on the Unix socket SOCKET (HAProxy
is its only client) and answers each request as one ``SignCertificate`` call: the body is the
call's gRPC body (a 5-byte prefix, then the ``SignCertificateRequest``), and the answer is the
gRPC response body with ``grpc-status`` (and ``grpc-message``, and the servicer's trailers, such
as the call id) in the HTTP/1.1 trailers, which HAProxy sends on as HTTP/2 trailers. Any other
method is UNIMPLEMENTED. Prints ``ready`` on stdout once it listens; exits when stdin closes (the
bench process went away).

Each call runs through the CA's own ``handlers.grpc_service.CAServicer`` (metrics, call-id
trailer, audit, refusals as the CA words them), with the started heap frozen as the CA does,
through a stand-in for grpc.aio's context. Where it differs from the CA's server:

- the request message is already whole when the call starts (HAProxy buffers it: ``option
  http-buffer-request``, bounded by its ``timeout http-request``), so the servicer's message
  deadline never applies and a call's in-flight place is taken only once its message is here;
- each process has its own call limits (``Guard``): N processes admit N times the CA's per-peer
  and total in-flight caps;
- the client's ``grpc-timeout`` is not applied (HAProxy's ``timeout server`` bounds a call); a
  call whose connection HAProxy closes (the client reset it) is cancelled;
- the signer is ``run.make_signer()``'s: a fresh bundle per process, the INSECURE validator.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import grpc
import httptools

from handlers.call_limits import CallLimits, Guard
from handlers.grpc_service import CAServicer, decode_message
from handlers.heap import freeze_startup_heap
from handlers.logs import setup_logging
from handlers.metrics import Metrics
from handlers.rate_limit import RateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_signer  # bench/ is not a package: its scripts import each other so

log = logging.getLogger("bench.front_signer")

SIGN_PATH = b"/dapr.proto.sentry.v1.CA/SignCertificate"
PREFIX = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
Metadata = tuple[tuple[str, str], ...]


class Aborted(Exception):
    """Raised by ``CallContext.abort``, as grpc.aio's abort raises to end the handler."""


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` that ``CAServicer`` uses, for one call whose
    request ``message`` (as ``decode_message`` made it) has fully arrived from ``peer``."""

    def __init__(self, message: object, peer: str) -> None:
        self._message = message
        self._peer = peer
        self.trailers: Metadata = ()
        self.code = grpc.StatusCode.OK
        self.details = ""

    async def read(self) -> object:
        """The request message, then ``grpc.aio.EOF``."""
        message, self._message = self._message, grpc.aio.EOF
        return message

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self.trailers = metadata

    def peer(self) -> str:
        """``ipv4:<address>:0``, the address from HAProxy's ``X-Forwarded-For``."""
        return self._peer

    def cancelled(self) -> bool:
        return False  # a reset call is cancelled as a task instead (Connection.connection_lost)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        """Record the call's status; raises Aborted."""
        self.code, self.details = code, details
        raise Aborted


def trailers(code: grpc.StatusCode, details: str, metadata: Metadata) -> bytes:
    """The last chunk of a chunked body: ``0``, the trailer fields (``grpc-status``, a
    percent-encoded ``grpc-message`` when ``details``, then ``metadata``) and the closing CRLF."""
    lines = [f"grpc-status: {code.value[0]}"]
    if details:
        lines.append(f"grpc-message: {quote(details)}")
    lines += [f"{key}: {value}" for key, value in metadata]
    return ("0\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection from HAProxy: one call at a time (HAProxy does not pipeline)."""

    def __init__(self, servicer: CAServicer) -> None:
        self.servicer = servicer
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.path = b""
        self.forwarded_for = "127.0.0.1"
        self.call: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.call is not None:
            self.call.cancel()  # the client reset the call, or HAProxy gave up on it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks, in the order it calls them for each request

    def on_message_begin(self) -> None:
        self.body, self.path, self.forwarded_for = bytearray(), b"", "127.0.0.1"

    def on_url(self, url: bytes) -> None:
        self.path += url  # the gRPC method: /service/method

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-forwarded-for":
            self.forwarded_for = value.decode("latin-1")  # a reused connection carries many clients

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.path != SIGN_PATH:
            unknown = f"unknown method {self.path.decode('latin-1')}"
            self.transport.write(HEAD + trailers(grpc.StatusCode.UNIMPLEMENTED, unknown, ()))
            return
        peer = f"ipv4:{self.forwarded_for}:0"
        self.call = asyncio.get_running_loop().create_task(self.answer(bytes(self.body), peer))

    async def answer(self, body: bytes, peer: str) -> None:
        """Answer one call whose gRPC body is ``body``, as the CA's servicer decides."""
        assert self.transport is not None
        try:
            self.transport.write(await self.respond(body, peer))
        finally:
            self.call = None

    async def respond(self, body: bytes, peer: str) -> bytes:
        """The whole HTTP/1.1 response (head, body, trailers) to one call."""
        if not body:
            missing = "the call ended without a request message"
            return HEAD + trailers(grpc.StatusCode.INVALID_ARGUMENT, missing, ())
        compressed, length = PREFIX.unpack_from(body) if len(body) >= PREFIX.size else (0, -1)
        if compressed or len(body) != PREFIX.size + length:  # gRPC says INTERNAL for both
            return HEAD + trailers(grpc.StatusCode.INTERNAL, "one uncompressed gRPC message expected", ())
        context = CallContext(decode_message(body[PREFIX.size :]), peer)
        try:
            response = await self.servicer.SignCertificate(None, context)
        except Aborted:
            return HEAD + trailers(context.code, context.details, context.trailers)
        except Exception:  # what grpc.aio answers for a handler that raised: UNKNOWN, at once
            log.exception("SignCertificate raised")
            return HEAD + trailers(grpc.StatusCode.UNKNOWN, "unexpected error", context.trailers)
        out = response.SerializeToString()
        frame = PREFIX.pack(0, len(out)) + out
        return (
            HEAD + b"%x\r\n%s\r\n" % (len(frame), frame) + trailers(grpc.StatusCode.OK, "", context.trailers)
        )


async def serve(socket_path: str) -> None:
    """Listen on ``socket_path`` and answer calls until stdin closes."""
    signer = make_signer()
    servicer = CAServicer(
        lambda: signer,
        lambda: datetime.now(UTC),
        Metrics(),
        RateLimiter(0),  # one caller on purpose, as bench/ca_server.py sets it
        identity_limiter=RateLimiter(0),
        io_executor=ThreadPoolExecutor(max_workers=16),
        guard=Guard(CallLimits()),
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: Connection(servicer), socket_path)
    stdin_closed = loop.create_future()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set_result, None)),
        daemon=True,
    ).start()
    freeze_startup_heap()
    print("ready", flush=True)
    async with server:
        await stdin_closed


if __name__ == "__main__":
    socket_path, log_level = sys.argv[1:3]
    setup_logging(log_level, False)
    asyncio.run(serve(socket_path))
