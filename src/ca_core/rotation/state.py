"""The values of a rotation (design §5): its slots, state, policy, steps and outcome.

Slots (after SPIRE's CA manager): for the root, the **active** root (the anchor the issuer chain
verifies to), at most one **prepared** root (already in the trust anchors, so relying parties
learn it; its issuer and both keys are kept only in the secret state), and **retiring** roots
(former active roots still trusted by the leaves they covered). For the issuer, the **active**
issuer (``issuer.crt``/``issuer.key``) and at most one **prepared** issuer under the active root.

:class:`RotationState` is what ``rotation.json`` holds (:mod:`.codec` writes and reads it);
:class:`RotationPolicy` how this writer makes rotations; :class:`Rotation` the outcome of the
steps :mod:`.rules` and :mod:`.actions` take. Plus the constants of the rules and the small
helpers every module of the package shares. Values only: nothing here decides a step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from ..bundle import ROTATION_STATE, TrustBundle, chain_not_after, fingerprint
from ..certs import DEFAULT_CA_LIFETIME, DEFAULT_CLOCK_SKEW, DEFAULT_WORKLOAD_TTL, generate_issuer
from ..errors import BundleError
from ..jwt_svid import DEFAULT_JWT_TTL, JwtAlgorithm
from ..keys import KeyAlgorithm, PrivateKey, key_uri_of, public_key_der
from ..oidc import MAX_AGE_SECONDS
from ..spiffe_id import SpiffeId

PREPARE_WITHIN = timedelta(days=30)  # prepare when less than min(lifetime/2, this) remains
ACTIVATE_WITHIN = timedelta(days=7)  # activate when less than min(lifetime/6, this) remains
DEFAULT_PROPAGATION_WINDOW = timedelta(hours=24)
REMOVED_HISTORY = 16  # removed roots the state keeps
MANUAL, AUTO = "manual", "auto"  # what triggered a step
# JWT keys (design §5.17): how long verifiers may cache a JWK Set (the OIDC server's max-age,
# ``ca_core.oidc.MAX_AGE_SECONDS``) and how long federation may take to publish a change (its
# longest re-check, ``handlers.server.federation.RETRY_MAX``); the default key lifetime.
JWKS_CACHE = timedelta(seconds=MAX_AGE_SECONDS)
FEDERATION_DELAY = timedelta(seconds=300)
DEFAULT_JWT_KEY_LIFETIME = timedelta(days=90)


@dataclass(frozen=True)
class PreparedRoot:
    """A root added to the trust anchors ahead of use, with the issuer it will sign with."""

    root: x509.Certificate
    root_key: PrivateKey
    issuer_chain: tuple[x509.Certificate, ...]
    issuer_key: PrivateKey
    since: datetime
    activate_after: datetime
    trigger: str

    @property
    def not_after(self) -> datetime:
        """When this chain stops being usable: its earliest NotAfter."""
        return chain_not_after((*self.issuer_chain, self.root))


@dataclass(frozen=True)
class PreparedIssuer:
    """An issuer under the active root, ready to take over at ``activate_after``."""

    issuer_chain: tuple[x509.Certificate, ...]
    issuer_key: PrivateKey
    root: x509.Certificate
    since: datetime
    activate_after: datetime
    trigger: str

    @property
    def not_after(self) -> datetime:
        return chain_not_after((*self.issuer_chain, self.root))


@dataclass(frozen=True)
class RetiringRoot:
    """A former active root kept in the anchors until ``prune_after``."""

    sha256: str
    subject: str
    since: datetime
    prune_after: datetime


@dataclass(frozen=True)
class RemovedRoot:
    """A root the rotation removed from the anchors: ``reason`` pruned | expired | emergency."""

    sha256: str
    subject: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class PreparedJwtKey:
    """A JWT key published in ``jwks.json`` ahead of use (design §5.17): it signs from
    ``activate_after``. ``kid``: its entry's key id; the key itself lives only in the secret state."""

    key: PrivateKey
    kid: str
    algorithm: JwtAlgorithm
    since: datetime
    activate_after: datetime
    trigger: str


@dataclass(frozen=True)
class RetiringJwtKey:
    """A former signing key still published until ``prune_after``; ``since``: when its successor
    became active (the last time a writer signed with it, give or take the notice bound);
    ``thumbprint``: RFC 7638 SHA-256, hex (what the JWK Set entry is matched by)."""

    kid: str
    thumbprint: str
    since: datetime
    prune_after: datetime


@dataclass(frozen=True)
class RemovedJwtKey:
    """A JWT key taken out of ``jwks.json`` by the rotation (reason ``pruned``)."""

    kid: str
    thumbprint: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class RotationState:
    """The rotation state of one bundle (``rotation.json``). ``root_since``/``issuer_since``:
    when the active root/issuer became active (None when not known: a bundle that never rotated)."""

    root_since: datetime | None = None
    issuer_since: datetime | None = None
    prepared_root: PreparedRoot | None = None
    prepared_issuer: PreparedIssuer | None = None
    retiring: tuple[RetiringRoot, ...] = ()
    removed: tuple[RemovedRoot, ...] = ()
    leaf_bound: timedelta | None = None  # the longest leaf bound any writer used (rules, rule 0)
    jwt_since: datetime | None = None  # when the JWT key (jwt.key) began to sign, when known
    prepared_jwt: PreparedJwtKey | None = None
    retiring_jwt: tuple[RetiringJwtKey, ...] = ()
    removed_jwt: tuple[RemovedJwtKey, ...] = ()


EMPTY = RotationState()


