"""Every sample event in events/ is replayed against its real handler."""

import json

from cryptography import x509
from google.protobuf import json_format

import sentryca_client as client
from sentryca_proto.sentry.v1 import sentry_pb2, sentry_pb2_grpc

from support import REPO_ROOT

EVENTS = REPO_ROOT / "events"


def test_sign_certificate_request_event_is_served(running_ca, channel_to, store_dir):
    text = (EVENTS / "sign_certificate_request.json").read_text()
    request = json_format.Parse(text, sentry_pb2.SignCertificateRequest())
    assert request.token_validator == sentry_pb2.SignCertificateRequest.INSECURE
    response = sentry_pb2_grpc.CAStub(channel_to(running_ca)).SignCertificate(request, timeout=10)
    signed = client.verify_response(response, (store_dir / "ca.crt").read_bytes())
    assert signed.spiffe_id == "spiffe://public/ns/default/myapp"
    csr = x509.load_pem_x509_csr(request.certificate_signing_request)
    assert signed.leaf.public_key() == csr.public_key()
    assert json.loads(text)["id"] == "myapp"
