"""HTTP/2 gRPC over TLS written frame by frame: what a well-behaved client library refuses to send.

``call`` makes one unary call whose headers may be any bytes (no Huffman, no indexing).
``Connection`` is a client connection an attacker controls: it sends the preface and SETTINGS
(or not), ACKs the server's SETTINGS (or not), opens streams with HEADERS only, sends DATA a few
bytes at a time, resets streams, and reads what the server answers (frames, and each stream's
headers and trailers through a small HPACK decoder). ``pump`` reads many connections at once.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED, PRIORITY = 0x8, 0x20
NO_ERROR, CANCEL = 0x0, 0x8

SIGN_PATH = b"/dapr.proto.sentry.v1.CA/SignCertificate"
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"


def _int(n: int, prefix_bits: int) -> bytes:
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([n])
    out, n = [top], n - top
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    return bytes([*out, n])


def _literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def request_block(path: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """The HPACK block (literals only) of a gRPC request to ``path`` with headers ``extra`` added."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]
    return b"".join(_literal(n, v) for n, v in headers)


def grpc_message(body: bytes) -> bytes:
    """A gRPC length-prefixed message (not compressed)."""
    return b"\x00" + struct.pack(">I", len(body)) + body


def call(port: int, cafile: str, path: bytes, body: bytes, extra=()) -> bytes:
    """One unary call to 127.0.0.1:``port`` with headers ``extra`` added; the raw bytes answered."""
    ctx = tls_context(cafile)
    block = request_block(path, extra)
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            preface = PREFACE + frame(SETTINGS, 0, 0, b"")
            s.sendall(
                preface
                + frame(HEADERS, END_HEADERS, 1, block)
                + frame(DATA, END_STREAM, 1, grpc_message(body))
            )
            with contextlib.suppress(OSError):
                while b"grpc-status" not in data and (chunk := s.recv(65536)):
                    data += chunk
    return data


# --- HPACK decoding (RFC 7541), enough for gRPC core's answers: no Huffman ----------------------

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = tuple(
    (n.encode(), v.encode())
    for n, v in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)


class HpackDecoder:
    """One connection's HPACK decoder (its dynamic table). Huffman-coded strings are refused
    (ValueError): gRPC core sends its header names and values as plain literals."""

    def __init__(self) -> None:
        self._dynamic: list[tuple[bytes, bytes]] = []  # newest first
        self._size = 0
        self._max = 4096

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        return self._dynamic[index - len(STATIC_TABLE) - 1]

    def _add(self, name: bytes, value: bytes) -> None:
        self._dynamic.insert(0, (name, value))
        self._size += 32 + len(name) + len(value)
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max and self._dynamic:
            name, value = self._dynamic.pop()
            self._size -= 32 + len(name) + len(value)

    @staticmethod
    def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        top = (1 << prefix_bits) - 1
        value = data[pos] & top
        pos += 1
        if value < top:
            return value, pos
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value += (byte & 127) << shift
            shift += 7
            if byte < 128:
                return value, pos

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if data[pos] & 0x80:
            raise ValueError("a Huffman-coded header string (this decoder reads plain literals only)")
        length, pos = self._integer(data, pos, 7)
        return data[pos : pos + length], pos + length

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed
                index, pos = self._integer(block, pos, 7)
                headers.append(self._entry(index))
                continue
            if byte & 0xE0 == 0x20:  # dynamic table size update
                self._max, pos = self._integer(block, pos, 5)
                self._evict()
                continue
            indexing = byte & 0xC0 == 0x40
            index, pos = self._integer(block, pos, 6 if indexing else 4)
            if index:
                name = self._entry(index)[0]
            else:
                name, pos = self._string(block, pos)
            value, pos = self._string(block, pos)
            if indexing:
                self._add(name, value)
            headers.append((name, value))
        return headers


# --- a connection an attacker drives ------------------------------------------------------------


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes


