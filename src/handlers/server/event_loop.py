"""The asyncio event loop the gRPC server runs on (design §8.7), in a thread of its own.

The CA's lifecycle, upkeep and HTTP listeners are threads; the gRPC server is ``grpc.aio``, whose
calls are coroutines on one event loop. A call waiting for its request message, a TLS handshake
in progress and an idle connection hold no thread: they are state in gRPC core and, for a call,
a suspended coroutine. ``LoopThread`` owns that loop and lets the other threads run coroutines on
it and wait for them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

START_TIMEOUT = 10.0  # seconds for the loop thread to come up


class LoopThread:
    """One asyncio event loop running in a daemon thread named ``name``.

    ``submit(coro)`` schedules a coroutine from any other thread and returns its
    ``concurrent.futures.Future``; ``run(coro)`` also waits for the result (raising what the
    coroutine raised); ``close()`` stops the loop after the coroutines submitted so far have had
    a chance to finish (pending tasks are cancelled) and joins the thread."""

    def __init__(self, name: str = "grpc-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (started on first use)."""
        with self._lock:
            return self._loop or self._start()

    def _start(self) -> asyncio.AbstractEventLoop:
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Stopped: cancel what is left, let it unwind, then close.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=main, name=self._name, daemon=True)
        thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError(f"the {self._name} event loop did not start")
        self._loop, self._thread = loop, thread
        return loop

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this loop's thread (where ``run`` would deadlock)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; returns its future (thread-safe)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and return its result; raises what it raised, or
        TimeoutError after ``timeout`` seconds. Never call it from the loop's own thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop")
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        """Stop the loop and join its thread (idempotent); it starts anew on next use."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
