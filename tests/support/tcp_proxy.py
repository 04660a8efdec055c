"""A loopback TCP proxy in front of a server (moto), for faults on the path to it: ``hold()``
keeps every connection open but forwards nothing (a stalled service: the client's calls wait
for their read timeout), ``refuse()`` closes every connection and each new one at once (an
unreachable service), ``answer(...)`` answers every HTTP request on a new connection itself with
one response (what the service says in a state its stand-in cannot reach, e.g. KMS's
``DisabledException``, which moto's Sign never returns), ``flow()`` forwards again."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Listens on 127.0.0.1 (:attr:`port`, picked by the OS) and forwards to ``target``
    (host, port). Threads are daemons; :meth:`close` stops it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._answer: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def hold(self) -> None:
        """Forward nothing from now on; connections stay open."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again (and stop refusing or answering)."""
        self._refusing, self._answer = False, None
        self._flowing.set()

    def answer(self, status: int, body: bytes, content_type: str = "application/x-amz-json-1.1") -> None:
        """Close every open connection; on each new one, answer every request with ``status``
        and ``body`` (HTTP/1.1, kept alive)."""
        self.refuse()
        head = f"HTTP/1.1 {status} Refused\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self._answer = head.encode() + body
        self._refusing = False

    def refuse(self) -> None:
        """Close every open connection, and each new one as soon as it is accepted."""
        self._refusing = True
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            self._close(s)

    def close(self) -> None:
        self.refuse()
        self._close(self._listener)

    @staticmethod
    def _close(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                self._close(client)
                continue
            if self._answer is not None:
                threading.Thread(target=self._respond, args=(client, self._answer), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="proxy-pump", daemon=True).start()

    def _respond(self, client: socket.socket, response: bytes) -> None:
        with self._lock:
            self._sockets.append(client)
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buffered) < length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                buffered = buffered[length:]
                client.sendall(response)
        except OSError:
            pass
        finally:
            self._close(client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                if self._refusing:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)
