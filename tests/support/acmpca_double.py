"""A loopback double of AWS Private CA speaking its wire protocol (AWS JSON 1.1: ``POST /`` with
``X-Amz-Target: ACMPrivateCA.<Operation>``), reached by botocore through an endpoint URL.

moto's ``issue_certificate`` handles only root and end-entity templates (a subordinate gets no
basicConstraints, the validity is ignored, nothing is ever pending or throttled), so this double
signs as Private CA's ``SubordinateCACertificate_PathLen0/V1`` template says, with a real key: the
subject from the CSR (whose signature is checked), basicConstraints CA:TRUE pathlen 0 (critical),
keyUsage keyCertSign, cRLSign, digitalSignature (critical), SKI from the CSR's key, AKI from the
CA's; the validity the request asks for (``ABSOLUTE``), refused past the CA's own NotAfter. The
CA is a subordinate under a root (``hierarchy="subordinate"``, the chain then holds both) or a root
itself. Faults are scripted: answers of ``IssueCertificate`` and ``GetCertificate`` replaced by
an error code (``fail``), each certificate pending for its first ``pending_polls`` polls, and a
stall (:meth:`AcmPcaDouble.stall`: every request is accepted and read, then answered only at
:meth:`AcmPcaDouble.release`; ``holding`` is set once one is held, ``held`` counts them). Every
call is recorded (``calls``: operation names in order, a held one once answered).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TEMPLATE = "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
REGION, ACCOUNT = "us-east-1", "123456789012"
HASHES = {"SHA256WITHECDSA": hashes.SHA256, "SHA384WITHECDSA": hashes.SHA384}


def _ca(name: str, key, parent=None, parent_key=None, *, days: int, path_length=None) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    issuer = parent.subject if parent is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent_key.public_key()), critical=False
        )
    return builder.sign(parent_key or key, hashes.SHA256())


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(True, False, False, False, False, True, True, False, False)


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class AcmPcaDouble:
    """Start with :meth:`start` (or as a context manager); ``endpoint`` for botocore's
    ``endpoint_url`` / ``AWS_ENDPOINT_URL_ACM_PCA``; ``ca_arn`` the CA's ARN; ``root`` the trust
    anchor, ``ca`` the issuing CA's certificate; ``issued`` the certificates issued so far."""

    def __init__(self, *, hierarchy: str = "subordinate", days: int = 3650, pending_polls: int = 0) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca("Example Root CA", self.root_key, days=days + 1)
        if hierarchy == "subordinate":
            self.ca_key = ec.generate_private_key(ec.SECP256R1())
            self.ca = _ca(
                "Example Issuing CA", self.ca_key, self.root, self.root_key, days=days, path_length=1
            )
            self.chain: tuple[x509.Certificate, ...] = (self.root,)
        else:
            self.ca_key, self.ca, self.chain = self.root_key, self.root, ()
        self.ca_arn = f"arn:aws:acm-pca:{REGION}:{ACCOUNT}:certificate-authority/{uuid.uuid4()}"
        self.pending_polls = pending_polls
        self.fail: dict[str, deque[str]] = defaultdict(deque)  # operation -> error codes to answer, in turn
        self.state = "ACTIVE"
        self.calls: list[str] = []
        self.requests: list[dict[str, Any]] = []  # IssueCertificate bodies
        self.issued: dict[str, x509.Certificate] = {}
        self._polls: dict[str, int] = defaultdict(int)
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._answering = threading.Event()  # clear: stalled
        self._answering.set()
        self.holding = threading.Event()  # a request is held unanswered (or was, until released)
        self.held = 0  # requests held unanswered now
        self.held_in_all = 0  # requests held since the start

    # --- the stall ----------------------------------------------------------------------------

    def stall(self) -> None:
        """From now on accept and read every request, and say nothing until :meth:`release`."""
        self.holding.clear()
        self._answering.clear()

    def release(self) -> None:
        """Answer the requests held, and every later one at once."""
        self._answering.set()

    def _hold(self) -> None:
        if self._answering.is_set():
            return
        with self._lock:
            self.held += 1
            self.held_in_all += 1
        self.holding.set()
        self._answering.wait()
        with self._lock:
            self.held -= 1

    # --- the server ---------------------------------------------------------------------------

    def start(self) -> AcmPcaDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                double._hold()
                target = self.headers.get("X-Amz-Target", "")
                status, answer = double._answer(target, body, self.headers)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (its read timeout) while held
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> AcmPcaDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def upstream(self) -> str:
        return "acm-pca://" + self.ca_arn

    # --- the protocol -------------------------------------------------------------------------

    def _answer(self, target: str, body: bytes, headers: Any) -> tuple[int, dict[str, Any]]:
        prefix = "ACMPrivateCA."
        if not target.startswith(prefix) or "application/x-amz-json-1.1" not in headers.get(
            "Content-Type", ""
        ):
            return 400, {
                "__type": "UnknownOperationException",
                "message": f"not ACM PCA JSON 1.1: {target!r}",
            }
        if "AWS4-HMAC-SHA256" not in headers.get("Authorization", ""):
            return 400, {"__type": "MissingAuthenticationTokenException", "message": "unsigned request"}
        operation = target[len(prefix) :]
        with self._lock:
            self.calls.append(operation)
            if self.fail[operation]:
                code = self.fail[operation].popleft()
                return (403 if code == "AccessDeniedException" else 400), {
                    "__type": code,
                    "message": f"scripted {code}",
                }
            try:
                request = json.loads(body or b"{}")
                if request.get("CertificateAuthorityArn") != self.ca_arn:
                    return 400, {
                        "__type": "ResourceNotFoundException",
                        "message": "no such certificate authority",
                    }
                handler = getattr(self, "_" + operation, None)
                if handler is None:
                    return 400, {"__type": "UnknownOperationException", "message": operation}
                return handler(request)
            except _Refused as e:
                return 400, {"__type": e.code, "message": str(e)}

    def _GetCertificateAuthorityCertificate(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = {"Certificate": _pem(self.ca)}
        if self.chain:
            answer["CertificateChain"] = _pem(*self.chain)
        return 200, answer

    def _IssueCertificate(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.state != "ACTIVE":
            raise _Refused("InvalidStateException", f"The certificate authority is {self.state}")
        if request.get("TemplateArn") != TEMPLATE:
            raise _Refused("InvalidArgsException", f"this double signs only {TEMPLATE}")
        token = request.get("IdempotencyToken")
        if token and token in self._tokens:
            return 200, {"CertificateArn": self._tokens[token]}
        try:
            csr = x509.load_pem_x509_csr(base64.b64decode(request["Csr"]))
        except ValueError:
            raise _Refused("MalformedCSRException", "the CSR cannot be parsed") from None
        if not csr.is_signature_valid:
            raise _Refused("MalformedCSRException", "the CSR's signature is not valid")
        algorithm = HASHES.get(request.get("SigningAlgorithm", ""))
        if algorithm is None:
            raise _Refused("InvalidArgsException", "SigningAlgorithm does not match the CA's key")
        not_after = self._absolute(request["Validity"])
        not_before = (
            self._absolute(request["ValidityNotBefore"])
            if "ValidityNotBefore" in request
            else datetime.now(UTC)
        )
        if not_after > self.ca.not_valid_after_utc:
            raise _Refused("ValidationException", "the validity exceeds that of the certificate authority")
        key = csr.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.ca.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False
            )
            .sign(self.ca_key, algorithm())
        )
        arn = f"{self.ca_arn}/certificate/{cert.serial_number:040x}"
        self.issued[arn] = cert
        self.requests.append(request)
        if token:
            self._tokens[token] = arn
        return 200, {"CertificateArn": arn}

    def _GetCertificate(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        arn = request.get("CertificateArn", "")
        if arn not in self.issued:
            raise _Refused("ResourceNotFoundException", "no such certificate")
        self._polls[arn] += 1
        if self._polls[arn] <= self.pending_polls:
            raise _Refused("RequestInProgressException", "The request is still in progress")
        return 200, {"Certificate": _pem(self.issued[arn]), "CertificateChain": _pem(self.ca, *self.chain)}

    @staticmethod
    def _absolute(validity: dict[str, Any]) -> datetime:
        if validity.get("Type") != "ABSOLUTE":
            raise _Refused("InvalidArgsException", "this double reads only ABSOLUTE validity")
        return datetime.fromtimestamp(int(validity["Value"]), UTC)


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
