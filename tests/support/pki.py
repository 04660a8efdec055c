"""Real keys, CSRs, bundles and certificate checks for the tests."""

from __future__ import annotations

from datetime import timedelta

from conftest import make_bundle
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ca_core.bundle import ROTATION_STATE, TrustBundle, fingerprint
from ca_core.rotation import codec
from ca_core.rotation.state import RemovedRoot, RotationState, active_root


def verifies(leaf: x509.Certificate, chain: list[x509.Certificate], anchors_pem: bytes, at) -> bool:
    """pyca/cryptography's client verifier: ``leaf`` with ``chain`` against ``anchors_pem`` at ``at``."""
    store = Store(x509.load_pem_x509_certificates(anchors_pem))
    verifier = PolicyBuilder().store(store).time(at).build_client_verifier()
    try:
        verifier.verify(leaf, chain)
    except VerificationError:
        return False
    return True


# Claims an unrelated bundle's state can make about the current root: (reason, when its own
# root became active relative to the removal; None: no active record). None of them may count.
CRAFTED_CLAIMS = [("pruned", timedelta(0)), ("emergency", None), ("emergency", -timedelta(hours=1))]


def crafted_items(current: TrustBundle, now, reason: str, active_since) -> dict[str, bytes]:
    """An unrelated bundle whose rotation state lists ``current``'s active root as removed."""
    other = make_bundle(now)
    root = active_root(current)
    removed = RemovedRoot(fingerprint(root), root.subject.rfc4514_string(), now, reason)
    since = None if active_since is None else now + active_since
    state = RotationState(root_since=since, removed=(removed,))
    return {**other.to_items(), ROTATION_STATE: codec.encode_state(state, other)}
