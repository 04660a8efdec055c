"""Real keys, CSRs and bundles for the tests, the directory helpers around a file store, and
pyca/cryptography's verifier as a client would run it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from adapters.stores import FileBundleStore
from ca_core.bundle import ROTATION_STATE, TrustBundle, fingerprint, generate_bundle
from ca_core.certs import generate_issuer, generate_root
from ca_core.jwt_svid import JwtAlgorithm, new_jwt_items
from ca_core.keys import KeyAlgorithm
from ca_core.rotation import codec
from ca_core.rotation.state import RemovedRoot, RotationState, active_root
from ca_core.service import SigningPolicy
from ca_core.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def make_key(kind: str = "p256"):
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    raise ValueError(kind)


def make_csr(key=None, subject: str = "ignored") -> bytes:
    """A PEM CSR for ``key`` (P-256 by default), with a subject and SANs the CA must ignore."""
    key = key or make_key()
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), critical=False)
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def make_bundle(
    now: datetime = NOW,
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256,
    root_lifetime: timedelta = timedelta(days=365),
    issuer_lifetime: timedelta = timedelta(days=365),
    trust_domain: str = "localhost",
    jwt: JwtAlgorithm | None = None,
) -> TrustBundle:
    """A fresh bundle; ``jwt``: with a JWT key of that algorithm and its JWK Set (default kid)."""
    policy = SigningPolicy(trust_domain=trust_domain)
    bundle = generate_bundle(
        trust_domain,
        policy.ca_identity,
        now,
        algorithm=algorithm,
        root_lifetime=root_lifetime,
        issuer_lifetime=issuer_lifetime,
    )
    return bundle if jwt is None else bundle.with_jwt(*new_jwt_items(jwt))


def bundle_with_issuer_window(
    issuer_not_before: datetime, issuer_not_after: datetime, root_now: datetime
) -> TrustBundle:
    """A root valid around ``root_now`` (±1 year) and an issuer valid exactly in the given window."""
    root_key = make_key()
    root = generate_root(
        "localhost", root_key, root_now - timedelta(days=365), lifetime=timedelta(days=730 + 365)
    )
    issuer_key = make_key()
    issuer = generate_issuer(
        root,
        root_key,
        issuer_key,
        SpiffeId("localhost", "default", "dapr-sentry"),
        issuer_not_before,
        lifetime=issuer_not_after - issuer_not_before,
        backdate=timedelta(0),
    )
    return TrustBundle((root,), (issuer,), issuer_key, root_key)


def reissued(bundle: TrustBundle, now: datetime, lifetime: timedelta = timedelta(days=200)) -> TrustBundle:
    """The same root with a new issuer (what an operator's issuer renewal imports)."""
    key = make_key()
    issuer = generate_issuer(
        bundle.trust_anchors[0],
        bundle.root_key,
        key,
        SpiffeId("localhost", "default", "dapr-sentry"),
        now,
        lifetime=lifetime,
    )
    return TrustBundle(bundle.trust_anchors, (issuer,), key, bundle.root_key)


def write_bundle(directory: Path, bundle: TrustBundle) -> None:
    assert FileBundleStore(directory).create(bundle.to_items())


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes, to prove a refused start touched nothing."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


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
