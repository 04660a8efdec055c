"""A loopback STS double for the AWS IAM validator: it checks each request's SigV4 signature
with the secret keys it knows (botocore computes the expected signature over the signed headers,
the body and the date the request carries), the 15-minute window and the action, and answers as
STS does: the caller's ARN as GetCallerIdentity XML, or an ErrorResponse.

``tls``: (certificate file, key file) to serve HTTPS at ``https://localhost:PORT``, else plain
HTTP at ``http://127.0.0.1:PORT``. ``mode`` lets a test make it throttle (400 Throttling), fail
(503) or hang. ``requests`` records what reached it (the Host it was asked for among the
headers), ``paths`` the path of each."""

from __future__ import annotations

import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def _error(code: str, message: str) -> bytes:
    return (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    ).encode()


class StsDouble:
    """``keys``: access key id → (secret key, ARN); ``region``: the region signatures are for."""

    def __init__(
        self,
        keys: dict[str, tuple[str, str]],
        region: str = "us-east-1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.keys = keys
        self.region = region
        self.mode = "ok"
        self.requests: list[dict[str, str]] = []
        self.paths: list[str] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                double.requests.append(dict(self.headers.items()))
                double.paths.append(self.path)
                status, answer = double.answer(self.command, self.path, dict(self.headers.items()), body)
                if double.mode == "hang":
                    time.sleep(5)
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = f"{'localhost' if tls else '127.0.0.1'}:{self.port}"  # the Host proofs are signed for
        self.endpoint = f"{'https' if tls else 'http'}://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StsDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.mode == "throttle":
            return 400, _error("Throttling", "Rate exceeded")
        if self.mode == "fail":
            return 503, _error("ServiceUnavailable", "down")
        lower = {k.lower(): v for k, v in headers.items()}
        auth = lower.get("authorization", "")
        try:
            cred = auth.split("Credential=")[1].split(",")[0]
            signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
            signature = auth.split("Signature=")[1].strip()
            akid, _date, region, service, _ = cred.split("/")
        except (IndexError, ValueError):
            return 400, _error("IncompleteSignature", "bad Authorization")
        if akid not in self.keys:
            return 403, _error("InvalidClientTokenId", "unknown key")
        secret, arn = self.keys[akid]
        amz_date = lower.get("x-amz-date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return 400, _error("IncompleteSignature", "no date")
        if abs(datetime.now(UTC) - when) > timedelta(minutes=15):
            return 403, _error("SignatureDoesNotMatch", "Signature expired")
        request = AWSRequest(
            method=method,
            url=f"http://{lower.get('host', '')}{path}",
            data=body,
            headers={k: v for k, v in headers.items() if k.lower() in signed},
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(akid, secret, lower.get("x-amz-security-token")), service, region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if expected != signature or region != self.region or service != "sts":
            return 403, _error("SignatureDoesNotMatch", "The request signature we calculated does not match")
        if body != b"Action=GetCallerIdentity&Version=2011-06-15":
            return 400, _error("InvalidAction", "not GetCallerIdentity")
        account = arn.split(":")[4]
        return 200, (
            f'<GetCallerIdentityResponse xmlns="{NS}"><GetCallerIdentityResult><Arn>{arn}</Arn>'
            f"<UserId>AROAEXAMPLE:s</UserId><Account>{account}</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
        ).encode()
