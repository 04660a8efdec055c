"""CA keys held in AWS KMS (design §5.18): signing key objects whose ``sign`` calls KMS ``Sign``.

:func:`open_key` turns a reference (``kms://<key id, key ARN, alias name or alias ARN>``) into a
``cryptography`` private-key object, an :class:`ec.EllipticCurvePrivateKey` or
:class:`rsa.RSAPrivateKey` subclass, that ``CertificateBuilder.sign`` takes like a local key: the
library hands ``sign`` the to-be-signed bytes and the algorithm, and this module asks KMS to sign
them (``MessageType`` RAW, KMS hashes; a message over KMS's 4096-byte limit is hashed here and
sent as DIGEST). The private half never leaves KMS: it cannot be serialised, and the bundle
stores only :attr:`KmsKey.key_uri` (``kms://<key ARN>``: an alias can be moved to another key,
the ARN cannot), as ``root.kms`` for a root key and ``issuer.kms`` for an issuer key (then every
leaf is one ``Sign`` call; the gRPC servicer makes it off its event loop, design §8.7).

Supported key specs: ``ECC_NIST_P256`` (ECDSA_SHA_256), ``ECC_NIST_P384`` (ECDSA_SHA_384),
``RSA_2048``/``RSA_3072``/``RSA_4096`` (RSASSA_PKCS1_V1_5 or RSASSA_PSS with a salt as long as
the digest). Opening makes two calls (``DescribeKey``, ``GetPublicKey``) once per process and
reference; every signature is one ``Sign`` call, each call with a 2 s connect and a 4 s read
timeout (and the SDK's retries). Errors are Unavailable with a reason:
``kms_unreachable`` (network, timeouts, throttling, 5xx, after the SDK's retries),
``kms_denied``, ``kms_key_disabled`` (disabled or pending deletion), ``kms_key_invalid`` (not
found, wrong usage or spec).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Self

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ca_core.errors import Unavailable

from . import aws

if TYPE_CHECKING:
    from typing_extensions import Buffer

SCHEME = "kms://"
MAX_RAW_MESSAGE = 4096  # KMS Sign's limit on a RAW message, bytes
CONNECT_TIMEOUT, READ_TIMEOUT = 2.0, 4.0  # of each KMS call, seconds
SUPPORTED_SPECS = ("ECC_NIST_P256", "ECC_NIST_P384", "RSA_2048", "RSA_3072", "RSA_4096")
_EC_CURVES = {"ECC_NIST_P256": "secp256r1", "ECC_NIST_P384": "secp384r1"}
_HASH_SUFFIX = {"sha256": "SHA_256", "sha384": "SHA_384", "sha512": "SHA_512"}

logger = logging.getLogger(__name__)
_opened: dict[str, KmsEcKey | KmsRsaKey] = {}
_lock = threading.Lock()


def is_kms_uri(value: str) -> bool:
    """Whether ``value`` is a KMS key reference (``kms://...``)."""
    return value.startswith(SCHEME)


def key_id_of(uri: str) -> str:
    """The KMS ``KeyId`` of ``kms://<id>``; raises ValueError for anything else."""
    if not is_kms_uri(uri) or not uri[len(SCHEME) :].strip() or any(c.isspace() for c in uri):
        raise ValueError(f"{uri!r} is not a KMS key reference: kms://<key id, key ARN or alias>")
    return uri[len(SCHEME) :]


def open_key(uri: str, client: Any = None, *, require_enabled: bool = False) -> KmsEcKey | KmsRsaKey:
    """The signing key object for ``uri`` (``kms://...``), opened once per process and
    reference (``DescribeKey`` and ``GetPublicKey``; the public key of a KMS key never changes).
    A key that is not Enabled is opened with a warning (a stored bundle still loads: its issuer
    signs leaves; only issuer signing fails, at ``Sign``), or refused with ``require_enabled``
    (a new root: its state is read again even when opened before). client: a botocore KMS client
    (default: :func:`adapters.aws.client`, the key ARN's region or ``AWS_REGION``). Raises
    ValueError for a malformed reference, Unavailable (reasons in the module docstring) when KMS
    cannot be reached or the key cannot sign."""
    key_id = key_id_of(uri)
    with _lock:
        cached = _opened.get(uri)
    if cached is not None and not require_enabled:
        return cached
    if client is None:
        client = cached._client if cached is not None else _client(_region_of(key_id))
    where = f"KMS key {key_id}"
    try:
        meta = client.describe_key(KeyId=key_id)["KeyMetadata"]
    except aws.sdk_errors() as e:
        raise kms_error(e, where, "describe the key") from None
    arn = str(meta["Arn"])
    where = f"KMS key {arn}"
    spec = str(meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or "")
    if meta.get("KeyUsage") != "SIGN_VERIFY" or spec not in SUPPORTED_SPECS:
        raise Unavailable(
            f"{where} cannot sign certificates: it is {meta.get('KeyUsage')} {spec or '?'}; create an "
            f"asymmetric SIGN_VERIFY key of spec {', '.join(SUPPORTED_SPECS)}",
            reason="kms_key_invalid",
        )
    state = meta.get("KeyState", "Enabled")
    if state != "Enabled" and require_enabled:
        raise Unavailable(
            f"{where} is {state}: nothing can be signed with it. Enable it (aws kms enable-key, or cancel "
            "its deletion) or choose another key (docs/runbook.md, KMS keys)",
            reason="kms_key_disabled",
        )
    if state != "Enabled":
        logger.warning(
            "%s is %s: nothing can be signed with it until it is enabled (a root key: no new issuers; an "
            "issuer key: no leaves) (docs/runbook.md, KMS keys)",
            where,
            state,
        )
    if cached is not None:
        return cached
    try:
        der = client.get_public_key(KeyId=arn)["PublicKey"]
    except aws.sdk_errors() as e:
        raise kms_error(e, where, "read the public key") from None
    public = serialization.load_der_public_key(der)
    key: KmsEcKey | KmsRsaKey
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == _EC_CURVES.get(spec):
        key = KmsEcKey(client, arn, public, spec)
    elif isinstance(public, rsa.RSAPublicKey) and spec.startswith("RSA_"):
        key = KmsRsaKey(client, arn, public, spec)
    else:  # pragma: no cover - KMS's public key always matches its spec
        raise Unavailable(f"{where}: its public key does not match its spec {spec}", reason="kms_key_invalid")
    with _lock:
        _opened.setdefault(uri, key)
        _opened.setdefault(key.key_uri, key)
        return _opened[uri]


def open_issuer_key(uri: str) -> KmsEcKey | KmsRsaKey:
    """The key of ``--issuer-key kms://...`` for a new issuer: opened with ``require_enabled``
    (so checked before anything is written), with a warning that every leaf will be a ``Sign``
    call. Raises as :func:`open_key`."""
    key = open_key(uri, require_enabled=True)
    logger.warning(
        "the new issuer's key is %s (%s): every leaf is signed by KMS Sign, a network call each, at "
        "most at KMS's Sign quota (design §5.18)",
        key.key_uri,
        key.key_spec,
    )
    return key


def _client(region: str | None) -> Any:
    # Short timeouts: a KMS call takes milliseconds, and with an issuer key in KMS every leaf
    # waits for one (design §5.18); the SDK's retries (3 tries in standard mode) still apply.
    return aws.client("kms", region, connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)


def _region_of(key_id: str) -> str | None:
    # arn:aws:kms:REGION:ACCOUNT:key/ID (or :alias/NAME): the key's own region
    parts = key_id.split(":")
    return parts[3] if key_id.startswith("arn:") and len(parts) > 4 and parts[3] else None


def kms_error(e: Exception, where: str, doing: str) -> Unavailable:
    """An SDK exception from KMS as Unavailable with a KMS reason and an operator message."""
    code = aws.error_code(e)
    if code in ("DisabledException", "KMSInvalidStateException", "KeyUnavailableException"):
        return Unavailable(
            f"{where}: cannot {doing}: the key is disabled or pending deletion ({code}). Enable it (aws "
            "kms enable-key, or cancel its deletion) or rotate to another key (docs/runbook.md, KMS keys)",
            reason="kms_key_disabled",
        )
    if code in ("NotFoundException", "InvalidKeyUsageException", "UnsupportedOperationException"):
        return Unavailable(f"{where}: cannot {doing}: {code}", reason="kms_key_invalid")
    translated = aws.unavailable(e, where, doing)
    reason = {"store_denied": "kms_denied", "store_unreachable": "kms_unreachable"}.get(
        translated.reason, "kms_key_invalid"
    )
    return Unavailable(str(translated), reason=reason)


class KmsKey:
    """What both KMS key classes share: the client, the key ARN, its spec and the ``Sign`` call."""

    _client: Any
    _arn: str
    _spec: str

    @property
    def key_uri(self) -> str:
        """``kms://<key ARN>``: the reference the bundle stores (``root.kms``)."""
        return SCHEME + self._arn

    @property
    def key_spec(self) -> str:
        """The KMS key spec, e.g. ``ECC_NIST_P256``."""
        return self._spec

    def _kms_sign(self, data: bytes, algorithm: hashes.HashAlgorithm | utils.Prehashed, family: str) -> bytes:
        if isinstance(algorithm, utils.Prehashed):
            hash_name, message, message_type = algorithm._algorithm.name, data, "DIGEST"
        else:
            hash_name, message, message_type = algorithm.name, data, "RAW"
            if len(data) > MAX_RAW_MESSAGE:
                digest = hashes.Hash(algorithm)
                digest.update(data)
                message, message_type = digest.finalize(), "DIGEST"
        suffix = _HASH_SUFFIX.get(hash_name)
        if suffix is None:
            raise ValueError(f"KMS cannot sign with {hash_name}")
        try:
            answer = self._client.sign(
                KeyId=self._arn,
                Message=message,
                MessageType=message_type,
                SigningAlgorithm=f"{family}_{suffix}",
            )
        except aws.sdk_errors() as e:
            raise kms_error(e, f"KMS key {self._arn}", "sign") from None
        return bytes(answer["Signature"])

    def _refuse_export(self) -> Any:
        raise ValueError(f"the key {self.key_uri} is held by KMS: its private half cannot be exported")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return self._refuse_export()

    def __copy__(self) -> Self:
        return self  # one handle on one KMS key: nothing to copy

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class KmsEcKey(KmsKey, ec.EllipticCurvePrivateKey):
    """An ECDSA key (P-256, P-384) held by KMS; ``sign`` returns a DER ECDSA signature."""

    def __init__(self, client: Any, arn: str, public: ec.EllipticCurvePublicKey, spec: str) -> None:
        self._client, self._arn, self._spec, self._public = client, arn, spec, public

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("KMS signs ECDSA only")
        return self._kms_sign(bytes(data), signature_algorithm.algorithm, "ECDSA")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise ValueError(f"the key {self.key_uri} is a KMS signing key: no key exchange")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        return self._refuse_export()


class KmsRsaKey(KmsKey, rsa.RSAPrivateKey):
    """An RSA key (2048, 3072, 4096 bits) held by KMS; PKCS#1 v1.5 or PSS with a digest-length salt."""

    def __init__(self, client: Any, arn: str, public: rsa.RSAPublicKey, spec: str) -> None:
        self._client, self._arn, self._spec, self._public = client, arn, spec, public

    def sign(
        self,
        data: Buffer,
        padding: padding.AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        if isinstance(algorithm, utils.NoDigestInfo):
            raise ValueError("KMS signs RSA with a DigestInfo only")
        hashed = algorithm._algorithm if isinstance(algorithm, utils.Prehashed) else algorithm
        if isinstance(padding, _padding.PKCS1v15):
            family = "RSASSA_PKCS1_V1_5"
        elif isinstance(padding, _padding.PSS) and padding._salt_length in (
            _padding.PSS.DIGEST_LENGTH,
            hashed.digest_size,
        ):
            family = "RSASSA_PSS"
        else:
            raise ValueError("KMS signs RSA with PKCS#1 v1.5, or PSS with a salt as long as the digest")
        return self._kms_sign(bytes(data), algorithm, family)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise ValueError(f"the key {self.key_uri} is a KMS signing key: no decryption")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._refuse_export()


_padding = padding  # the module, under a name the RSA sign's ``padding`` argument does not hide
