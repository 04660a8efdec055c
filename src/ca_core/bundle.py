"""The trust bundle: trust anchors, issuer chain, issuer key (and root key), design §5.

A bundle travels between stores as a mapping of logical item names to bytes
(:data:`ANCHORS` ``ca.crt``, :data:`ISSUER_CHAIN` ``issuer.crt``, :data:`ISSUER_KEY`
``issuer.key``, optional :data:`ROOT_KEY` ``root.key``); stores may keep them under other
names (``--issuer-*-filename``). Parsing and verification are pure and name the item at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from .certs import DEFAULT_CA_LIFETIME, DEFAULT_CLOCK_SKEW, generate_issuer, generate_root
from .errors import BundleError
from .keys import KeyAlgorithm, PrivateKey, load_private_key, private_key_pem, public_key_der
from .spiffe_id import SpiffeId

ANCHORS = "ca.crt"
ISSUER_CHAIN = "issuer.crt"
ISSUER_KEY = "issuer.key"
ROOT_KEY = "root.key"
REQUIRED_ITEMS = (ANCHORS, ISSUER_CHAIN, ISSUER_KEY)
ALL_ITEMS = (*REQUIRED_ITEMS, ROOT_KEY)
PUBLIC_ITEMS = (ANCHORS, ISSUER_CHAIN)
# Reserved for root/issuer rotation (a small JSON document: which root/issuer is prepared, active,
# retiring, and since when). Stores keep and return it like any item; parse_bundle ignores it.
ROTATION_STATE = "rotation.json"
STORE_ITEMS = (*ALL_ITEMS, ROTATION_STATE)


@dataclass(frozen=True)
class FileNames:
    """File names of the items (``--issuer-ca-filename`` etc.)."""

    ca: str = "ca.crt"
    issuer_certificate: str = "issuer.crt"
    issuer_key: str = "issuer.key"
    root_key: str = "root.key"
    rotation_state: str = "rotation.json"

    def mapping(self) -> dict[str, str]:
        """Logical item name → file name."""
        return {
            ANCHORS: self.ca,
            ISSUER_CHAIN: self.issuer_certificate,
            ISSUER_KEY: self.issuer_key,
            ROOT_KEY: self.root_key,
            ROTATION_STATE: self.rotation_state,
        }


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of ``cert``'s DER, lower-case hex (how anchors are named in audit
    records and in the rotation state)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def chain_not_after(chain: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> datetime:
    """When a signing chain (issuer first, its root last) stops being usable: its earliest NotAfter."""
    return min(c.not_valid_after_utc for c in chain)


def certificates_pem(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> bytes:
    """Concatenated PEM of ``certs`` in order."""
    from cryptography.hazmat.primitives.serialization import Encoding  # lazy: see keys._LAZY

    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class PublicBundle:
    """The public part of a bundle (no keys): what relying parties and the expiry check read."""

    trust_anchors: tuple[x509.Certificate, ...]
    issuer_chain: tuple[x509.Certificate, ...]

    @property
    def issuer(self) -> x509.Certificate:
        """The issuing CA certificate (first of the issuer chain)."""
        return self.issuer_chain[0]

    @cached_property
    def anchors_pem(self) -> bytes:
        """All trust anchors as one PEM blob (the ``ca.crt`` file, ``trust_chain_certificates[0]``)."""
        return certificates_pem(self.trust_anchors)

    @cached_property
    def issuer_chain_pem(self) -> bytes:
        """The issuer chain as PEM, issuer first, never containing a self-signed root."""
        return certificates_pem(self.issuer_chain)

    def anchor_for(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The trust anchor that directly issued ``cert``, or None."""
        for anchor in self.trust_anchors:
            if _directly_issued(cert, anchor):
                return anchor
        return None


@dataclass(frozen=True)
class TrustBundle(PublicBundle):
    """A complete signing bundle. Build it with :func:`parse_bundle` or :func:`generate_bundle`."""

    issuer_key: PrivateKey
    root_key: PrivateKey | None = None

    @property
    def public(self) -> PublicBundle:
        """The bundle without its keys."""
        return PublicBundle(self.trust_anchors, self.issuer_chain)

    def to_items(self) -> dict[str, bytes]:
        """Serialise: {ca.crt, issuer.crt, issuer.key[, root.key]} → PEM bytes (keys as PKCS#8)."""
        items = {
            ANCHORS: self.anchors_pem,
            ISSUER_CHAIN: self.issuer_chain_pem,
            ISSUER_KEY: private_key_pem(self.issuer_key),
        }
        if self.root_key is not None:
            items[ROOT_KEY] = private_key_pem(self.root_key)
        return items


def generate_bundle(
    trust_domain: str,
    ca_identity: SpiffeId,
    now: datetime,
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256,
    root_lifetime: timedelta = DEFAULT_CA_LIFETIME,
    issuer_lifetime: timedelta = DEFAULT_CA_LIFETIME,
    backdate: timedelta = DEFAULT_CLOCK_SKEW,
) -> TrustBundle:
    """A fresh root and issuer (design §4) for ``trust_domain``; the bundle keeps the root key.

    ca_identity: the CA's SPIFFE ID (issuer subject O); now: aware UTC datetime.
    """
    root_key = algorithm.generate()
    root = generate_root(trust_domain, root_key, now, lifetime=root_lifetime, backdate=backdate)
    issuer_key = algorithm.generate()
    issuer = generate_issuer(
        root, root_key, issuer_key, ca_identity, now, lifetime=issuer_lifetime, backdate=backdate
    )
    return TrustBundle((root,), (issuer,), issuer_key, root_key)


