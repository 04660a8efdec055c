"""The client's side of the AWS IAM validator (design §6.6): sign a GetCallerIdentity request
for one CSR key and one CA with botocore's SigV4 signer, as the token of a SignCertificate call.

From Python (e.g. a Lambda function's init phase)::

    from sentryca_client.aws_iam import aws_iam_token
    token = aws_iam_token(csr_public_key, "spiffe://td/ns/default/dapr-sentry", region="us-east-1")
    # then sentryca_client.sign(chan, csr_pem, app_id, namespace, token=token,
    #                           token_validator=AWS_IAM_VALIDATOR)

The credentials come from botocore's default chain (environment, shared files, the container or
instance role) unless given. Needs ``botocore`` (the AWS SDK core), nothing of the server.
"""

from __future__ import annotations

from typing import Any

from ca_core.config.aws_iam import default_sts_endpoint
from ca_core.keys import PublicKey
from ca_core.validators.aws_iam import (
    FORM_CONTENT_TYPE,
    GET_CALLER_IDENTITY_BODY,
    KEY_HASH_HEADER,
    SERVER_ID_HEADER,
    encode_proof,
    key_hash,
)
from ca_core.validators.base import TokenValidatorKind

AWS_IAM_VALIDATOR = int(TokenValidatorKind.AWS_IAM)  # the wire number of ``token_validator``


class NoCredentials(Exception):
    """botocore's default chain found no AWS credentials."""


def aws_iam_token(
    public_key: PublicKey,
    server_id: str,
    *,
    region: str = "us-east-1",
    sts_endpoint: str | None = None,
    credentials: Any = None,
) -> str:
    """The AWS IAM proof for ``public_key`` (the CSR's) and the CA named ``server_id`` (its
    ``serverId``, by default its SPIFFE ID): a GetCallerIdentity request signed with SigV4 for
    ``region`` and the Host of ``sts_endpoint`` (default STS's regional endpoint; both must be
    the CA's). ``credentials``: botocore credentials, else the default chain. Valid 15 minutes.
    Raises NoCredentials."""
    from urllib.parse import urlsplit

    import botocore.session
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

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
