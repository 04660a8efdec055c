"""What a trust bundle says about itself, and whether the operator's configuration contradicts
it (design §5.15).

The operator verbs that change a bundle (``rotate root|issuer|advance``, ``bundle regenerate``)
keep what they do not mean to change: the trust domain (the active root's ``O=``, else the
issuer's SPIFFE ID), the issuer's SPIFFE ID, and the CA key algorithm. A setting given
explicitly (a flag or its ``SENTRY_*`` variable) that contradicts the bundle is refused, except a
new key algorithm for a new root (``rotate root``, ``bundle regenerate``). Pure: values in,
values out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from .bundle import ANCHORS, PublicBundle, parse_certificates, parse_public_bundle
from .certs import DEFAULT_CA_LIFETIME
from .config import Config
from .durations import format_duration
from .errors import BundleError, ConfigError
from .keys import KeyAlgorithm, describe_public_key, key_algorithm_of
from .service import CA_APP_ID
from .spiffe_id import SpiffeId, trust_domain_problem

FROM_ROOT = "the root's O="
FROM_ISSUER = "the issuer's SPIFFE ID"

T = TypeVar("T")


@dataclass(frozen=True)
class BundleSettings:
    """What a bundle says about itself; each None when it says nothing (an imported PKI, a
    damaged bundle).

    trust_domain: the active root's ``O=`` when it is a valid trust domain, else the trust domain
    of the issuer's SPIFFE ID; trust_domain_from: :data:`FROM_ROOT` or :data:`FROM_ISSUER`.
    ca_identity: the issuer's SPIFFE ID (its ``O=`` or a ``spiffe://`` URI SAN). root_algorithm /
    issuer_algorithm: of the active root's and the issuer's keys, None for a key sentryca does not
    generate; root_key / issuer_key describe them (``ECDSA secp256r1``, ``RSA 2048``; "" unknown).
    prepared_algorithm: of a prepared root's key (a root rotation under way). root_validity /
    issuer_validity: NotAfter - NotBefore of the active root and of the issuer, what a rotation
    keeps unless told otherwise (:func:`lifetimes`); an issuer that ends with its root (cut to
    its NotAfter, or made as long) counts the root's validity, since its own says only "at
    least"."""

    trust_domain: str | None = None
    trust_domain_from: str = ""
    ca_identity: SpiffeId | None = None
    root_algorithm: KeyAlgorithm | None = None
    root_key: str = ""
    issuer_algorithm: KeyAlgorithm | None = None
    issuer_key: str = ""
    prepared_algorithm: KeyAlgorithm | None = None
    root_validity: timedelta | None = None
    issuer_validity: timedelta | None = None


UNKNOWN = BundleSettings()


def settings_of(public: PublicBundle, prepared_root: x509.Certificate | None = None) -> BundleSettings:
    """The settings of a parsed bundle (its active root: the anchor its issuer chain ends at);
    ``prepared_root``: the root of a root rotation under way, if any."""
    root = public.anchor_for(public.issuer_chain[-1])
    ca_identity = _issuer_identity(public.issuer)
    trust_domain, source = (_root_trust_domain(root), FROM_ROOT) if root is not None else (None, "")
    if trust_domain is None and ca_identity is not None:
        trust_domain, source = ca_identity.trust_domain, FROM_ISSUER
    root_key = root.public_key() if root is not None else None
    return BundleSettings(
        trust_domain=trust_domain,
        trust_domain_from=source if trust_domain else "",
        ca_identity=ca_identity,
        root_algorithm=key_algorithm_of(root_key),
        root_key=describe_public_key(root_key) if root_key is not None else "",
        issuer_algorithm=key_algorithm_of(public.issuer.public_key()),
        issuer_key=describe_public_key(public.issuer.public_key()),
        prepared_algorithm=key_algorithm_of(prepared_root.public_key()) if prepared_root else None,
        root_validity=validity(root) if root is not None else None,
        issuer_validity=_issuer_validity(public.issuer, root),
    )


def validity(cert: x509.Certificate) -> timedelta:
    """NotAfter - NotBefore of ``cert``."""
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def _issuer_validity(issuer: x509.Certificate, root: x509.Certificate | None) -> timedelta:
    if root is not None and issuer.not_valid_after_utc >= root.not_valid_after_utc:
        return validity(root)  # cut to the root (or as long): its own length is only a lower bound
    return validity(issuer)


