"""AWS IAM validator (design §6.6): the token is a SigV4-signed ``sts:GetCallerIdentity`` request,
which the CA sends to the STS endpoint of its own configuration and whose answer names the caller's
ARN; configured rules map the ARN to a SPIFFE ID (the idea of Vault's ``aws`` auth method, IAM type).

The proof (:func:`encode_proof`, :func:`parse_proof`): base64url (padding optional) of a JSON
object with exactly ``method`` (``POST``), ``headers`` (name → one string value) and ``body``
(exactly :data:`GET_CALLER_IDENTITY_BODY`); at most :data:`MAX_PROOF_CHARS` characters. It has no
URL: the CA builds the request's target itself, so a proof cannot make the CA call anywhere else.
Headers outside :data:`ALLOWED_HEADERS` are refused, names appear once (case-insensitively),
values are printable ASCII. The signature must cover ``host`` (the configured endpoint's),
``x-amz-date``, :data:`SERVER_ID_HEADER` (this CA's server id: a proof made for another service
is no use here) and :data:`KEY_HASH_HEADER` (SHA-256 of the CSR's SubjectPublicKeyInfo DER, hex:
a captured proof cannot mint an SVID for another key during its life).

Rules only: the STS call goes through :class:`StsPort` (``adapters.sts``); the clock is passed in.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..config.aws_iam import AwsIamRule, AwsIamSettings
from ..csr import csr_public_key
from ..errors import PermissionDenied
from ..keys import PublicKey
from ..spiffe_id import DEFAULT_TRUST_DOMAIN, SpiffeId, trust_domain_problem
from .base import Identity, SignRequest, TokenValidatorKind, check_common

SERVER_ID_HEADER = "X-Sentryca-Server-Id"
KEY_HASH_HEADER = "X-Sentryca-Csr-Key-Sha256"
GET_CALLER_IDENTITY_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
MAX_PROOF_CHARS = 16 * 1024
MAX_HEADERS = 16
MAX_HEADER_VALUE = 4096
PROOF_LIFETIME = timedelta(minutes=15)  # SigV4: a request is valid 15 minutes from X-Amz-Date
FUTURE_SKEW = timedelta(minutes=5)
ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
        "content-type",
        SERVER_ID_HEADER.lower(),
        KEY_HASH_HEADER.lower(),
    }
)
SIGNED_REQUIRED = ("host", "x-amz-date", SERVER_ID_HEADER.lower(), KEY_HASH_HEADER.lower())
PROOF_FIELDS = ("method", "headers", "body")

_TCHAR = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]{1,128})/([0-9]{8})/([a-z0-9-]{1,32})/([a-z0-9]{1,32})"
    r"/aws4_request, ?SignedHeaders=([a-z0-9;-]{1,1024}), ?Signature=([0-9a-f]{64})"
)
_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,64}")  # an IAM user or role name
_ARN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):(sts|iam)::([0-9]{12}):([A-Za-z-]{1,32})/([A-Za-z0-9+=,.@_/-]{1,512})"
)


def _refuse(message: str, reason: str = "aws_iam_proof_malformed") -> PermissionDenied:
    return PermissionDenied(f"AWS IAM proof: {message}", reason=reason)


@dataclass(frozen=True)
class IamProof:
    """A checked proof: ``headers`` as sent (name, value) pairs, ``body`` the form text;
    ``region``/``service``/``signed_headers``/``amz_date`` read from its Authorization and
    X-Amz-Date headers. Never printed: headers carry the signature and session token."""

    method: str
    headers: tuple[tuple[str, str], ...]
    body: str
    region: str
    service: str
    signed_headers: frozenset[str]
    amz_date: datetime

    def __repr__(self) -> str:
        return f"IamProof(region={self.region!r}, signed_headers={sorted(self.signed_headers)})"

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def encode_proof(method: str, headers: dict[str, str], body: str) -> str:
    """The token of a signed request (the client's side of :func:`parse_proof`)."""
    doc = json.dumps({"method": method, "headers": headers, "body": body}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key.lower() in (k.lower() for k in seen):
            raise _refuse(f"member {key[:64]!r} appears more than once")
        seen[key] = value
    return seen


def parse_proof(token: str) -> IamProof:
    """The proof in ``token``. Raises PermissionDenied (reason ``aws_iam_proof_malformed``) for
    anything else: too long, not base64url JSON, fields other than method/headers/body (a URL
    included), a method other than POST, a body other than GetCallerIdentity's, a header not
    allowed, duplicated or not printable ASCII, an Authorization that is not SigV4, or a signature
    that does not cover host, x-amz-date and the two sentryca headers."""
    if len(token) > MAX_PROOF_CHARS:
        raise _refuse(f"longer than {MAX_PROOF_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise _refuse("not base64url-encoded JSON") from None
    if not isinstance(doc, dict):
        raise _refuse("not a JSON object")
    extra = sorted(set(doc) - set(PROOF_FIELDS))
    if extra:
        raise _refuse(
            f"fields not accepted: {', '.join(repr(e[:64]) for e in extra[:5])} (only method, headers "
            "and body: the CA sends the request to its own STS endpoint)"
        )
    method, headers, body = doc.get("method"), doc.get("headers"), doc.get("body")
    if method != "POST":
        raise _refuse("the method must be POST")
    if body != GET_CALLER_IDENTITY_BODY:
        raise _refuse(f"the body must be exactly {GET_CALLER_IDENTITY_BODY!r}", "aws_iam_wrong_action")
    if not isinstance(headers, dict) or not headers:
        raise _refuse("headers must be an object of name → string")
    if len(headers) > MAX_HEADERS:
        raise _refuse(f"more than {MAX_HEADERS} headers")
    pairs: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not _TCHAR.fullmatch(name):
            raise _refuse("a header name is not an HTTP token")
        if name.lower() not in ALLOWED_HEADERS:
            raise _refuse(f"header {name!r} is not accepted (allowed: {', '.join(sorted(ALLOWED_HEADERS))})")
        if not isinstance(value, str) or not 0 < len(value) <= MAX_HEADER_VALUE:
            raise _refuse(f"header {name!r}: one string value of 1-{MAX_HEADER_VALUE} characters")
        if not all(" " <= c <= "~" for c in value):
            raise _refuse(f"header {name!r}: the value is not printable ASCII")
        pairs.append((name, value))
    proof_headers = {k.lower(): v for k, v in pairs}
    for needed in ("authorization", "host", "x-amz-date"):
        if needed not in proof_headers:
            raise _refuse(f"header {needed!r} is missing")
    m = _AUTH.fullmatch(proof_headers["authorization"])
    if m is None:
        raise _refuse("Authorization is not an AWS4-HMAC-SHA256 signature")
    signed = frozenset(m.group(5).split(";"))
    try:
        amz_date = datetime.strptime(proof_headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _refuse("X-Amz-Date is not YYYYMMDDTHHMMSSZ") from None
    if amz_date.strftime("%Y%m%d") != m.group(2):
        raise _refuse("the credential scope's date is not X-Amz-Date's")
    for needed in SIGNED_REQUIRED:
        if needed not in signed:
            reason = "aws_iam_server_id" if needed == SERVER_ID_HEADER.lower() else "aws_iam_unsigned_header"
            raise _refuse(f"the signature does not cover {needed!r}", reason)
    missing = sorted(h for h in signed if h not in proof_headers)
    if missing:
        raise _refuse(f"signed header(s) not sent: {', '.join(missing[:5])}")
    return IamProof("POST", tuple(pairs), body, m.group(3), m.group(4), signed, amz_date)


def key_hash(public_key: PublicKey) -> str:
    """SHA-256 of ``public_key``'s SubjectPublicKeyInfo DER, lowercase hex: the value of
    :data:`KEY_HASH_HEADER`."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class CallerIdentity:
    """What STS answered: the caller's ARN, account and user id."""

    arn: str
    account: str
    user_id: str = ""


class StsPort(Protocol):
    """The CA's STS: where proofs are sent (its own configuration, never the proof's)."""

    @property
    def host(self) -> str:
        """The Host a proof must be signed for (``HOST`` or ``HOST:PORT``)."""
        ...

    def get_caller_identity(self, proof: IamProof) -> CallerIdentity:
        """Send ``proof`` to the configured endpoint. Raises PermissionDenied when STS refuses it
        (signature, expired, unknown key), Unavailable when STS cannot be reached, times out or
        throttles."""
        ...


@dataclass(frozen=True)
class Principal:
    """A mappable ARN's parts: an assumed role's (``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION``,
    ``user`` empty) or an IAM user's (``arn:aws:iam::ACCOUNT:user/[PATH/]NAME``: ``user`` NAME,
    ``role`` and ``session`` empty)."""

    account: str
    role: str
    session: str
    user: str = ""

    def __str__(self) -> str:
        return f"IAM user {self.user!r}" if self.user else f"role {self.role!r} (session {self.session!r})"


def parse_principal(arn: str) -> Principal | None:
    """The parts of an assumed-role or IAM user ARN, None for any other principal (root, federated
    users: no rule maps them)."""
    m = _ARN.fullmatch(arn)
    if m is None:
        return None
    if m.group(2) == "iam" and m.group(4) == "user":
        name = m.group(5).rsplit("/", 1)[-1]  # user names are unique in an account, whatever the path
        return Principal(m.group(3), "", "", user=name) if _NAME.fullmatch(name) else None
    if m.group(2) != "sts" or m.group(4) != "assumed-role":
        return None
    role, _, session = m.group(5).partition("/")
    if not role or not session or "/" in session:
        return None
    return Principal(m.group(3), role, session)


def match_rule(rules: tuple[AwsIamRule, ...], principal: Principal) -> AwsIamRule | None:
    """The first rule for ``principal``: a ``user`` rule naming its IAM user, or a ``role`` rule
    naming its role (and session name glob, when set); and its account, when the rule sets one."""
    for rule in rules:
        if principal.user:
            if rule.user != principal.user:
                continue
        elif rule.role is None or rule.role != principal.role:
            continue
        if rule.account is not None and rule.account != principal.account:
            continue
        if rule.session_name is not None and not fnmatch.fnmatchcase(principal.session, rule.session_name):
            continue
        return rule
    return None


class AwsIamValidator:
    """AWS IAM (design §6.6). ``settings``: the configured rules; ``sts``: the STS port;
    ``server_id``: the value the proof's server-id header must carry; ``clock``: aware UTC now.
    validate() raises PermissionDenied naming the failed check, Unavailable when STS cannot be
    used, InvalidRequest when the CSR cannot be read (its key is bound into the proof)."""

    kind = TokenValidatorKind.AWS_IAM
    performs_io = True  # the STS call: the server runs it on its I/O threads (design §8.7)

    def __init__(
        self, settings: AwsIamSettings, sts: StsPort, server_id: str, clock: Callable[[], datetime]
    ) -> None:
        self.settings = settings
        self.sts = sts
        self.server_id = server_id
        self.clock = clock

    def validate(self, request: SignRequest) -> Identity:
        if not request.token:
            raise PermissionDenied(
                "the request has no token (an AWS IAM proof is required)", reason="token_missing"
            )
        check_common(request, trust_domain_problem(request.trust_domain) if request.trust_domain else None)
        proof = parse_proof(request.token)
        self._check_locally(proof, request.csr_pem)
        caller = self.sts.get_caller_identity(proof)
        if caller.account not in self.settings.allowed_accounts:
            raise PermissionDenied(
                f"AWS account {caller.account[:20]!r} is not allowed", reason="aws_iam_account"
            )
        principal = parse_principal(caller.arn)
        if principal is None or principal.account != caller.account:
            raise PermissionDenied(
                f"{caller.arn[:300]!r} is neither an assumed-role nor an IAM user ARN: no rule maps it",
                reason="aws_iam_no_rule",
            )
        rule = match_rule(self.settings.rules, principal)
        if rule is None:
            raise PermissionDenied(
                f"no rule maps {principal} of account {principal.account}", reason="aws_iam_no_rule"
            )
        expected = SpiffeId(rule.trust_domain, rule.namespace, rule.app_id)
        received_td = request.trust_domain or rule.trust_domain
        problems = []
        if request.app_id != rule.app_id:
            problems.append(f"app id: expected {rule.app_id!r}, received {request.app_id!r}")
        if request.namespace != rule.namespace:
            problems.append(f"namespace: expected {rule.namespace!r}, received {request.namespace!r}")
        if received_td != rule.trust_domain:
            problems.append(f"trust domain: expected {rule.trust_domain!r}, received {received_td!r}")
        if problems:
            raise PermissionDenied(
                f"rule {rule.name!r} maps {principal} to {expected}: " + "; ".join(problems),
                reason="app_id_mismatch",
            )
        return Identity(expected, rule=rule.name)

    def _check_locally(self, proof: IamProof, csr_pem: bytes) -> None:
        """What can be refused without calling STS: the host, region and service the proof was
        signed for, its date, the server id, and the CSR key it is bound to."""
        host = proof.header("host") or ""
        if host.lower() != self.sts.host.lower():
            raise _refuse(
                f"signed for host {host[:100]!r}, but this CA sends proofs to {self.sts.host!r} only",
                "aws_iam_wrong_host",
            )
        if proof.region != self.settings.region or proof.service != "sts":
            raise _refuse(
                f"signed for {proof.service}/{proof.region}, expected sts/{self.settings.region}",
                "aws_iam_wrong_host",
            )
        now = self.clock()
        if proof.amz_date + PROOF_LIFETIME < now or proof.amz_date > now + FUTURE_SKEW:
            raise _refuse(
                f"dated {proof.amz_date.isoformat()}, outside the 15 minutes a signature is valid",
                "aws_iam_proof_expired",
            )
        if proof.header(SERVER_ID_HEADER) != self.server_id:
            raise _refuse(
                f"{SERVER_ID_HEADER} does not name this CA ({self.server_id!r})", "aws_iam_server_id"
            )
        if proof.header(KEY_HASH_HEADER) != key_hash(csr_public_key(csr_pem)):
            raise _refuse(
                f"{KEY_HASH_HEADER} is not the SHA-256 of the CSR's public key (a proof made for another "
                "key)",
                "aws_iam_key_mismatch",
            )


def default_server_id(ca_identity: SpiffeId) -> str:
    """The server id proofs must carry when none is configured: the CA's SPIFFE ID."""
    return str(ca_identity)


__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "GET_CALLER_IDENTITY_BODY",
    "KEY_HASH_HEADER",
    "SERVER_ID_HEADER",
    "AwsIamValidator",
    "CallerIdentity",
    "IamProof",
    "StsPort",
    "encode_proof",
    "key_hash",
    "parse_proof",
]