@dataclass(frozen=True)
class RotationPolicy:
    """How rotations are made (from the configuration; see ``ca_core.policy.rotation_policy``).

    trust_domain / ca_identity: names of generated roots (O=) and issuers (O=); auto: the
    automatic policy starts rotations (steps of a rotation in progress are taken regardless);
    propagation_window: how long a prepared root is in the anchors before its issuer becomes
    active after a manual ``rotate root`` (and at least that long after an automatic one);
    leaf_bound: how long after an issuer stops being active a leaf it signed may still be valid
    (workload TTL + clock skew + how long a CA may still sign with it: the store poll interval,
    or the expiry-check interval without polling; :mod:`.rules`, rule 0); clock_skew:
    backdating of generated certificates; algorithm, root_lifetime, issuer_lifetime: of
    generated keys and certificates; upstream: the upstream authority that signs new issuers
    (``acm-pca://<CA ARN>``, design §5.16), None when the root key signs them. JWT keys (design
    §5.17): jwt_publish: how long a new JWT key is published before it signs (JWKS cache +
    notice bound + federation delay); jwt_retire: how long a former key stays published after
    its successor activated (notice bound + ``--jwt-ttl`` + clock skew); jwt_key_lifetime:
    ``--jwt-key-ttl``, after which the automatic policy rotates the key (None: never);
    jwt_key_id_fixed: ``--jwt-key-id`` is set, which pins one key id, so the key is not rotated.
    """

    trust_domain: str = "localhost"
    ca_identity: SpiffeId = field(default_factory=lambda: SpiffeId("localhost", "default", "dapr-sentry"))
    auto: bool = False
    propagation_window: timedelta = DEFAULT_PROPAGATION_WINDOW
    leaf_bound: timedelta = DEFAULT_WORKLOAD_TTL + DEFAULT_CLOCK_SKEW
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    root_lifetime: timedelta = DEFAULT_CA_LIFETIME
    issuer_lifetime: timedelta = DEFAULT_CA_LIFETIME
    upstream: str | None = None
    jwt_publish: timedelta = JWKS_CACHE + timedelta(hours=1) + FEDERATION_DELAY
    jwt_retire: timedelta = timedelta(hours=1) + DEFAULT_JWT_TTL + DEFAULT_CLOCK_SKEW
    jwt_key_lifetime: timedelta | None = DEFAULT_JWT_KEY_LIFETIME
    jwt_key_id_fixed: bool = False

    def new_issuer(
        self, root: x509.Certificate, root_key: PrivateKey, now: datetime, key: PrivateKey | None = None
    ) -> tuple[x509.Certificate, PrivateKey]:
        """A fresh issuer under ``root``, signed with ``root_key`` now, as this policy makes them
        (key algorithm, issuer lifetime, backdating): (certificate, its key). key: the key to
        certify (an issuer key in KMS, see :func:`kept_issuer_key`), else one is generated."""
        key = key if key is not None else self.algorithm.generate()
        cert = generate_issuer(
            root,
            root_key,
            key,
            self.ca_identity,
            now,
            lifetime=self.issuer_lifetime,
            backdate=self.clock_skew,
        )
        return cert, key


@dataclass(frozen=True)
class Step:
    """One rotation step: kind root | issuer | jwt; action bound | prepare | activate | prune |
    rotate | emergency | record (a JWT key's start); trigger manual | auto; a log line; audit
    fields (fingerprints, serials, key ids, times)."""

    kind: str
    action: str
    trigger: str
    message: str
    fields: Mapping[str, str]


@dataclass(frozen=True)
class Rotation:
    """The outcome of rotation steps: the new bundle, its state and the steps taken."""

    bundle: TrustBundle
    state: RotationState
    steps: tuple[Step, ...]

    def items(self) -> dict[str, bytes]:
        """The store items of the new bundle, ``rotation.json`` included."""
        from .codec import encode_state  # here: the codec builds on these values

        return {**self.bundle.to_items(), ROTATION_STATE: encode_state(self.state, self.bundle)}


# --- helpers the rules, the actions and the codec share -----------------------------------------


def margins(cert: x509.Certificate) -> tuple[timedelta, timedelta]:
    """(prepare, activate) margins of ``cert``: ``min(lifetime/2, 30 d)``, ``min(lifetime/6, 7 d)``,
    lifetime = NotAfter - NotBefore."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return min(lifetime / 2, PREPARE_WITHIN), min(lifetime / 6, ACTIVATE_WITHIN)


def active_root(bundle: TrustBundle) -> x509.Certificate:
    """The anchor the issuer chain verifies to (parse_bundle guarantees there is one)."""
    root = bundle.anchor_for(bundle.issuer_chain[-1])
    if root is None:  # pragma: no cover - parse_bundle refuses such a bundle
        raise BundleError("the issuer chain does not verify to any trust anchor")
    return root


def held_root_key(bundle: TrustBundle) -> PrivateKey | None:
    """The active root's key when the bundle holds it (``root.key`` may belong to another anchor
    in an imported bundle), else None."""
    key = bundle.root_key
    if key is None:
        return None
    root_public = active_root(bundle).public_key()
    return key if public_key_der(key.public_key()) == public_key_der(root_public) else None


def kept_issuer_key(key: PrivateKey) -> PrivateKey | None:
    """The key the next issuer certifies when ``key`` is the current issuer's: the same key when
    it is held in KMS (a new KMS key is the operator's to create, design §5.18: a rotation renews
    the certificate of the key in KMS), None (a fresh local key) otherwise."""
    return key if key_uri_of(key) is not None else None


def find_anchor(bundle: TrustBundle, sha256: str) -> x509.Certificate | None:
    """The trust anchor with SHA-256 fingerprint ``sha256``, or None."""
    return next((a for a in bundle.trust_anchors if fingerprint(a) == sha256), None)


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def iso(t: datetime) -> str:
    return t.isoformat()