@dataclass
class Stream:
    """One stream of a :class:`Connection`, as the server answered it so far."""

    id: int
    opened_at: float  # time.monotonic()
    headers: list[dict[bytes, bytes]] = field(default_factory=list)  # response headers, then trailers
    data: bytes = b""
    reset: int | None = None  # the server's RST_STREAM error code
    ended_at: float | None = None  # when the server ended or reset it

    @property
    def status(self) -> int | None:
        """The grpc-status of the server's trailers, or None (none yet)."""
        for block in self.headers:
            if b"grpc-status" in block:
                return int(block[b"grpc-status"])
        return None

    @property
    def message(self) -> str:
        for block in self.headers:
            if b"grpc-message" in block:
                return block[b"grpc-message"].decode(errors="replace")
        return ""

    @property
    def done(self) -> bool:
        return self.ended_at is not None


def tcp_connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from address ``source`` (any 127/8 address is the
    loopback: a caller seen by the CA as another peer)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def tls_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER 0): the peer vanishes without a goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Connection:
    """An HTTP/2 client connection over TLS to 127.0.0.1:``port`` from ``source``, driven frame by
    frame. ``preface``: send the client preface and an empty SETTINGS at once; ``ack_settings``:
    ACK the server's SETTINGS when read (and answer its PINGs). Read with :meth:`read` (one
    connection) or :func:`pump` (many): it records the server's frames, each stream's answer,
    GOAWAY and the end of the connection. Not thread-safe: one thread drives it."""

    def __init__(
        self,
        port: int,
        cafile: str,
        *,
        source: str = "127.0.0.1",
        preface: bool = True,
        ack_settings: bool = True,
        timeout: float = 10.0,
    ) -> None:
        raw = tcp_connect(port, source, timeout)
        try:
            self.sock = tls_context(cafile).wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise
        self.ack_settings = ack_settings
        self.timeout = timeout
        self._outbox: list[bytes] = []  # frames to send once the socket is read
        self.started = time.monotonic()
        self.frames: list[Frame] = []
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int, bytes] | None = None  # (last stream id, error code, debug data)
        self.closed_at: float | None = None  # when the server closed it (EOF or reset)
        self.settings_seen = False
        self._next_stream = 1
        self._buffer = b""
        self._decoder = HpackDecoder()
        self._continued: tuple[int, bytes, int] | None = None  # (stream, block so far, flags)
        if preface:
            self.send_preface()

    # -- sending

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_preface(self) -> None:
        self.send_raw(PREFACE + frame(SETTINGS, 0, 0, b""))

    def headers_frame(
        self, path: bytes = SIGN_PATH, *, end_stream: bool = False, extra=()
    ) -> tuple[int, bytes]:
        """(stream id, the HEADERS frame of a new call to ``path``), not sent yet."""
        stream = self._next_stream
        self._next_stream += 2
        self.streams[stream] = Stream(stream, time.monotonic())
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return stream, frame(HEADERS, flags, stream, request_block(path, extra))

    def open(self, path: bytes = SIGN_PATH, *, end_stream: bool = False, extra=()) -> int:
        """Open a stream with HEADERS only (no DATA, no END_STREAM unless asked); its id."""
        stream, data = self.headers_frame(path, end_stream=end_stream, extra=extra)
        self.send_raw(data)
        return stream

    def open_many(self, count: int, path: bytes = SIGN_PATH) -> list[int]:
        """Open ``count`` streams (HEADERS only) in one write; their ids."""
        frames = [self.headers_frame(path) for _ in range(count)]
        self.send_raw(b"".join(data for _, data in frames))
        return [stream for stream, _ in frames]

    def send_data(self, stream: int, data: bytes, *, end_stream: bool = False) -> None:
        self.send_raw(frame(DATA, END_STREAM if end_stream else 0, stream, data))

    def reset(self, stream: int, code: int = CANCEL) -> None:
        self.send_raw(frame(RST_STREAM, 0, stream, struct.pack(">I", code)))

    def close(self, *, rst: bool = False) -> None:
        """Close the socket; ``rst``: with a TCP RST instead of a FIN."""
        if rst:
            abort(self.sock)
        else:
            with contextlib.suppress(OSError):
                self.sock.close()

    # -- reading

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Read what the server sends for up to ``seconds`` (less once ``until()`` is true or the
        connection is closed)."""
        pump([self], seconds, until)

    def receive_ready(self) -> None:
        """Read what the socket holds now (called when it is readable); then send the ACKs due."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except (OSError, ssl.SSLError):
                    chunk = b""
                if not chunk:
                    self._closed()
                    return
                self._buffer += chunk
                self._parse()
        finally:
            if not self.closed:
                with contextlib.suppress(OSError):
                    self.sock.settimeout(self.timeout)
        if self._outbox:
            data, self._outbox = b"".join(self._outbox), []
            with contextlib.suppress(OSError, ssl.SSLError):
                self.sock.sendall(data)

    def _closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        now = self.closed_at
        for s in self.streams.values():
            if s.ended_at is None and s.status is not None:
                s.ended_at = now

    def _parse(self) -> None:
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = struct.unpack(">I", self._buffer[5:9])[0] & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            self._on_frame(Frame(kind, flags, stream, payload))

    def _on_frame(self, f: Frame) -> None:
        self.frames.append(f)
        now = time.monotonic()
        if f.kind == SETTINGS and not f.flags & ACK:
            self.settings_seen = True
            if self.ack_settings:
                self._outbox.append(frame(SETTINGS, ACK, 0, b""))
        elif f.kind == PING and not f.flags & ACK and self.ack_settings:
            self._outbox.append(frame(PING, ACK, 0, f.payload))
        elif f.kind == GOAWAY:
            last, code = struct.unpack(">II", f.payload[:8])
            self.goaway = (last & 0x7FFFFFFF, code, f.payload[8:])
        elif f.kind in (HEADERS, CONTINUATION):
            self._on_headers(f)
        elif f.kind == DATA and f.stream in self.streams:
            s = self.streams[f.stream]
            s.data += f.payload
            if f.flags & END_STREAM:
                s.ended_at = now
        elif f.kind == RST_STREAM and f.stream in self.streams:
            s = self.streams[f.stream]
            s.reset = struct.unpack(">I", f.payload[:4])[0]
            if s.ended_at is None:
                s.ended_at = now

    def _on_headers(self, f: Frame) -> None:
        if f.kind == HEADERS:
            payload = f.payload
            if f.flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if f.flags & PRIORITY:
                payload = payload[5:]
            self._continued = (f.stream, payload, f.flags)
        elif self._continued is not None:
            stream, block, flags = self._continued
            self._continued = (stream, block + f.payload, flags | (f.flags & END_HEADERS))
        if self._continued is None or not self._continued[2] & END_HEADERS:
            return
        stream, block, flags = self._continued
        self._continued = None
        decoded = dict(self._decoder.decode(block))
        s = self.streams.get(stream)
        if s is not None:
            s.headers.append(decoded)
            if flags & END_STREAM:
                s.ended_at = time.monotonic()


def pump(conns: Iterable[Connection], seconds: float, until: Callable[[], bool] | None = None) -> None:
    """Read every connection of ``conns`` for up to ``seconds`` (0: what has arrived already), or
    until ``until()`` is true or every one is closed (poll(2): any number of descriptors)."""
    by_fd = {c.fileno(): c for c in conns if not c.closed}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + seconds
    while by_fd and not (until is not None and until()):
        left = max(0.0, deadline - time.monotonic())
        ready = [fd for fd, c in by_fd.items() if c.sock.pending()]
        if not ready:
            ready = [fd for fd, _ in poller.poll(min(left, 0.1) * 1000)]
        for fd in ready:
            c = by_fd[fd]
            c.receive_ready()
            if c.closed:
                poller.unregister(fd)
                del by_fd[fd]
        if left <= 0:
            return
