"""The JWKS key set (design §6): where it comes from (an https URL, a file, inline JSON) and the
cache that holds it.

The set is refetched no more often than ``min_refresh_interval``: when it is that old, and when a
token names an unknown ``kid``. A failed fetch keeps the keys already held; with no keys at all
the request gets Unavailable (fail closed). A fetch is bounded in size (MAX_JWKS_BYTES) and in
time (the request timeout for the whole answer, not only per read).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPMessage
from typing import IO, Any

import jwt

from ca_core.config import JwksSettings, JwtIssuerSettings
from ca_core.errors import ConfigError, Unavailable
from ca_core.validators.jwks import parse_key_set

from .tls_trust import trust_context

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024
FAILED_FETCH_RETRY = 5.0  # seconds before a failed fetch is tried again (capped by the minimum interval)


def _ssl_context(ca_certificate: str | None) -> ssl.SSLContext:
    return trust_context(ca_certificate, "jwks caCertificate")


@dataclass(frozen=True)
class JwksSource:
    """Where the key set comes from. kind: ``url``, ``file`` or ``inline``; ``load()`` returns the
    document's bytes (raises Unavailable for a url or file that cannot be read now)."""

    kind: str
    location: str
    inline: bytes = b""
    timeout: float = 30.0
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: JwksSettings) -> JwksSource:
        """Classify ``settings.source``; raises ConfigError for an http:// URL or a source that is
        neither an https URL, an existing file nor (base64 of) JSON."""
        src = settings.source.strip()
        timeout = settings.request_timeout.total_seconds()
        if src.lower().startswith("https://"):
            return cls("url", src, timeout=timeout, ssl_context=_ssl_context(settings.ca_certificate))
        if src.lower().startswith("http://"):
            raise ConfigError(
                "jwks source: plain http:// is refused (keys could be altered in transit); use https://"
            )
        if src.startswith("{"):
            return cls("inline", "inline JWKS", src.encode())
        if os.path.isfile(src):
            return cls("file", src, timeout=timeout)
        try:
            decoded = base64.b64decode(src, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded.lstrip().startswith(b"{"):
            return cls("inline", "inline JWKS (base64)", decoded)
        raise ConfigError(
            "jwks source: neither an https:// URL, an existing file, nor JWKS JSON (plain or base64)"
        )

    @classmethod
    def for_issuer(cls, rule: JwtIssuerSettings) -> JwksSource:
        """The source of an issuer rule (design §6.5): its ``source`` as :meth:`from_settings`
        classifies it, else OIDC discovery from its ``issuer`` (kind ``discovery``). Raises
        ConfigError."""
        settings = JwksSettings(
            rule.source or "", rule.ca_certificate, rule.min_refresh_interval, rule.request_timeout
        )
        if rule.source is not None:
            return cls.from_settings(settings)
        return cls(
            "discovery",
            rule.issuer,
            timeout=rule.request_timeout.total_seconds(),
            ssl_context=_ssl_context(rule.ca_certificate),
        )

    def load(self) -> bytes:
        """The document's bytes (at most MAX_JWKS_BYTES); raises Unavailable. For ``discovery``:
        ``<issuer>/.well-known/openid-configuration`` first, whose ``issuer`` must be the rule's
        and whose ``jwks_uri`` (https only) is then fetched, within one timeout."""
        if self.kind == "discovery":
            return self._discover()
        if self.kind == "inline":
            return self.inline
        if self.kind == "file":
            try:
                with open(self.location, "rb") as f:
                    return f.read(MAX_JWKS_BYTES + 1)[:MAX_JWKS_BYTES]
            except OSError as e:
                raise Unavailable(
                    f"JWKS file {self.location}: {e.strerror}", reason="jwks_unavailable"
                ) from None
        # Only https:// reaches here: from_settings refuses every other scheme.
        return self._get(self.location, time.monotonic() + self.timeout)

    def _get(self, url: str, deadline: float) -> bytes:
        """GET ``url`` (https), the answer complete by ``deadline`` (real monotonic seconds, whatever
        clock the cache has). Raises Unavailable."""
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.ssl_context), _HttpsOnlyRedirects()
        )
        try:
            with opener.open(request, timeout=max(0.1, deadline - time.monotonic())) as resp:
                return _read_within(resp, deadline, url)
        except urllib.error.HTTPError as e:
            raise Unavailable(f"JWKS {url} answered {e.code}", reason="jwks_unavailable") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(f"JWKS {url} unreachable: {reason}", reason="jwks_unavailable") from None

    def _discover(self) -> bytes:
        deadline = time.monotonic() + self.timeout
        where = f"{self.location.rstrip('/')}/.well-known/openid-configuration"
        try:
            document = json.loads(self._get(where, deadline))
        except (ValueError, RecursionError):
            raise Unavailable(f"OIDC discovery {where}: not JSON", reason="jwks_unavailable") from None
        if not isinstance(document, dict) or document.get("issuer") != self.location:
            raise Unavailable(
                f"OIDC discovery {where}: its issuer is not {self.location!r}", reason="jwks_unavailable"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.lower().startswith("https://"):
            raise Unavailable(
                f"OIDC discovery {where}: jwks_uri is not an https:// URL", reason="jwks_unavailable"
            )
        return self._get(jwks_uri, deadline)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another https:// URL: keys fetched in plaintext could have been
    replaced in transit, which is why an http:// source is refused in the first place."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith("https://"):
            raise urllib.error.URLError(f"redirect to a non-https URL refused ({newurl[:200]})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_within(resp: Any, deadline: float, location: str) -> bytes:
    """The body, at most MAX_JWKS_BYTES, read by chunks so that the whole fetch is bounded: the
    socket timeout bounds each read only, and a server that trickles bytes would hold the
    fetch, and every request waiting on it, for ever. Raises Unavailable."""
    body = b""
    while len(body) < MAX_JWKS_BYTES:
        if time.monotonic() > deadline:
            raise Unavailable(
                f"JWKS {location}: no complete answer within the timeout", reason="jwks_unavailable"
            )
        chunk = resp.read1(MAX_JWKS_BYTES - len(body))
        if not chunk:
            break
        body += chunk
    return body


@dataclass
class _Flight:
    """The one fetch under way (design §6.3): ``done`` is set when it ends, ``installed`` says
    whether it brought a new set; callers waiting for it give up at ``deadline`` (real monotonic
    seconds: the fetch's own timeout, and a little more)."""

    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    installed: bool = False


FLIGHT_GRACE = 1.0  # seconds a caller waits for a fetch beyond the fetch's timeout


class JwksCache:
    """The key set in force, refetched with a minimum interval (the validator's
    ``ca_core.validators.jwks.JwksKeysPort``). Thread-safe, with one fetch at a time (design
    §6.3): the lock guards the state only, never the fetch; a caller whose kid is held is answered
    from the held keys while a fetch runs, one that needs the fetch waits for it.

    clock: monotonic seconds (injected in tests); min_refresh: seconds between fetches. Raises
    ConfigError when a file or inline set holds no usable key.
    """

    def __init__(
        self, source: JwksSource, min_refresh: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.source = source
        self.min_refresh = min_refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None
        self._last_failed = False
        self._flight: _Flight | None = None
        self.last_problem = "the JWKS has not been fetched yet"
        self.fetches = 0
        if source.kind not in ("url", "discovery"):  # a file or inline set must be usable from the start
            try:
                self._install(parse_key_set(source.load(), source.location))
            except (ValueError, Unavailable) as e:
                raise ConfigError(f"jwks source: {e}") from None

    @classmethod
    def from_settings(cls, settings: JwksSettings, clock: Callable[[], float] = time.monotonic) -> JwksCache:
        """The cache over the ``--config`` JWKS options; raises ConfigError for an unusable source
        or CA certificate."""
        return cls(JwksSource.from_settings(settings), settings.min_refresh_interval.total_seconds(), clock)

    @classmethod
    def for_issuer(cls, rule: JwtIssuerSettings, clock: Callable[[], float] = time.monotonic) -> JwksCache:
        """The cache of an issuer rule's JWK Set (design §6.5); raises ConfigError."""
        return cls(JwksSource.for_issuer(rule), rule.min_refresh_interval.total_seconds(), clock)

    @property
    def location(self) -> str:
        return self.source.location

    def held(self) -> list[jwt.PyJWK]:
        """The keys held now; never fetches."""
        return self._keys

    def _install(self, keys: list[jwt.PyJWK]) -> None:
        self._keys = keys
        self._fetched_at = self._attempted_at = self._clock()
        self._last_failed = False

    def _may_fetch(self, now: float) -> bool:
        if self.source.kind == "inline":
            return False
        if self._attempted_at is None:
            return True
        # Without keys every request fails: retry a failed fetch sooner. With keys, a failing
        # source is retried only at the minimum interval, so requests do not keep paying timeouts.
        failing_without_keys = self._last_failed and not self._keys
        wait = min(self.min_refresh, FAILED_FETCH_RETRY) if failing_without_keys else self.min_refresh
        return now - self._attempted_at >= wait

    def refresh(self, *, force_stale: bool = False, wait: bool = True) -> bool:
        """Fetch now if the minimum interval allows (``force_stale``: only when the held set is at
        least that old). Returns True when a new set was installed; a failure keeps the held keys.
        While a fetch runs no other starts: the caller waits for that one (``wait``; at most its
        timeout) or, without ``wait``, returns False at once."""
        with self._lock:
            flight = self._flight
            if flight is None:
                now = self._clock()
                if not self._may_fetch(now):
                    return False
                if force_stale and self._fetched_at is not None and now - self._fetched_at < self.min_refresh:
                    return False
                self._attempted_at = now
                self.fetches += 1
                flight = self._flight = _Flight(time.monotonic() + self.source.timeout + FLIGHT_GRACE)
                lead = True
            else:
                lead = False
        if lead:
            self._fetch(flight)
        elif not wait:
            return False
        elif not flight.done.wait(max(0.0, flight.deadline - time.monotonic())):
            with self._lock:
                if self._flight is flight and not self._keys:
                    self.last_problem = f"JWKS {self.source.location}: no complete answer within the timeout"
            return False
        return flight.installed

    def _fetch(self, flight: _Flight) -> None:
        """Run ``flight`` (outside the lock) and record how it ended; every waiter is let go."""
        keys: list[jwt.PyJWK] | None = None
        problem = f"JWKS {self.source.location}: the fetch ended unexpectedly"
        try:
            keys = parse_key_set(self.source.load(), self.source.location)
        except (ValueError, Unavailable) as e:  # parse_key_set: ValueError for any unusable body
            problem = str(e)
        finally:
            with self._lock:
                if keys is not None:
                    self._install(keys)
                else:
                    self._last_failed = True
                    self.last_problem = problem
                held = len(self._keys)
                self._flight = None
            flight.installed = keys is not None
            flight.done.set()
        if keys is None:
            log.warning("JWKS refresh failed (%s); %d key(s) stay in use", problem, held)
        else:
            log.info("JWKS loaded from %s: %d key(s)", self.source.location, len(keys))

    def keys(self, kid: str | None) -> list[jwt.PyJWK]:
        """The held keys with ``kid`` (every key when None): refreshes first when the set is stale
        or ``kid`` is unknown (rate-limited). A caller whose kid is held never waits for a fetch
        another caller runs. Raises Unavailable when no key is held."""
        held = self._keys
        if not held or self._fetched_at is None:
            self.refresh()
        else:
            self.refresh(force_stale=True, wait=kid is not None and not _has(held, kid))
        held = self._keys
        if not held:
            raise Unavailable(f"no JWKS keys available: {self.last_problem}", reason="jwks_unavailable")
        if kid is not None and not _has(held, kid):
            self.refresh()
            held = self._keys
        return list(held) if kid is None else [k for k in held if k.key_id == kid]


def _has(keys: list[jwt.PyJWK], kid: str) -> bool:
    return any(k.key_id == kid for k in keys)