def parse_certificates(pem: bytes, item: str) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM blob, in order; raises BundleError naming ``item``."""
    if not pem.strip():
        raise BundleError("is empty", item=item)
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise BundleError("is not a PEM certificate (or list of certificates)", item=item) from None
    return tuple(certs)


def parse_public_bundle(items: Mapping[str, bytes], labels: Mapping[str, str] | None = None) -> PublicBundle:
    """Parse and verify the public part; raises BundleError naming the item (``labels`` maps
    logical item names to what the operator sees, e.g. file paths)."""
    label = _labeller(labels)
    for item in PUBLIC_ITEMS:
        if item not in items:
            raise BundleError("is missing", item=label(item))
    anchors = parse_certificates(items[ANCHORS], label(ANCHORS))
    chain = parse_certificates(items[ISSUER_CHAIN], label(ISSUER_CHAIN))
    chain = _strip_anchors(chain, anchors)
    public = PublicBundle(anchors, chain)
    _verify_public(public, label)
    return public


def parse_bundle(items: Mapping[str, bytes], labels: Mapping[str, str] | None = None) -> TrustBundle:
    """Parse and structurally verify a whole bundle (design §5 load rules).

    items: logical name → bytes; ``ca.crt``, ``issuer.crt`` and ``issuer.key`` are required,
    ``root.key`` optional. Checks: anchors self-signed CAs; issuer chain in order and
    verifying to an anchor; issuer key matches the issuer; root key (if any) matches an anchor.
    Validity periods are not structural and are not checked here.
    Raises BundleError whose message names the item and the problem.
    """
    label = _labeller(labels)
    missing = [label(i) for i in REQUIRED_ITEMS if i not in items]
    if missing:
        present = [label(i) for i in ALL_ITEMS if i in items]
        raise BundleError(
            f"incomplete trust bundle: missing {', '.join(missing)}"
            + (f" (present: {', '.join(present)})" if present else "")
        )
    public = parse_public_bundle(items, labels)
    issuer_key = _parse_key(items[ISSUER_KEY], label(ISSUER_KEY))
    if public_key_der(issuer_key.public_key()) != public_key_der(public.issuer.public_key()):
        raise BundleError(
            f"does not match the public key of the issuer certificate in {label(ISSUER_CHAIN)}",
            item=label(ISSUER_KEY),
        )
    root_key = None
    if ROOT_KEY in items:
        root_key = _parse_key(items[ROOT_KEY], label(ROOT_KEY))
        root_pub = public_key_der(root_key.public_key())
        if not any(public_key_der(a.public_key()) == root_pub for a in public.trust_anchors):
            raise BundleError(f"does not match any trust anchor in {label(ANCHORS)}", item=label(ROOT_KEY))
    return TrustBundle(public.trust_anchors, public.issuer_chain, issuer_key, root_key)


def _labeller(labels: Mapping[str, str] | None) -> Callable[[str], str]:
    return (lambda item: labels.get(item, item)) if labels else (lambda item: item)


def _parse_key(pem: bytes, item: str) -> PrivateKey:
    try:
        return load_private_key(pem)
    except ValueError as e:
        raise BundleError(str(e), item=item) from None


def _strip_anchors(
    chain: tuple[x509.Certificate, ...], anchors: tuple[x509.Certificate, ...]
) -> tuple[x509.Certificate, ...]:
    # Some writers append the root to issuer.crt; the issuer chain we serve must not hold it.
    while len(chain) > 1 and chain[-1] in anchors:
        chain = chain[:-1]
    return chain


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` and ``cert`` names ``issuer`` as its issuer."""
    return _directly_issued(cert, issuer)


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` has basicConstraints CA:TRUE."""
    return _is_ca(cert)


def _directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _verify_public(public: PublicBundle, label: Callable[[str], str]) -> None:
    for n, anchor in enumerate(public.trust_anchors, 1):
        where = f"certificate {n} of {len(public.trust_anchors)}"
        if anchor.subject != anchor.issuer or not _directly_issued(anchor, anchor):
            raise BundleError(f"{where} is not a self-signed root", item=label(ANCHORS))
        if not _is_ca(anchor):
            raise BundleError(f"{where} is not a CA (basicConstraints CA:TRUE missing)", item=label(ANCHORS))
    chain = public.issuer_chain
    if chain[0] in public.trust_anchors:
        raise BundleError("holds only the root; an issuer certificate is required", item=label(ISSUER_CHAIN))
    for n, cert in enumerate(chain):
        if not _is_ca(cert):
            raise BundleError(
                f"certificate {n + 1} is not a CA (basicConstraints CA:TRUE missing)",
                item=label(ISSUER_CHAIN),
            )
        if n + 1 < len(chain) and not _directly_issued(cert, chain[n + 1]):
            raise BundleError(
                f"certificate {n + 1} is not signed by certificate {n + 2}: the chain is out of order "
                "or incomplete",
                item=label(ISSUER_CHAIN),
            )
    if public.anchor_for(chain[-1]) is None:
        raise BundleError(
            f"the issuer chain does not verify to any trust anchor in {label(ANCHORS)}",
            item=label(ISSUER_CHAIN),
        )
