"""The ``BundleStore`` port and the load-or-store rule (SPEC §5)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..bundle import TrustBundle, parse_bundle
from ..errors import BundleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredBundle:
    """What a store holds: ``items`` (logical item name → bytes, only those present) and an
    opaque ``version`` token that changes whenever any item changes."""

    items: Mapping[str, bytes]
    version: str


class BundleStore(Protocol):
    """Port for trust-bundle persistence. Adapters never judge content: the core parses it.

    Errors: raise ``Unavailable`` when the backend cannot be reached, ``BundleError`` when the
    stored data cannot even be read as items.
    """

    description: str  # for operators' messages, e.g. "file://.sentry/credentials"

    def labels(self) -> Mapping[str, str]:
        """Logical item name → what the operator sees (file path, object key, Secret key)."""
        ...

    def load(self) -> StoredBundle | None:
        """Every item present, or None when the store holds no item at all."""
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


def load_or_create(store: BundleStore, generate: Callable[[], TrustBundle]) -> tuple[TrustBundle, str, bool]:
    """Load the store's bundle, or generate and conditionally create one when it is empty.

    Returns (bundle, version, created). A partial, corrupt or mismatched bundle raises
    BundleError naming the item and is never replaced. If the conditional create loses a race
    with another replica, the winner's bundle is loaded.
    """
    stored = store.load()
    if stored is None:
        bundle = generate()
        if store.create(bundle.to_items()):
            stored = store.load()
            if stored is None:
                raise BundleError(f"{store.description}: the bundle just written cannot be read back")
            return bundle, stored.version, True
        log.info("another replica created the trust bundle in %s first; loading it", store.description)
        stored = store.load()
        if stored is None:
            raise BundleError(f"{store.description}: create reported a conflict but the store is empty")
    try:
        bundle = parse_bundle(stored.items, store.labels())
    except BundleError as e:
        raise BundleError(
            f"refusing to start: the trust bundle in {store.description} is unusable: {e}. "
            "Nothing was changed. Repair or import the bundle, or regenerate it explicitly "
            "(keeping a backup) if you mean to replace the CA."
        ) from None
    return bundle, stored.version, False
