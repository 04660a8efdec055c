"""The trust bundle: trust anchors, issuer chain, issuer key (and root key), design §5.

A bundle travels between stores as a mapping of logical item names to bytes
(:data:`ANCHORS` ``ca.crt``, :data:`ISSUER_CHAIN` ``issuer.crt``, :data:`ISSUER_KEY`
``issuer.key`` or, for an issuer key held in KMS, its reference :data:`ISSUER_KEY_REF`
``issuer.kms``, optional :data:`ROOT_KEY` ``root.key`` or, for a root key held in KMS, its
reference :data:`ROOT_KEY_REF` ``root.kms`` (design §5.18), and the JWT items :data:`JWT_KEY`
``jwt.key`` and :data:`JWKS` ``jwks.json``, Dapr's names); stores may keep them under other
names (``--issuer-*-filename``). Parsing and verification are pure and name the item at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from .certs import DEFAULT_CA_LIFETIME, DEFAULT_CLOCK_SKEW, generate_issuer, generate_root
from .errors import BundleError
from .keys import (
    KeyAlgorithm,
    KeyOpener,
    PrivateKey,
    key_uri_of,
    load_private_key,
    private_key_pem,
    public_key_der,
)
from .spiffe_id import SpiffeId

ANCHORS = "ca.crt"
ISSUER_CHAIN = "issuer.crt"
ISSUER_KEY = "issuer.key"
ROOT_KEY = "root.key"
# The root key's reference when KMS holds it (``kms://<key ARN>``, one line): never with root.key.
ROOT_KEY_REF = "root.kms"
# The issuer key's reference when KMS holds it (one line, design §5.18): never with issuer.key.
ISSUER_KEY_REF = "issuer.kms"
# The JWT-SVID signing key (PKCS#8) and the JWK Set publishing it (design §5.1): both or neither.
JWT_KEY = "jwt.key"
JWKS = "jwks.json"
REQUIRED_ITEMS = (ANCHORS, ISSUER_CHAIN, ISSUER_KEY)
JWT_ITEMS = (JWT_KEY, JWKS)
ALL_ITEMS = (*REQUIRED_ITEMS, ISSUER_KEY_REF, ROOT_KEY, ROOT_KEY_REF, *JWT_ITEMS)
KEY_ITEMS = (ROOT_KEY, ROOT_KEY_REF, ISSUER_KEY, ISSUER_KEY_REF, JWT_KEY)  # keys and key references
REQUIRED_PUBLIC_ITEMS = (ANCHORS, ISSUER_CHAIN)
PUBLIC_ITEMS = (*REQUIRED_PUBLIC_ITEMS, JWKS)
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
    issuer_key_ref: str = ISSUER_KEY_REF
    root_key: str = "root.key"
    root_key_ref: str = ROOT_KEY_REF
    rotation_state: str = "rotation.json"
    jwt_key: str = JWT_KEY
    jwks: str = JWKS

    def mapping(self) -> dict[str, str]:
        """Logical item name → file name."""
        return {
            ANCHORS: self.ca,
            ISSUER_CHAIN: self.issuer_certificate,
            ISSUER_KEY: self.issuer_key,
            ISSUER_KEY_REF: self.issuer_key_ref,
            ROOT_KEY: self.root_key,
            ROOT_KEY_REF: self.root_key_ref,
            ROTATION_STATE: self.rotation_state,
            JWT_KEY: self.jwt_key,
            JWKS: self.jwks,
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
    """The public part of a bundle (no keys): what relying parties and the expiry check read.

    jwks: the ``jwks.json`` document as stored (the JWK Set verifiers of JWT-SVIDs read), or None
    when the bundle has no JWT key.
    """

    trust_anchors: tuple[x509.Certificate, ...]
    issuer_chain: tuple[x509.Certificate, ...]
    jwks: bytes | None = field(default=None, kw_only=True)

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
    """A complete signing bundle. Build it with :func:`parse_bundle` or :func:`generate_bundle`.

    jwt_key: the JWT-SVID signing key, published in ``jwks`` (both set, or both None).
    root_key_uri: where the root key lives when a service holds it (``kms://<key ARN>``, stored
    as ``root.kms``); set from a :class:`~.keys.RemoteKey` root key, or kept from a bundle parsed
    without a key opener (``root_key`` None then: the bundle round-trips, but cannot sign issuers).
    issuer_key may be a :class:`~.keys.RemoteKey` too (an issuer key in KMS): it is then stored
    as its reference, ``issuer.kms``, and every leaf is signed by its service.
    """

    issuer_key: PrivateKey
    root_key: PrivateKey | None = None
    jwt_key: PrivateKey | None = field(default=None, kw_only=True)
    root_key_uri: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        uri = key_uri_of(self.root_key)
        if uri is not None:
            object.__setattr__(self, "root_key_uri", uri)

    @property
    def issuer_key_uri(self) -> str | None:
        """Where the issuer key lives when a service holds it (``kms://<key ARN>``), else None."""
        return key_uri_of(self.issuer_key)

    @property
    def public(self) -> PublicBundle:
        """The bundle without its keys (the JWK Set stays: it is public)."""
        return PublicBundle(self.trust_anchors, self.issuer_chain, jwks=self.jwks)

    def to_items(self) -> dict[str, bytes]:
        """Serialise: {ca.crt, issuer.crt, issuer.key | issuer.kms[, root.key | root.kms][, jwt.key,
        jwks.json]} → bytes (PEM, keys as PKCS#8; a KMS key as its reference, never key material;
        the JWK Set as stored)."""
        items = {ANCHORS: self.anchors_pem, ISSUER_CHAIN: self.issuer_chain_pem}
        if (issuer_uri := self.issuer_key_uri) is not None:
            items[ISSUER_KEY_REF] = issuer_uri.encode("ascii") + b"\n"
        else:
            items[ISSUER_KEY] = private_key_pem(self.issuer_key)
        if self.root_key_uri is not None:
            items[ROOT_KEY_REF] = self.root_key_uri.encode("ascii") + b"\n"
        elif self.root_key is not None:
            items[ROOT_KEY] = private_key_pem(self.root_key)
        if self.jwt_key is not None and self.jwks is not None:
            items[JWT_KEY] = private_key_pem(self.jwt_key)
            items[JWKS] = self.jwks
        return items

    def with_jwt(self, jwt_key: PrivateKey, jwks: bytes) -> TrustBundle:
        """This bundle with a JWT key and its JWK Set (e.g. added at a start with JWT enabled)."""
        return replace(self, jwt_key=jwt_key, jwks=jwks)

    def with_jwt_of(self, other: TrustBundle) -> TrustBundle:
        """This bundle carrying ``other``'s JWT items (X.509 rotation keeps the JWT key)."""
        return replace(self, jwt_key=other.jwt_key, jwks=other.jwks)


def generate_bundle(
    trust_domain: str,
    ca_identity: SpiffeId,
    now: datetime,
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256,
    root_lifetime: timedelta = DEFAULT_CA_LIFETIME,
    issuer_lifetime: timedelta = DEFAULT_CA_LIFETIME,
    backdate: timedelta = DEFAULT_CLOCK_SKEW,
    root_key: PrivateKey | None = None,
    issuer_key: PrivateKey | None = None,
) -> TrustBundle:
    """A fresh root and issuer (design §4) for ``trust_domain``; the bundle keeps the root key.

    ca_identity: the CA's SPIFFE ID (issuer subject O); now: aware UTC datetime; root_key,
    issuer_key: the root's and the issuer's key when the caller supplies them (KMS keys, design
    §5.18), else each is generated, of ``algorithm``.
    """
    root_key = root_key if root_key is not None else algorithm.generate()
    root = generate_root(trust_domain, root_key, now, lifetime=root_lifetime, backdate=backdate)
    issuer_key = issuer_key if issuer_key is not None else algorithm.generate()
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
    for item in REQUIRED_PUBLIC_ITEMS:
        if item not in items:
            raise BundleError("is missing", item=label(item))
    anchors = parse_certificates(items[ANCHORS], label(ANCHORS))
    chain = parse_certificates(items[ISSUER_CHAIN], label(ISSUER_CHAIN))
    chain = _strip_anchors(chain, anchors)
    jwks = items.get(JWKS)
    if jwks is not None:
        from .jwt_svid import parse_jwks

        parse_jwks(jwks, label(JWKS))
    public = PublicBundle(anchors, chain, jwks=jwks)
    _verify_public(public, label)
    return public


def parse_bundle(
    items: Mapping[str, bytes],
    labels: Mapping[str, str] | None = None,
    *,
    open_key: KeyOpener | None = None,
) -> TrustBundle:
    """Parse and structurally verify a whole bundle (design §5 load rules).

    items: logical name → bytes; ``ca.crt``, ``issuer.crt`` and ``issuer.key`` or ``issuer.kms``
    (not both) are required, ``root.key`` or ``root.kms`` optional (not both), ``jwt.key`` and
    ``jwks.json`` optional but only together. ``open_key`` opens a ``root.kms`` or ``issuer.kms``
    reference as a signing key (the adapter's; it may raise Unavailable); without it a
    ``root.kms`` reference is kept and ``root_key`` is None, and an ``issuer.kms`` one is a
    BundleError (a bundle cannot be used without its issuer key). Checks:
    anchors self-signed CAs; issuer chain in order and verifying to an anchor; issuer key matches
    the issuer; root key (if any) matches an anchor; the JWK Set (if any) publishes the JWT key.
    Validity periods are not structural and are not checked here.
    Raises BundleError whose message names the item and the problem.
    """
    label = _labeller(labels)
    missing = [
        label(i)
        for i in REQUIRED_ITEMS
        if i not in items and not (i == ISSUER_KEY and ISSUER_KEY_REF in items)
    ]
    if missing:
        present = [label(i) for i in ALL_ITEMS if i in items]
        raise BundleError(
            f"incomplete trust bundle: missing {', '.join(missing)}"
            + (f" (present: {', '.join(present)})" if present else "")
        )
    public = parse_public_bundle(items, labels)
    issuer_key = _parse_issuer_key(items, label, open_key)
    if public_key_der(issuer_key.public_key()) != public_key_der(public.issuer.public_key()):
        raise BundleError(
            f"does not match the public key of the issuer certificate in {label(ISSUER_CHAIN)}",
            item=label(ISSUER_KEY if ISSUER_KEY in items else ISSUER_KEY_REF),
        )
    root_key, root_key_uri = None, None
    if ROOT_KEY in items and ROOT_KEY_REF in items:
        raise BundleError(
            f"is present with {label(ROOT_KEY)}: a root key is either held (root.key) or in KMS, not both",
            item=label(ROOT_KEY_REF),
        )
    if ROOT_KEY in items:
        root_key = _parse_key(items[ROOT_KEY], label(ROOT_KEY))
    elif ROOT_KEY_REF in items:
        root_key_uri = parse_key_ref(items[ROOT_KEY_REF], label(ROOT_KEY_REF))
        root_key = open_key(root_key_uri) if open_key is not None else None
    if root_key is not None:
        root_pub = public_key_der(root_key.public_key())
        if not any(public_key_der(a.public_key()) == root_pub for a in public.trust_anchors):
            item = label(ROOT_KEY if root_key_uri is None else ROOT_KEY_REF)
            raise BundleError(f"does not match any trust anchor in {label(ANCHORS)}", item=item)
    jwt_key = _parse_jwt_key(items, public, label)
    return TrustBundle(
        public.trust_anchors,
        public.issuer_chain,
        issuer_key,
        root_key,
        jwt_key=jwt_key,
        jwks=public.jwks,
        root_key_uri=root_key_uri,
    )


def _parse_issuer_key(
    items: Mapping[str, bytes], label: Callable[[str], str], open_key: KeyOpener | None
) -> PrivateKey:
    if ISSUER_KEY not in items:
        uri = parse_key_ref(items[ISSUER_KEY_REF], label(ISSUER_KEY_REF))
        if open_key is None:
            raise BundleError(f"names the issuer key {uri}: opening it needs KMS", item=label(ISSUER_KEY_REF))
        return open_key(uri)
    if ISSUER_KEY_REF in items:
        raise BundleError(
            f"is present with {label(ISSUER_KEY)}: an issuer key is either held (issuer.key) or in KMS, "
            "not both",
            item=label(ISSUER_KEY_REF),
        )
    return _parse_key(items[ISSUER_KEY], label(ISSUER_KEY))


def parse_key_ref(raw: bytes, item: str) -> str:
    """A stored key reference (``root.kms``, ``issuer.kms``: one line, ``kms://...``); raises
    BundleError naming ``item`` for anything else."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BundleError("is not an ASCII key reference (kms://...)", item=item) from None
    if not text.startswith("kms://") or len(text) <= len("kms://") or any(c.isspace() for c in text):
        raise BundleError("is not a key reference: one line, kms://<key ARN>", item=item)
    return text


def _parse_jwt_key(
    items: Mapping[str, bytes], public: PublicBundle, label: Callable[[str], str]
) -> PrivateKey | None:
    if JWT_KEY not in items and JWKS not in items:
        return None
    for item, other in ((JWT_KEY, JWKS), (JWKS, JWT_KEY)):
        if item not in items:
            raise BundleError(
                f"is missing, but {label(other)} is present (the JWT items go together)", item=label(item)
            )
    from .jwt_svid import algorithm_for_key, signing_key_id

    jwt_key = _parse_key(items[JWT_KEY], label(JWT_KEY))
    if algorithm_for_key(jwt_key) is None:
        raise BundleError(
            "is not an RSA (2048 bits or more), ECDSA P-256 or Ed25519 key", item=label(JWT_KEY)
        )
    signing_key_id(items[JWKS], jwt_key, item=label(JWKS))  # the JWK Set must publish the key
    return jwt_key


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
