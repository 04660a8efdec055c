"""The client's side of the AWS IAM validator (design §6.6): sign a GetCallerIdentity request
for one CSR key and one CA with botocore's SigV4 signer, as the token of a SignCertificate call.

From Python (e.g. a Lambda function's init phase)::

    from sentryca_client.aws_iam import aws_iam_token
    token = aws_iam_token(csr_public_key, "spiffe://td/ns/default/dapr-sentry", region="us-east-1")
    # then sentryca_client.sign(chan, csr_pem, app_id, namespace, token=token,
    #                           token_validator=AWS_IAM_VALIDATOR)

The credentials come from botocore's default chain (environment, shared files, the container or
instance role) unless given. Needs ``botocore`` (the AWS SDK core: the client distribution's
``aws`` extra), nothing of the server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# The client's side of the proof's wire format (design §6.6). The CA's side is
# ca_core.validators.aws_iam (parse_proof); the client does not import it, so that the slim
# client distribution (clients/python) carries none of the server's packages. The names and
# values are the CA's, and tests hold them equal (tests/sentryca_client/test_library.py).
AWS_IAM_VALIDATOR = 100  # the wire number of ``token_validator`` (this project's extension)
SERVER_ID_HEADER = "X-Sentryca-Server-Id"
KEY_HASH_HEADER = "X-Sentryca-Csr-Key-Sha256"
GET_CALLER_IDENTITY_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


def default_region() -> str:
    """The STS region a proof is signed for when none is given: ``AWS_REGION``, else
    ``AWS_DEFAULT_REGION``, else ``us-east-1`` (the command lines' ``--aws-region`` default)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def default_sts_endpoint(region: str) -> str:
    """STS's regional endpoint in the ``aws`` partition, as the CA's default ``stsEndpoint``."""
    return f"https://sts.{region}.amazonaws.com"


def key_hash(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of ``public_key``'s SubjectPublicKeyInfo DER, lowercase hex: the value of
    :data:`KEY_HASH_HEADER`."""
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def encode_proof(method: str, headers: dict[str, str], body: str) -> str:
    """The token of a signed request: base64url, unpadded, of the JSON object
    ``{"method", "headers", "body"}`` (no URL: the CA sends it to its own STS endpoint)."""
    doc = json.dumps({"method": method, "headers": headers, "body": body}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


class NoCredentials(Exception):
    """botocore's default chain found no AWS credentials."""


def aws_iam_token(
    public_key: CertificatePublicKeyTypes,
    server_id: str,
    *,
    region: str | None = None,
    sts_endpoint: str | None = None,
    credentials: Any = None,
) -> str:
    """The AWS IAM proof for ``public_key`` (the CSR's) and the CA named ``server_id`` (its
    ``serverId``, by default its SPIFFE ID): a GetCallerIdentity request signed with SigV4 for
    ``region`` (default :func:`default_region`) and the Host of ``sts_endpoint`` (default STS's
    regional endpoint; both must be the CA's). ``credentials``: botocore credentials, else the
    default chain. Valid 15 minutes. Raises NoCredentials."""
    from urllib.parse import urlsplit

    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    region = region or default_region()
    endpoint = sts_endpoint or default_sts_endpoint(region)
    if credentials is None:
        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise NoCredentials(
                "no AWS credentials found (environment, shared files, container or instance role)"
            )
    headers = {
        "Host": urlsplit(endpoint).netloc,
        "Content-Type": FORM_CONTENT_TYPE,
        SERVER_ID_HEADER: server_id,
        KEY_HASH_HEADER: key_hash(public_key),
    }
    request = AWSRequest(
        method="POST", url=endpoint.rstrip("/") + "/", data=GET_CALLER_IDENTITY_BODY, headers=headers
    )
    SigV4Auth(credentials, "sts", region).add_auth(request)
    return encode_proof("POST", {k: str(v) for k, v in request.headers.items()}, GET_CALLER_IDENTITY_BODY)


def ca_spiffe_id(
    server: str, anchors_pem: bytes, server_name: str | None = None, timeout: float = 10.0
) -> str:
    """The SPIFFE ID in the TLS certificate of the CA at ``server`` (HOST:PORT), the handshake
    verified against ``anchors_pem`` and ``server_name`` (default HOST): the default ``serverId``
    a proof must carry. Raises OSError (ssl.SSLError included) when no verified handshake is made,
    ValueError when the certificate carries no single SPIFFE ID."""
    import socket
    import ssl

    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    context = ssl.create_default_context(cadata=anchors_pem.decode("ascii"))
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=server_name or host) as tls,
    ):
        cert = tls.getpeercert() or {}
    sans: Any = cert.get("subjectAltName", ())
    uris = [v for k, v in sans if k == "URI" and str(v).startswith("spiffe://")]
    if len(uris) != 1:
        raise ValueError(f"the CA's certificate carries {len(uris)} SPIFFE IDs, expected one")
    return str(uris[0])
