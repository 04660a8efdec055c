"""One signing process of the front-end experiment (``front_experiment.py``), run by it.

Usage: ``front_signer.py SOCKET LOG_LEVEL``. Serves HTTP/1.1 on the Unix socket SOCKET (HAProxy
is its only client) and answers each request as one ``SignCertificate`` call: the body is the
call's gRPC body (a 5-byte prefix, then the ``SignCertificateRequest``), and the answer is the
gRPC response body with ``grpc-status`` (and ``grpc-message``, and the servicer's trailers, such
as the call id) in the HTTP/1.1 trailers, which HAProxy sends on as HTTP/2 trailers.

Each call runs through the CA's own ``handlers.grpc_service.CAServicer`` (call limits, metrics,
audit, refusals as the CA makes them) with a context that stands for grpc.aio's: the request
message is already whole when the call starts (HAProxy buffers it: ``option http-buffer-request``),
the peer is HAProxy's ``X-Forwarded-For``, and a call whose connection HAProxy closes (the client
reset it) is cancelled. Any other method is UNIMPLEMENTED. The signer is ``run.make_signer()``'s
(a fresh bundle per process, the INSECURE validator). Prints ``ready`` on stdout once it listens.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import grpc
import httptools

from handlers.call_limits import CallLimits, Guard
from handlers.grpc_service import CAServicer, decode_message
from handlers.logs import setup_logging
from handlers.metrics import Metrics
from handlers.rate_limit import RateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_signer  # bench/ is not a package: its scripts import each other so

SIGN_PATH = b"/dapr.proto.sentry.v1.CA/SignCertificate"
PREFIX = struct.Struct(">BI")  # gRPC message prefix: compressed flag, length
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n"
    b"trailer: grpc-status, grpc-message\r\n\r\n"
)


class Aborted(Exception):
    """Raised by ``CallContext.abort``, as grpc.aio's abort raises to end the handler."""


class CallContext:
    """The part of ``grpc.aio.ServicerContext`` that ``CAServicer`` uses, for one call."""

    def __init__(self, message: object, peer: str) -> None:
        self._message = message
        self._peer = peer
        self.trailers: tuple[tuple[str, str], ...] = ()
        self.code = grpc.StatusCode.OK
        self.details = ""

    async def read(self) -> object:
        message, self._message = self._message, grpc.aio.EOF
        return message

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailers = metadata

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted


def trailers(code: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"grpc-status: {code.value[0]}"]
    if details:
        lines.append(f"grpc-message: {quote(details)}")  # percent-encoded, as gRPC wants
    lines += [f"{key}: {value}" for key, value in metadata]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection from HAProxy: one call at a time (HAProxy does not pipeline)."""

    def __init__(self, servicer: CAServicer) -> None:
        self.servicer = servicer
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.forwarded_for = "127.0.0.1"
        self.path = b""
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

    def on_url(self, url: bytes) -> None:
        self.path += url  # the gRPC method: /service/method

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-forwarded-for":
            self.forwarded_for = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        body, self.body = bytes(self.body), bytearray()
        path, self.path = self.path, b""
        if path != SIGN_PATH:
            assert self.transport is not None
            unknown = f"unknown method {path.decode('latin-1')}"
            self.transport.write(HEAD + b"0\r\n" + trailers(grpc.StatusCode.UNIMPLEMENTED, unknown, ()))
            return
        self.call = asyncio.get_running_loop().create_task(self.answer(body, f"ipv4:{self.forwarded_for}:0"))

    async def answer(self, body: bytes, peer: str) -> None:
        assert self.transport is not None
        compressed, length = PREFIX.unpack_from(body) if len(body) >= PREFIX.size else (1, 0)
        if compressed or len(body) != PREFIX.size + length:
            self.transport.write(HEAD + b"0\r\n" + trailers(grpc.StatusCode.INTERNAL, "bad gRPC framing", ()))
            return
        context = CallContext(decode_message(body[PREFIX.size :]), peer)
        try:
            response = await self.servicer.SignCertificate(None, context)
        except Aborted:
            self.transport.write(HEAD + b"0\r\n" + trailers(context.code, context.details, context.trailers))
            return
        finally:
            self.call = None
        out = response.SerializeToString()
        frame = PREFIX.pack(0, len(out)) + out
        chunk = b"%x\r\n%s\r\n0\r\n" % (len(frame), frame)
        self.transport.write(HEAD + chunk + trailers(grpc.StatusCode.OK, "", context.trailers))


async def serve(socket_path: str) -> None:
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
    server = await asyncio.get_running_loop().create_unix_server(lambda: Connection(servicer), socket_path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    socket_path, log_level = sys.argv[1:3]
    setup_logging(log_level, False)
    asyncio.run(serve(socket_path))
