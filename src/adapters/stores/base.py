"""The ``BundleStore`` port and the load-or-store rule (design §5)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ca_core.bundle import STORE_ITEMS, TrustBundle, parse_bundle
from ca_core.errors import BundleError, Unavailable

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBundle:
    """What a store holds: ``items`` (logical item name → bytes, only those present) and an
    opaque ``version`` token that changes whenever any item changes."""

    items: Mapping[str, bytes]
    version: str


class BundleStore(Protocol):
    """Port for trust-bundle persistence. Adapters never judge content: the core parses it.

    Errors: raise ``Unavailable`` when the backend cannot be used, with ``reason``
    ``store_unreachable`` (network, timeouts, throttling after the SDK's own retries: worth
    retrying), ``store_denied`` (credentials or permissions) or ``store_misconfigured`` (no such
    bucket, an ARN that does not exist); ``BundleError`` when the stored data cannot even be read
    as items. Never report "empty" for a read that failed: that would make the CA generate a
    new root.

    Items are the logical names of ``bundle.STORE_ITEMS`` (``ca.crt``, ``issuer.crt``,
    ``issuer.key``, optional ``root.key`` and ``rotation.json``). Adapters: ``file://DIR``,
    ``s3://BUCKET/KEY``, ``secretsmanager://NAME-OR-ARN``, ``kubernetes://NAMESPACE/SECRET``.
    """

    description: str  # for operators' messages, e.g. "file://.sentry/credentials"

    def labels(self) -> Mapping[str, str]:
        """Logical item name → what the operator sees (file path, object key, Secret key)."""
        ...

    def load(self) -> StoredBundle | None:
        """Every item present, or None when the store holds no item at all. Never writes: a
        bundle that parses may still be refused by the CA (trust continuity, design §5)."""
        ...

    def publish_public(self, stored: StoredBundle) -> None:
        """Make the separate public part (anchors and issuer chain) mirror ``stored``, a bundle
        the CA has accepted, but only while the store still holds that version (re-checked just
        before the write, so an older bundle never overwrites a newer one's public part).
        Failures are logged, never raised: the public part is a derived copy. No-op for stores
        without a separate public part (files)."""
        ...

    def load_public(self) -> StoredBundle | None:
        """Only the public items (``ca.crt``, ``issuer.crt``), readable without key access."""
        ...

    def create(self, items: Mapping[str, bytes]) -> bool:
        """Write ``items`` only if the store is empty; False (nothing written) if it is not."""
        ...

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        """Replace the bundle only if its version is still ``expected_version``; False otherwise."""
        ...

    def replace_version(self, items: Mapping[str, bytes], expected_version: str) -> str | None:
        """:meth:`replace`, answering the new version token on success (what ``load()`` reports
        for ``items`` until the next write, so the writer can put ``StoredBundle(items, token)``
        in force without reading the store back), None when nothing was written."""
        ...

    def load_accepted(self) -> StoredBundle | None:
        """The store's record of the last bundle accepted: its public items (design §5.5; the
        version is the record's), or None when there is none. Written with every write through
        this port (so a deliberate replacement records itself: the override the continuity rule
        honours) and repaired by ``publish_public`` only from a bundle a CA accepted, never from
        one it refused. S3, Secrets Manager, Kubernetes: the public part; file: the held marker
        ``.sentryca-held``, which carries it. The same record is evidence for ``held_before``.
        Never writes. Raises Unavailable; BundleError for a record that cannot be read."""
        ...

    def find_accepted(self, record: Mapping[str, bytes]) -> StoredBundle | None:
        """The newest earlier version this store still keeps (S3 object versions, Secrets
        Manager versions; file and Kubernetes keep none) whose public part is ``record``, with
        its own version token, or None. The caller verifies it (the store never judges
        content). Never writes. Raises Unavailable."""
        ...

    def held_before(self) -> str | None:
        """Evidence that this store once held a trust bundle, as a sentence for the operator
        (what was found, and where), or None when nothing shows it ever did. Asked when
        ``load()`` found the store empty, to tell a first start from a store that lost its
        bundle (design §5.2): file, a marker written beside the bundle; S3, earlier object
        versions or a delete marker; Secrets Manager, the secret (or its public part) still
        there, scheduled for deletion or without a current value; Kubernetes, the annotations
        of the Secret and of its public ConfigMap. Never writes. Raises Unavailable when the
        evidence cannot be read (never None for a failed read: that could lead to a new CA)."""
        ...


RETRYABLE_REASONS = frozenset({"store_unreachable"})


@dataclass(frozen=True)
class Retry:
    """Bounded retries with exponential backoff and full jitter for a store that cannot be
    reached (``Unavailable`` with a reason in RETRYABLE_REASONS; denied or misconfigured stores
    fail at once). attempts: total tries (>= 1); delays in seconds: attempt n waits
    ``random() * min(max_delay, base_delay * 2**n)``. ``sleep`` and ``random`` are injected.
    """

    sleep: Callable[[float], None]
    random: Callable[[], float]
    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0

    def run(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except Unavailable as e:
                if e.reason not in RETRYABLE_REASONS or attempt + 1 >= self.attempts:
                    if e.reason in RETRYABLE_REASONS:
                        raise Unavailable(
                            f"{e} (gave up after {self.attempts} attempts to {what})", reason=e.reason
                        ) from None
                    raise
                delay = self.random() * min(self.max_delay, self.base_delay * 2**attempt)
                log.warning("cannot %s (attempt %d of %d): %s", what, attempt + 1, self.attempts, e)
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


NO_RETRY = Retry(sleep=lambda _s: None, random=lambda: 0.0, attempts=1)


# Decides whether a bundle may be generated in an empty store, given the store's evidence of
# having held one (``BundleStore.held_before``); raises BundleError to refuse (the rule:
# ``ca_core.policy.may_generate``, applied by ``handlers.composition.load_bundle``).
Admit = Callable[[str | None], None]


def load_or_create(
    store: BundleStore,
    generate: Callable[[], TrustBundle],
    retry: Retry = NO_RETRY,
    *,
    publish: bool = True,
    admit: Admit | None = None,
) -> tuple[TrustBundle, str, bool]:
    """Load the store's bundle, or generate and conditionally create one when it is empty.

    Returns (bundle, version, created). A partial, corrupt or mismatched bundle (its rotation
    state included, ``rotation.codec.parse_state``) raises BundleError naming the item and is never
    replaced. If the conditional create loses a race
    with another replica, the winner's bundle is loaded. A store that cannot be read raises
    Unavailable (after ``retry``): a failed read never leads to a new CA.

    publish: repair the store's public part from a loaded bundle (``publish_public``). True at
    a first start, where there is no current root, so loading is acceptance; a running CA
    passes False and publishes only after its trust-continuity check accepted the bundle
    (:func:`load_or_create_stored`).

    admit: asked before generating, with the store's evidence of having held a bundle
    (``store.held_before()``); it raises BundleError to refuse, and nothing is written. None:
    no check (callers that decide otherwise, e.g. tests of the stores).
    """
    bundle, stored, created = load_or_create_stored(store, generate, retry, admit=admit)
    if publish and not created:
        store.publish_public(stored)
    return bundle, stored.version, created


def load_or_create_stored(
    store: BundleStore,
    generate: Callable[[], TrustBundle],
    retry: Retry = NO_RETRY,
    *,
    admit: Admit | None = None,
) -> tuple[TrustBundle, StoredBundle, bool]:
    """:func:`load_or_create` without publishing: returns (bundle, stored, created), ``stored``
    being the bundle as read, for a later ``store.publish_public(stored)`` once accepted. A
    created bundle's public part is already written by ``create``."""
    stored = retry.run(f"read the trust bundle in {store.description}", store.load)
    if stored is None and admit is not None:
        evidence = retry.run(
            f"check whether {store.description} held a trust bundle before", store.held_before
        )
        try:
            admit(evidence)
        except BundleError:
            # Another replica may have created the bundle since the read (its evidence is then
            # the bundle itself): load that one; refuse only a store that is still empty.
            stored = retry.run(f"read the trust bundle in {store.description}", store.load)
            if stored is None:
                raise
    if stored is None:
        bundle = generate()
        items = bundle.to_items()
        if retry.run(f"create the trust bundle in {store.description}", lambda: store.create(items)):
            stored = retry.run(f"read back the trust bundle in {store.description}", store.load)
            if stored is None:
                raise BundleError(f"{store.description}: the bundle just written cannot be read back")
            return bundle, stored, True
        log.info("another replica created the trust bundle in %s first; loading it", store.description)
        stored = retry.run(f"read the trust bundle in {store.description}", store.load)
        if stored is None:
            try:
                found = store.held_before()
            except (BundleError, Unavailable):
                found = None
            raise BundleError(
                f"refusing to start: {store.description} reports that a bundle exists but none can be "
                f"read ({found or 'e.g. a secret without a current value'}); nothing was changed"
            )
    return parse_stored(store, stored), stored, False


def parse_stored(store: BundleStore, stored: StoredBundle) -> TrustBundle:
    """The bundle of ``stored`` (content read from, or just written to, ``store``), its rotation
    state checked too. No I/O but KMS's (once per process, for a root key in KMS). Raises
    BundleError naming the item, with the advice of a refused start, for a partial, corrupt or
    mismatched bundle or a rotation state that cannot be acted on."""
    from ..kms import open_key as open_kms_key  # a root key in KMS (root.kms): opened once per process

    try:
        bundle = parse_bundle(stored.items, store.labels(), open_key=open_kms_key)
        from ca_core.rotation.codec import parse_state  # here: the expiry function never loads a full bundle

        # a rotation state that cannot be acted on
        parse_state(stored.items, bundle, store.labels(), open_key=open_kms_key)
    except BundleError as e:
        raise BundleError(
            f"refusing to start: the trust bundle in {store.description} is unusable: {e}. "
            "Nothing was changed. Repair or import the bundle, or regenerate it explicitly "
            "(keeping a backup) if you mean to replace the CA."
        ) from None
    return bundle


def encode_document(items: Mapping[str, bytes]) -> str:
    """The single-document form of a bundle (S3 object, Secrets Manager secret string): a JSON
    object, item name → PEM text, keys sorted. Raises BundleError for an item that is not text."""
    try:
        return json.dumps({k: items[k].decode("ascii") for k in sorted(items)}, indent=1) + "\n"
    except UnicodeDecodeError as e:
        raise BundleError(f"item is not ASCII text: {e}") from None


def decode_document(text: str | bytes, where: str) -> dict[str, bytes]:
    """Parse :func:`encode_document` output; raises BundleError naming ``where`` for anything
    else (not JSON, not an object, non-string values, unknown item names)."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("is not a JSON document of bundle items", item=where) from None
    if not isinstance(doc, dict):
        raise BundleError("is not a JSON object of bundle items", item=where)
    unknown = sorted(k for k in doc if k not in STORE_ITEMS)
    if unknown:
        raise BundleError(
            f"holds unknown items {', '.join(map(repr, unknown))} (known: {', '.join(STORE_ITEMS)})",
            item=where,
        )
    bad = sorted(k for k, v in doc.items() if not isinstance(v, str))
    if bad:
        raise BundleError(f"items {', '.join(map(repr, bad))} are not text", item=where)
    return {k: v.encode() for k, v in doc.items()}