@dataclass(frozen=True)
class Lifetimes:
    """The lifetimes a verb or the automatic policy generates with (``lifetime`` of
    ``certs.generate_root``/``generate_issuer``: NotAfter = now + lifetime) and where each came
    from, for the verbs' summary line."""

    root: timedelta
    issuer: timedelta
    root_from: str
    issuer_from: str


def lifetimes(bundle: BundleSettings, cfg: Config) -> Lifetimes:
    """The root and issuer lifetimes for certificates replacing ``bundle``'s (design §4, §5.12):
    ``--root-ttl``/``--issuer-ttl`` when set; else the validity of the certificate replaced, less
    the backdate a rotation adds (``--allowed-clock-skew``), so a rotated certificate spans as
    long as the one it replaces; else (nothing readable) :data:`certs.DEFAULT_CA_LIFETIME`."""

    def pick(given: timedelta | None, flag: str, kept: timedelta | None) -> tuple[timedelta, str]:
        if given is not None:
            return given, flag
        if kept is not None:
            backdate = cfg.allowed_clock_skew
            return (kept - backdate if kept > backdate else kept), "the bundle's"
        return DEFAULT_CA_LIFETIME, "the default"

    root, root_from = pick(cfg.root_ttl, "--root-ttl", bundle.root_validity)
    issuer, issuer_from = pick(cfg.issuer_ttl, "--issuer-ttl", bundle.issuer_validity)
    return Lifetimes(root, issuer, root_from, issuer_from)


def settings_of_items(items: Mapping[str, bytes], labels: Mapping[str, str] | None = None) -> BundleSettings:
    """Lenient :func:`settings_of` for store items that may be damaged (what ``bundle regenerate``
    replaces): the whole public part when it verifies, else the one trust anchor of a readable
    ``ca.crt`` (several anchors without a readable issuer chain: which one is active is unknown),
    else :data:`UNKNOWN`."""
    try:
        return settings_of(parse_public_bundle(items, labels))
    except BundleError:
        pass
    if ANCHORS not in items:
        return UNKNOWN
    try:
        anchors = parse_certificates(items[ANCHORS], ANCHORS)
    except BundleError:
        return UNKNOWN
    if len(anchors) != 1:
        return UNKNOWN
    root = anchors[0]
    trust_domain = _root_trust_domain(root)
    return BundleSettings(
        trust_domain=trust_domain,
        trust_domain_from=FROM_ROOT if trust_domain else "",
        root_algorithm=key_algorithm_of(root.public_key()),
        root_key=describe_public_key(root.public_key()),
        root_validity=validity(root),
    )


class Change(enum.Enum):
    """What a verb makes: ``NEW_ROOT`` (``rotate root``, ``bundle regenerate``: may change the key
    algorithm when told explicitly), ``ISSUER`` (``rotate issuer``: a new issuer under the active
    root), ``STEPS`` (``rotate advance``: the steps due, a root or issuer the automatic policy
    prepares)."""

    NEW_ROOT = "root"
    ISSUER = "issuer"
    STEPS = "steps"


@dataclass(frozen=True)
class Given(Generic[T]):
    """A setting the operator gave explicitly: ``value`` and ``source`` (``--trust-domain`` or
    ``SENTRY_TRUST_DOMAIN``)."""

    value: T
    source: str

    @property
    def said(self) -> str:
        """How the operator said it: ``--flag VALUE`` or ``SENTRY_X=VALUE``."""
        shown = self.value.value if isinstance(self.value, KeyAlgorithm) else str(self.value)
        return f"{self.source} {shown}" if self.source.startswith("--") else f"{self.source}={shown}"


@dataclass(frozen=True)
class Settled:
    """What a verb generates with: trust domain (root ``O=``), the issuer's SPIFFE ID (issuer
    ``O=``), the key algorithm, the root and issuer lifetimes; ``summary``: one line saying where
    each came from."""

    trust_domain: str
    ca_identity: SpiffeId
    algorithm: KeyAlgorithm
    summary: str
    lifetimes: Lifetimes


