"""Publishing the OIDC discovery document and the JWKS to S3 (design §9.9), for cloud federation
without a server: an AWS IAM OIDC identity provider (or another cloud's workload identity
federation) reads ``<provider URL>/.well-known/openid-configuration`` and the JWKS from the
bucket, which a bucket policy opens for public read of just those two keys.

The bucket is its own (never the trust bundle's: the configuration refuses that). Writes are
idempotent: an object that already holds the bytes is not written again. The JWKS is written
before the discovery document that names it. SDK errors become ``Unavailable`` with a reason
(``aws.unavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from adapters import aws
from ca_core.oidc import CACHE_CONTROL, JWKS_PATH

log = logging.getLogger(__name__)


class S3DocumentPublisher:
    """The documents under ``prefix`` in ``bucket`` (``prefix/.well-known/openid-configuration``,
    ``prefix/jwks.json``; no prefix: at the bucket's root). client: a boto3 S3 client (default:
    from the AWS environment)."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix + '/' if self.prefix else ''}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("s3")
        return self._client

    def key(self, name: str) -> str:
        """The object key of the document ``name`` (a path below the issuer, no leading '/')."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def publish(self, documents: Mapping[str, bytes]) -> list[str]:
        """Write each of ``documents`` (name → bytes, e.g. ``ca_core.oidc.issuer_documents``) whose
        object does not hold those bytes already, the JWKS first; returns the keys written (none:
        everything was published already). Raises Unavailable (nothing is rolled back: a second
        call completes it)."""
        jwks_name = JWKS_PATH.lstrip("/")
        written = []
        for name in sorted(documents, key=lambda n: n != jwks_name):
            key, body = self.key(name), documents[name]
            if self._stored(key) == body:
                continue
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    CacheControl=CACHE_CONTROL,
                    ServerSideEncryption="AES256",  # SSE-S3: public readers need no KMS grant
                )
            except aws.sdk_errors() as e:
                raise aws.unavailable(e, f"s3://{self.bucket}/{key}", "publish the OIDC document") from None
            written.append(key)
        return written

    def _stored(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when there is no such object."""
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except aws.sdk_errors() as e:
            if aws.error_code(e) in ("NoSuchKey", "404"):
                return None
            raise aws.unavailable(
                e, f"s3://{self.bucket}/{key}", "read the published OIDC document"
            ) from None
