"""Serverless federation (design §9.9): keep the OIDC discovery document and the JWKS published in
their bucket equal to the JWKS of the bundle in force, in a thread of its own so that signing
never waits on it.

At start the bucket is read and written where it differs; then the JWKS in force is looked at
every CHECK_INTERVAL seconds, and at once after the CA put a new state in force (:meth:`notify`),
and published when it changed. A failure is logged (``event=oidc_publish_failed``,
``destination``: the bucket and prefix) and retried, the delay doubling from RETRY_FIRST up to
RETRY_MAX seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from adapters.oidc_federation import S3DocumentPublisher
from ca_core import oidc
from ca_core.config import Config
from ca_core.errors import CAError
from ca_core.rotation.state import FEDERATION_DELAY

log = logging.getLogger("sentryca")

CHECK_INTERVAL = 10.0  # seconds between two looks at the JWKS in force
RETRY_FIRST = 5.0  # seconds before the first retry of a failed publication
RETRY_MAX = FEDERATION_DELAY.total_seconds()  # what a JWT key's publish period allows for
STOP_WAIT = 2.0  # seconds a stop waits for a publication under way


def federation_settings(cfg: Config) -> tuple[str, str, str] | None:
    """(bucket, prefix, provider URL) of ``cfg``, or None when it publishes nothing."""
    if cfg.oidc_federation_bucket is None or cfg.oidc_federation_provider_url is None:
        return None
    return (cfg.oidc_federation_bucket, cfg.oidc_federation_prefix, cfg.oidc_federation_provider_url)


class Federation:
    """Publishes the documents of ``provider_url`` (the issuer of the CA's JWT-SVIDs) through
    ``publisher`` whenever ``jwks()`` (the JWKS document in force, None: none) changes."""

    def __init__(
        self,
        publisher: S3DocumentPublisher,
        provider_url: str,
        jwks: Callable[[], bytes | None],
        *,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.publisher = publisher
        self.provider_url = provider_url
        self._jwks = jwks
        self._interval = interval
        self._published: dict[str, bytes] | None = None  # what the bucket holds, as last written
        self._failures = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._said_none = False

    @classmethod
    def of(cls, cfg: Config, jwks: Callable[[], bytes | None]) -> Federation | None:
        """The publisher ``cfg`` configures, or None."""
        settings = federation_settings(cfg)
        if settings is None:
            return None
        bucket, prefix, url = settings
        return cls(S3DocumentPublisher(bucket, prefix), url, jwks)

    @property
    def failures(self) -> int:
        """Publications failed in a row (0: the last one succeeded, or none was needed)."""
        return self._failures

    def sync(self) -> bool:
        """Publish now if the JWKS in force is not what was last published. Returns False when
        that failed (logged), True otherwise (published, or nothing to publish)."""
        jwks = self._jwks()
        if jwks is None:
            if not self._said_none:
                log.info("OIDC federation: the trust bundle has no JWKS yet; nothing to publish")
                self._said_none = True
            return True
        self._said_none = False
        try:
            documents = oidc.issuer_documents(self.provider_url, jwks)
            if documents == self._published:
                return True
            written = self.publisher.publish(documents)
        except CAError as e:
            self._failures += 1
            log.warning(
                "OIDC federation: cannot publish to %s (attempt %d; retried): %s",
                self.publisher.description,
                self._failures,
                e,
                extra={"event": "oidc_publish_failed", "destination": self.publisher.description},
            )
            return False
        self._published, self._failures = documents, 0
        if written:
            log.info("OIDC federation: published %s to %s", ", ".join(written), self.publisher.description)
        return True

    def start(self) -> Federation:
        self._thread = threading.Thread(target=self._run, name="oidc-federation", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """Look at the JWKS in force now (the CA put a new state in force)."""
        self._wake.set()

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Stop the thread: returns once it ended, or after ``wait`` seconds while a publication
        is under way (the daemon thread then ends after it, bounded by the SDK's timeouts), so
        that a stop or restart of the CA never waits on S3."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                ok = self.sync()
            except Exception:  # the thread must outlive a defect: logged, retried
                log.exception("OIDC federation: publication failed")
                self._failures += 1
                ok = False
            delay = self._interval if ok else min(RETRY_MAX, RETRY_FIRST * 2 ** (self._failures - 1))
            self._wake.wait(delay)
            self._wake.clear()
