"""The AWS Secrets Manager store (``secretsmanager://NAME-OR-ARN[?kms-key-id=KEY]``).

One secret holds the whole bundle (the JSON document of ``base.encode_document``; the console's
key/value editor shows one key per item). Create is naturally conditional (``CreateSecret``
fails with ResourceExistsException). Replace is a compare-and-swap on version stages: the new
value is added as a version labelled ``SENTRYCA_PENDING`` (AWSCURRENT does not move), then
``UpdateSecretVersionStage`` moves AWSCURRENT to it *from the version this writer read*; the
service refuses that move when AWSCURRENT has meanwhile moved elsewhere (the staged version
then loses its label and is left for AWS to deprecate). The previous value
stays as AWSPREVIOUS. Reads always ask for ``VersionStage='AWSCURRENT'``. Version token: the
VersionId of AWSCURRENT. ``kms-key-id`` encrypts the secret with that KMS key (else the account's
``aws/secretsmanager`` key). The public part (no keys) is a second secret named
``<NAME>.public`` (for an ARN: the name in it, without the six-character suffix), written after
each write and repaired by ``publish_public`` (``load`` never writes: the CA publishes only a
bundle it accepted, design §5 trust continuity; and only while AWSCURRENT is still the version
read, re-checked just before the write), encrypted with the default key so readers need no KMS grant.

A secret scheduled for deletion reads as empty (its value cannot be read until it is restored),
and ``held_before`` reports it (``DescribeSecret``: ``DeletedDate``), as it reports a secret
without a current value or with earlier versions, and a public secret left behind.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from adapters import aws
from ca_core.bundle import STORE_ITEMS
from ca_core.errors import BundleError, Unavailable
from ca_core.rotation.document import public_items

from .base import StoredBundle, decode_document, encode_document

log = logging.getLogger(__name__)
CURRENT, PENDING = "AWSCURRENT", "SENTRYCA_PENDING"
SEARCHED_VERSIONS = 20  # earlier versions find_accepted reads at most


def _scheduled_for_deletion(e: Exception) -> bool:
    """Whether the SDK error says the secret is scheduled for deletion (``DeleteSecret`` with a
    recovery window): InvalidRequestException "... marked for deletion" / "marked deleted"."""
    return aws.error_code(e) == "InvalidRequestException" and "marked" in str(e) and "delet" in str(e)


def _name_of(secret_id: str) -> str:
    """The secret name in ``secret_id`` (a name, or an ARN ending in ``:secret:NAME-XXXXXX``)."""
    if secret_id.startswith("arn:"):
        name = secret_id.split(":secret:", 1)[-1]
        return name[:-7] if len(name) > 7 and name[-7] == "-" else name
    return secret_id


class SecretsManagerBundleStore:
    """A trust bundle as one Secrets Manager secret. secret_id: name or ARN; kms_key_id: KMS key
    for a secret created here; client: a boto3 client (default: from the AWS environment)."""

    def __init__(self, secret_id: str, *, kms_key_id: str | None = None, client: Any = None) -> None:
        self.secret_id, self.kms_key_id = secret_id, kms_key_id
        self.public_id = f"{_name_of(secret_id)}.public"
        self.description = f"secretsmanager://{secret_id}"
        self._client = client
        self._region = secret_id.split(":")[3] if secret_id.startswith("arn:") else None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("secretsmanager", self._region)
        return self._client

    def labels(self) -> dict[str, str]:
        return {item: f"{self.description} item {item}" for item in STORE_ITEMS}

    def _get(self, secret_id: str, doing: str) -> tuple[dict[str, bytes], str] | None:
        try:
            r = self.client.get_secret_value(SecretId=secret_id, VersionStage=CURRENT)
        except aws.sdk_errors() as e:
            if aws.error_code(e) == "ResourceNotFoundException" or _scheduled_for_deletion(e):
                return None  # a secret scheduled for deletion: held_before says so
            raise aws.unavailable(e, f"secretsmanager://{secret_id}", doing) from None
        if "SecretString" not in r:
            text: str | bytes = r.get("SecretBinary", b"")
        else:
            text = r["SecretString"]
        return decode_document(text, f"secretsmanager://{secret_id}"), r["VersionId"]

    def load_previous(self) -> StoredBundle | None:
        """The bundle labelled AWSPREVIOUS (the one before the current), or None. For the
        config-change check of trust continuity (design §5). Raises Unavailable, BundleError."""
        try:
            r = self.client.get_secret_value(SecretId=self.secret_id, VersionStage="AWSPREVIOUS")
        except aws.sdk_errors() as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return None
            raise aws.unavailable(e, self.description, "read the previous trust bundle") from None
        text = r["SecretString"] if "SecretString" in r else r.get("SecretBinary", b"")
        return StoredBundle(decode_document(text, self.description), r["VersionId"])

    def load(self) -> StoredBundle | None:
        got = self._get(self.secret_id, "read the trust bundle")
        if got is None:
            return None
        return StoredBundle(*got)

    def load_public(self) -> StoredBundle | None:
        got = self._get(self.public_id, "read the public part of the trust bundle")
        return None if got is None else StoredBundle(*got)

    def load_accepted(self) -> StoredBundle | None:
        """The record of the last accepted bundle: the public secret ``NAME.public``."""
        return self.load_public()

    def find_accepted(self, record: Mapping[str, bytes]) -> StoredBundle | None:
        """The newest earlier version (``AWSPREVIOUS`` and the versions without a stage Secrets
        Manager still keeps; at most ``SEARCHED_VERSIONS`` read) whose public part is ``record``;
        a version that cannot be read as a bundle is passed over."""
        want = dict(record)
        try:
            listed = self.client.list_secret_version_ids(SecretId=self.secret_id, IncludeDeprecated=True)
            versions = sorted(
                (v for v in listed.get("Versions", []) if CURRENT not in (v.get("VersionStages") or [])),
                key=lambda v: v.get("CreatedDate") or 0,
                reverse=True,
            )[:SEARCHED_VERSIONS]
            for v in versions:
                r = self.client.get_secret_value(SecretId=self.secret_id, VersionId=v["VersionId"])
                text = r["SecretString"] if "SecretString" in r else r.get("SecretBinary", b"")
                try:
                    items = decode_document(text, self.description)
                except BundleError:
                    continue
                if public_items(items) == want:
                    return StoredBundle(items, r["VersionId"])
        except aws.sdk_errors() as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return None
            raise aws.unavailable(e, self.description, "read the earlier trust bundle versions") from None
        return None

    def held_before(self) -> str | None:
        """The secret scheduled for deletion, or still there without a current value (with or
        without earlier versions), or its public secret ``NAME.public`` still there; None when
        neither exists."""
        found = self._describe(self.secret_id)
        if found is not None:
            if found.get("DeletedDate"):
                return (
                    f"the secret {self.secret_id} is scheduled for deletion (deleted at "
                    f"{found['DeletedDate'].isoformat()}); `aws secretsmanager restore-secret --secret-id "
                    f"{self.secret_id}` brings the bundle back as it was"
                )
            versions = found.get("VersionIdsToStages") or {}
            if versions:
                return (
                    f"the secret {self.secret_id} exists with {len(versions)} version(s), none of them "
                    "AWSCURRENT"
                )
            return f"the secret {self.secret_id} exists but holds no value (it was not created by the CA)"
        public = self._describe(self.public_id)
        if public is not None:
            return f"the public part, secret {self.public_id}, written with every bundle, is still there"
        return None

    def _describe(self, secret_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.client.describe_secret(SecretId=secret_id)
        except aws.sdk_errors() as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return None
            raise aws.unavailable(e, f"secretsmanager://{secret_id}", "describe the secret") from None
        return found

    def create(self, items: Mapping[str, bytes]) -> bool:
        args: dict[str, Any] = {
            "Name": self.secret_id,
            "SecretString": encode_document(items),
            "ClientRequestToken": str(uuid.uuid4()),
            "Description": "sentryca trust bundle (trust anchors, issuer chain and keys)",
        }
        if self.kms_key_id:
            args["KmsKeyId"] = self.kms_key_id
        try:
            self.client.create_secret(**args)
        except aws.sdk_errors() as e:
            code = aws.error_code(e)
            if code == "ResourceExistsException":
                return False
            if code == "InvalidRequestException" and "deletion" in str(e):
                raise Unavailable(
                    f"{self.description}: the secret is scheduled for deletion; restore it "
                    "(RestoreSecret) or choose another name",
                    reason="store_misconfigured",
                ) from None
            raise aws.unavailable(e, self.description, "create the trust bundle") from None
        self._write_public(items)
        return True

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        return self.replace_version(items, expected_version) is not None

    def replace_version(self, items: Mapping[str, bytes], expected_version: str) -> str | None:
        token = str(uuid.uuid4())
        try:
            self.client.put_secret_value(
                SecretId=self.secret_id,
                SecretString=encode_document(items),
                ClientRequestToken=token,
                VersionStages=[PENDING],
            )
        except aws.sdk_errors() as e:
            if aws.error_code(e) == "ResourceNotFoundException":
                return None
            raise aws.unavailable(e, self.description, "stage the new trust bundle") from None
        try:
            self.client.update_secret_version_stage(
                SecretId=self.secret_id,
                VersionStage=CURRENT,
                MoveToVersionId=token,
                RemoveFromVersionId=expected_version,
            )
        except aws.sdk_errors() as e:
            # AWSCURRENT is no longer on expected_version: another writer won. The staged
            # version keeps only the PENDING label, which the next replace moves away.
            if aws.error_code(e) in ("InvalidParameterException", "ResourceNotFoundException"):
                self._unstage(token)  # the loser's version keeps no label; AWS deprecates it
                return None
            raise aws.unavailable(e, self.description, "make the new trust bundle current") from None
        self._unstage(token)
        # The public part is not written here: it is the record of the last accepted bundle,
        # published by whoever accepted this one (``publish_public``, design §5.5).
        return token  # the ClientRequestToken is the id of the version made current

    def _unstage(self, token: str) -> None:
        try:
            self.client.update_secret_version_stage(
                SecretId=self.secret_id, VersionStage=PENDING, RemoveFromVersionId=token
            )
        except Exception as e:  # noqa: BLE001 - cosmetic: a PENDING label never serves
            log.debug("could not remove %s from %s: %s", PENDING, token, e)

    def _write_public(self, items: Mapping[str, bytes]) -> None:
        text = encode_document(public_items(items))
        try:
            try:
                self.client.put_secret_value(SecretId=self.public_id, SecretString=text)
            except aws.sdk_errors() as e:
                if aws.error_code(e) != "ResourceNotFoundException":
                    raise
                self.client.create_secret(
                    Name=self.public_id,
                    SecretString=text,
                    Description="sentryca trust bundle, public part (trust anchors and issuer chain)",
                )
        except Exception as e:  # noqa: BLE001 - the public part is derived; publish_public repairs it
            log.warning(
                "%s", aws.unavailable(e, f"secretsmanager://{self.public_id}", "write the public part")
            )

    def publish_public(self, stored: StoredBundle) -> None:
        """Repair ``NAME.public`` from ``stored`` (an accepted bundle) when it differs, only while
        AWSCURRENT is still ``stored.version``; failures are logged."""
        want = public_items(stored.items)
        try:
            got = self._get(self.public_id, "read the public part of the trust bundle")
        except Unavailable as e:
            log.warning("%s", e)
            return
        except Exception:  # noqa: BLE001 - a damaged derived copy is simply rewritten
            got = None
        if got is not None and got[0] == want:
            return
        if not self._still_current(stored.version):
            log.info(
                "%s changed while its public part was being repaired; left to the newer writer",
                self.description,
            )
            return
        log.info(
            "updating the public part secretsmanager://%s from the bundle (it no longer matched it)",
            self.public_id,
        )
        self._write_public(stored.items)

    def _still_current(self, version_id: str) -> bool:
        """Whether AWSCURRENT is still on ``version_id`` (False when it moved or cannot be
        checked: a repair is skipped rather than risk installing an older bundle)."""
        try:
            stages = self.client.describe_secret(SecretId=self.secret_id).get("VersionIdsToStages", {})
        except aws.sdk_errors() as e:
            log.warning("%s", aws.unavailable(e, self.description, "check the trust bundle's version"))
            return False
        return CURRENT in stages.get(version_id, [])
