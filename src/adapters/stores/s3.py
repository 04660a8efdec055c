"""The S3 store (``s3://BUCKET/KEY[?kms-key-id=KEY]``).

The bundle is one object at KEY (the JSON document of ``base.encode_document``), so a bundle is
replaced as a whole. Create is conditional (``IfNoneMatch='*'``), replace is a compare-and-swap
on the ETag (``IfMatch``); both answer 412 (or 409 for a concurrent conditional write) when
another writer won. Objects are encrypted at rest: SSE-S3 (AES256) by default, SSE-KMS with
``kms-key-id``. The public part (``ca.crt`` and ``issuer.crt``, no key) is its own object at
``KEY.public`` (SSE-S3, so readers need no KMS grant), written after each successful write and
repaired by ``publish_public`` when it disagrees with the bundle, never the other way. ``load``
never writes: the CA publishes only a bundle it accepted (a bundle that parses may still be
refused for trust continuity, design §5), and only while it is still the version read
(``HeadObject`` ETag re-checked just before the write, so it never installs an older one).
Use a versioned bucket: every replaced bundle stays recoverable, and a deleted one leaves a
delete marker, which ``held_before`` reports (``ListObjectVersions``, IAM
``s3:ListBucketVersions``), as it reports a public part left behind. Version token: the bundle
object's ETag.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from adapters import aws
from ca_core.bundle import STORE_ITEMS
from ca_core.errors import BundleError, Unavailable
from ca_core.rotation.document import public_items

from .base import StoredBundle, decode_document, encode_document

log = logging.getLogger(__name__)
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_BUNDLE_ETAG = "sentryca-bundle-etag"
SEARCHED_VERSIONS = 20  # earlier versions find_accepted reads at most


class S3BundleStore:
    """A trust bundle as one S3 object. bucket, key: where; kms_key_id: SSE-KMS key (id, ARN or
    alias) or None for SSE-S3; client: a boto3 S3 client (default: from the AWS environment)."""

    def __init__(self, bucket: str, key: str, *, kms_key_id: str | None = None, client: Any = None) -> None:
        self.bucket, self.key, self.kms_key_id = bucket, key, kms_key_id
        self.public_key = f"{key}.public"
        self.description = f"s3://{bucket}/{key}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("s3")
        return self._client

    def labels(self) -> dict[str, str]:
        return {item: f"{self.description} item {item}" for item in STORE_ITEMS}

    def _get(self, key: str, doing: str) -> tuple[bytes, dict[str, Any]] | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=key)
            return r["Body"].read(), r
        except aws.sdk_errors() as e:
            if aws.error_code(e) in ("NoSuchKey", "404"):
                return None
            raise aws.unavailable(e, f"s3://{self.bucket}/{key}", doing) from None

    def load(self) -> StoredBundle | None:
        got = self._get(self.key, "read the trust bundle")
        if got is None:
            return None
        body, r = got
        items = decode_document(body, self.description)
        return StoredBundle(items, r["ETag"])

    def load_public(self) -> StoredBundle | None:
        got = self._get(self.public_key, "read the public part of the trust bundle")
        if got is None:
            return None
        body, r = got
        items = decode_document(body, f"s3://{self.bucket}/{self.public_key}")
        return StoredBundle(items, r.get("Metadata", {}).get(_BUNDLE_ETAG, r["ETag"]))

    def _earlier_versions(self) -> list[dict]:
        """The bundle object's non-current versions, newest first (one ListObjectVersions call;
        raises the SDK's errors)."""
        r = self.client.list_object_versions(Bucket=self.bucket, Prefix=self.key)
        return sorted(
            (v for v in r.get("Versions", []) if v["Key"] == self.key and not v.get("IsLatest")),
            key=lambda v: v["LastModified"],
            reverse=True,
        )

    def load_previous(self) -> StoredBundle | None:
        """The bundle as it was before the current version (the newest non-current object
        version of a versioned bucket), or None when there is none. For the config-change check
        of trust continuity (design §5). Raises Unavailable, BundleError."""
        try:
            versions = self._earlier_versions()
            if not versions:
                return None
            got = self.client.get_object(Bucket=self.bucket, Key=self.key, VersionId=versions[0]["VersionId"])
        except aws.sdk_errors() as e:
            raise aws.unavailable(e, self.description, "read the previous trust bundle version") from None
        return StoredBundle(decode_document(got["Body"].read(), self.description), got["ETag"])

    def load_accepted(self) -> StoredBundle | None:
        """The record of the last accepted bundle: the public part ``KEY.public``."""
        return self.load_public()

    def find_accepted(self, record: Mapping[str, bytes]) -> StoredBundle | None:
        """The newest earlier version of the bundle object (at most ``SEARCHED_VERSIONS`` read)
        whose public part is ``record``; a version that cannot be read as a bundle is passed
        over."""
        want = dict(record)
        try:
            for v in self._earlier_versions()[:SEARCHED_VERSIONS]:
                got = self.client.get_object(Bucket=self.bucket, Key=self.key, VersionId=v["VersionId"])
                try:
                    items = decode_document(got["Body"].read(), self.description)
                except BundleError:
                    continue
                if public_items(items) == want:
                    return StoredBundle(items, got["ETag"])
        except aws.sdk_errors() as e:
            raise aws.unavailable(e, self.description, "read the earlier trust bundle versions") from None
        return None

    def held_before(self) -> str | None:
        """Earlier versions of the bundle object or a delete marker (a versioned bucket keeps
        both), or the public part ``KEY.public`` still there; None when neither shows."""
        try:
            r = self.client.list_object_versions(Bucket=self.bucket, Prefix=self.key)
        except aws.sdk_errors() as e:
            raise aws.unavailable(
                e, self.description, "list the bundle object's versions (s3:ListBucketVersions)"
            ) from None
        # sorted by key, so the bundle's own entries come before KEY.public's
        versions = [v for v in r.get("Versions", []) if v.get("Key") == self.key]
        markers = [m for m in r.get("DeleteMarkers", []) if m.get("Key") == self.key]
        found = []
        if markers:
            latest = max(markers, key=lambda m: m["LastModified"])
            found.append(f"it was deleted at {latest['LastModified'].isoformat()} (a delete marker)")
        if versions:
            found.append(
                f"the bucket keeps {len(versions)} earlier version(s) of it (restore one by copying it "
                "over the key, or import a backup)"
            )
        if found:
            return f"s3://{self.bucket}/{self.key} held a trust bundle: " + "; ".join(found)
        if self._get(self.public_key, "read the public part of the trust bundle") is not None:
            return (
                f"the public part s3://{self.bucket}/{self.public_key}, written with every bundle, "
                "is still there"
            )
        return None

    def _sse(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _put(self, items: Mapping[str, bytes], condition: dict[str, str], doing: str) -> str | None:
        try:
            r = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=encode_document(items).encode(),
                ContentType="application/json",
                **self._sse(),
                **condition,
            )
        except aws.sdk_errors() as e:
            if aws.error_code(e) in _LOST_RACE or (
                condition.get("IfMatch") and aws.error_code(e) == "NoSuchKey"
            ):
                return None
            raise aws.unavailable(e, self.description, doing) from None
        return r["ETag"]

    def _write_public(self, items: Mapping[str, bytes], etag: str) -> None:
        public = public_items(items)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.public_key,
                Body=encode_document(public).encode(),
                ContentType="application/json",
                ServerSideEncryption="AES256",
                Metadata={_BUNDLE_ETAG: etag},
            )
        except aws.sdk_errors() as e:
            log.warning(
                "%s", aws.unavailable(e, f"s3://{self.bucket}/{self.public_key}", "write the public part")
            )

    def publish_public(self, stored: StoredBundle) -> None:
        """Repair ``KEY.public`` from ``stored`` (an accepted bundle) when it differs, only while
        the bundle object's ETag is still ``stored.version``; failures are logged."""
        try:
            got = self._get(self.public_key, "read the public part of the trust bundle")
        except Unavailable as e:
            log.warning("%s", e)
            return
        want = public_items(stored.items)
        if got is not None:
            try:
                if decode_document(got[0], self.public_key) == want:
                    return
            except Exception:  # noqa: BLE001 - a damaged derived copy is simply rewritten
                log.debug("public part unreadable; rewriting it")
        if not self._still_current(stored.version):
            log.info(
                "%s changed while its public part was being repaired; left to the newer writer",
                self.description,
            )
            return
        log.info(
            "updating the public part s3://%s/%s from the bundle (it no longer matched it)",
            self.bucket,
            self.public_key,
        )
        self._write_public(stored.items, stored.version)

    def _still_current(self, etag: str) -> bool:
        """Whether the bundle object's ETag is still ``etag`` (False when it changed, is gone or
        cannot be checked: a repair is skipped rather than risk installing an older bundle)."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"] == etag
        except aws.sdk_errors() as e:
            log.warning("%s", aws.unavailable(e, self.description, "check the trust bundle's version"))
            return False

    def create(self, items: Mapping[str, bytes]) -> bool:
        etag = self._put(items, {"IfNoneMatch": "*"}, "create the trust bundle")
        if etag is None:
            return False
        self._write_public(items, etag)
        return True

    def replace(self, items: Mapping[str, bytes], expected_version: str) -> bool:
        return self.replace_version(items, expected_version) is not None

    def replace_version(self, items: Mapping[str, bytes], expected_version: str) -> str | None:
        # The public part is not written here: it is the record of the last accepted bundle,
        # published by whoever accepted this one (``publish_public``, design §5.5). The answer:
        # the object's ETag, which load() reports.
        return self._put(items, {"IfMatch": expected_version}, "replace the trust bundle")
