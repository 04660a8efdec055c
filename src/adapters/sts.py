"""The AWS IAM validator's STS (design §6.6): sends a caller's signed GetCallerIdentity request to
the endpoint of the CA's configuration, within its timeout, and reads the caller's ARN.

The target is always ``settings.sts_endpoint`` with path ``/``: nothing in a proof chooses where
the request goes. At most :data:`MAX_ANSWER_BYTES` of answer are read; the whole call (connect,
send, read) is bounded by ``requestTimeout``. Unreachable, timed out, throttled (429, the
``Throttling`` code) or a 5xx → Unavailable (``aws_sts_unavailable``); a TLS connection that
fails (the chain does not reach ``caCertificate`` or the system's store, the certificate does not
name the endpoint's host, a handshake error) → Unavailable (``aws_sts_tls``); any other refusal
→ PermissionDenied naming STS's error code (never its message, nor any header of the proof).

The answer is XML from the CA's own configured STS (never a URL a caller chose), at most 64 KiB,
parsed by the standard library's expat, which refuses entity expansion bombs.
"""

from __future__ import annotations

import http.client
import ssl
import time
import xml.etree.ElementTree as ET  # nosec B405
from urllib.parse import urlsplit

from ca_core.config.aws_iam import AwsIamSettings
from ca_core.errors import PermissionDenied, Unavailable
from ca_core.validators.aws_iam import CallerIdentity, IamProof

from .tls_trust import trust_context

MAX_ANSWER_BYTES = 64 * 1024
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable"}
)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if _local(el.tag) == name:
            return (el.text or "").strip()
    return None


class StsClient:
    """:class:`ca_core.validators.aws_iam.StsPort` over HTTPS (plain HTTP for a loopback test
    endpoint). ``ssl_context``: trust for the endpoint (default: ``settings.ca_certificate``, else
    the system's store; the chain and the host name are verified). Raises ConfigError when
    ``caCertificate`` cannot be loaded."""

    def __init__(self, settings: AwsIamSettings, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(settings.sts_endpoint)
        self.scheme = parts.scheme
        self.hostname = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        default_port = 443 if self.scheme == "https" else 80
        self._host = parts.netloc if parts.port not in (None, default_port) else self.hostname
        self.timeout = settings.request_timeout.total_seconds()
        self.endpoint = settings.sts_endpoint
        self.ssl_context = ssl_context or trust_context(settings.ca_certificate, "aws-iam caCertificate")

    @property
    def host(self) -> str:
        return self._host

    def get_caller_identity(self, proof: IamProof) -> CallerIdentity:
        deadline = time.monotonic() + self.timeout
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(
                self.hostname, self.port, timeout=self.timeout, context=self.ssl_context
            )
        else:
            conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout)
        try:
            conn.request("POST", "/", body=proof.body.encode("ascii"), headers=dict(proof.headers))
            response = conn.getresponse()
            body = b""
            while len(body) <= MAX_ANSWER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = response.read1(16384)
                if not chunk:
                    break
                body += chunk
        except ssl.SSLError as e:  # before OSError, of which it is one
            if isinstance(e, ssl.SSLCertVerificationError):
                detail = f"certificate verify failed: {e.verify_message}"
            else:
                detail = e.reason or type(e).__name__
            raise Unavailable(
                f"STS at {self.endpoint}: no trusted TLS connection ({detail}); "
                "check caCertificate and the endpoint's host name",
                reason="aws_sts_tls",
            ) from None
        except (OSError, http.client.HTTPException) as e:  # TimeoutError is an OSError
            raise Unavailable(
                f"STS at {self.endpoint} cannot be reached ({type(e).__name__})", reason="aws_sts_unavailable"
            ) from None
        finally:
            conn.close()
        return self._judge(response.status, body)

    def _judge(self, status: int, body: bytes) -> CallerIdentity:
        if len(body) > MAX_ANSWER_BYTES:
            raise Unavailable(f"STS at {self.endpoint}: answer over 64 KiB", reason="aws_sts_unavailable")
        try:
            root: ET.Element | None = ET.fromstring(body)  # noqa: S314  # nosec B314
        except ET.ParseError:
            root = None
        if status == 200:
            arn = _find(root, "Arn") if root is not None else None
            account = _find(root, "Account") if root is not None else None
            if not arn or not account:
                raise Unavailable(
                    f"STS at {self.endpoint} answered 200 without an Arn and Account",
                    reason="aws_sts_unavailable",
                )
            return CallerIdentity(arn, account, (_find(root, "UserId") or "") if root is not None else "")
        code = (_find(root, "Code") if root is not None else None) or ""
        code = code if code.isascii() and code.isalnum() and len(code) <= 64 else "unknown"
        if status == 429 or status >= 500 or code in THROTTLING_CODES:
            raise Unavailable(
                f"STS at {self.endpoint} is unavailable or throttling (HTTP {status}, {code or 'no code'})",
                reason="aws_sts_unavailable",
            )
        if 400 <= status < 500:
            raise PermissionDenied(
                f"STS refused the AWS IAM proof (HTTP {status}, {code or 'no code'})",
                reason="aws_iam_sts_refused",
            )
        raise Unavailable(f"STS at {self.endpoint} answered HTTP {status}", reason="aws_sts_unavailable")