def settle(
    bundle: BundleSettings,
    cfg: Config,
    change: Change,
    *,
    verb: str,
    where: str,
    trust_domain: Given[str] | None = None,
    algorithm: Given[KeyAlgorithm] | None = None,
) -> Settled:
    """The settings ``verb`` (e.g. ``rotate root``) generates with for the bundle in ``where`` (a
    store's description): the bundle's own, else ``cfg``'s (an explicit setting or the default;
    ``cfg.namespace`` names a new issuer ID). ``trust_domain``/``algorithm``: what the operator
    gave explicitly, None when not given.

    Raises ConfigError, naming both values and nothing changed, when ``trust_domain``
    contradicts the bundle's (a verb never moves a CA to another trust domain), or ``algorithm``
    contradicts the bundle's key algorithm (the active root's; for ``ISSUER`` the issuer's; a
    prepared root's is accepted too) and ``change`` is not ``NEW_ROOT``."""
    td, td_note = _settle_trust_domain(bundle, cfg, verb, where, trust_domain)
    if bundle.ca_identity is not None and bundle.ca_identity.trust_domain == td:
        ca_identity, id_note = bundle.ca_identity, "the bundle's"
    else:
        ca_identity, id_note = SpiffeId(td, cfg.namespace, CA_APP_ID), "new"
    alg, alg_note = _settle_algorithm(bundle, cfg, change, verb, where, algorithm)
    kept = lifetimes(bundle, cfg)
    summary = (
        f"trust domain {td} ({td_note}), issuer ID {ca_identity} ({id_note}), "
        f"key algorithm {alg.value} ({alg_note}), root lifetime {format_duration(kept.root)} "
        f"({kept.root_from}), issuer lifetime {format_duration(kept.issuer)} ({kept.issuer_from})"
    )
    return Settled(td, ca_identity, alg, summary, kept)


def _settle_trust_domain(
    bundle: BundleSettings, cfg: Config, verb: str, where: str, given: Given[str] | None
) -> tuple[str, str]:
    if bundle.trust_domain is None:
        how = given.source if given is not None else "the default"
        return cfg.trust_domain, f"{how}: the bundle names none"
    if given is not None and given.value != bundle.trust_domain:
        raise ConfigError(
            f"{given.said} contradicts the trust bundle in {where}: its trust domain is "
            f"{bundle.trust_domain} ({bundle.trust_domain_from}). `{verb}` cannot move a CA to another "
            f"trust domain; nothing was changed. Run it with the bundle's trust domain "
            f"({bundle.trust_domain}) or with none; a CA in another trust domain is a new CA, in a new "
            "store (`sentryca bundle init`)"
        )
    return bundle.trust_domain, f"the bundle's: {bundle.trust_domain_from}"


def _settle_algorithm(
    bundle: BundleSettings,
    cfg: Config,
    change: Change,
    verb: str,
    where: str,
    given: Given[KeyAlgorithm] | None,
) -> tuple[KeyAlgorithm, str]:
    role, own, described = (
        ("issuer", bundle.issuer_algorithm, bundle.issuer_key)
        if change is Change.ISSUER
        else ("root", bundle.root_algorithm, bundle.root_key)
    )
    how = given.source if given is not None else "the default"
    if own is None:
        if described:
            return cfg.ca_key_algorithm, f"{how}: the {role}'s {described} key is not one sentryca makes"
        return cfg.ca_key_algorithm, f"{how}: the bundle's {role} key is unknown"
    if given is None:
        return own, f"the bundle's {role} key"
    accepted = {own} | ({bundle.prepared_algorithm} if bundle.prepared_algorithm else set())
    if given.value in accepted:
        return given.value, given.source if given.value != own else f"the bundle's {role} key"
    if change is Change.NEW_ROOT:
        return given.value, f"{given.source}; the current root's is {own.value}"
    raise ConfigError(
        f"{given.said} contradicts the trust bundle in {where}: its {role}'s key is {own.value}. "
        f"`{verb}` keeps the bundle's key algorithm; nothing was changed. Run it with the "
        f"bundle's key algorithm ({own.value}) or with none; a new key algorithm comes with a new root "
        f"(`sentryca rotate root --ca-key-algorithm {given.value.value}`)"
    )


def _root_trust_domain(root: x509.Certificate) -> str | None:
    names = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) and trust_domain_problem(value) is None else None


def _issuer_identity(issuer: x509.Certificate) -> SpiffeId | None:
    candidates = [str(a.value) for a in issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    try:
        san = issuer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        candidates += san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    for text in candidates:
        try:
            return SpiffeId.parse(text)
        except ValueError:
            continue
    return None
