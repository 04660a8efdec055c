"""A minimal HTTP/2 gRPC call over TLS whose headers may be any bytes (no Huffman, no
indexing): what a well-behaved client library refuses to send."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct


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


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def call(port: int, cafile: str, path: bytes, body: bytes, extra=()) -> bytes:
    """One unary call to 127.0.0.1:``port`` with headers ``extra`` added; the raw bytes answered."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2"])
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *extra,
    ]
    block = b"".join(_literal(n, v) for n, v in headers)
    message = b"\x00" + struct.pack(">I", len(body)) + body
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
            s.sendall(preface + _frame(1, 4, 1, block) + _frame(0, 1, 1, message))
            with contextlib.suppress(OSError):
                while b"grpc-status" not in data and (chunk := s.recv(65536)):
                    data += chunk
    return data
