"""The wire contract (design §2), read from the generated descriptors: package, names, numbers, types."""

from google.protobuf.descriptor import FieldDescriptor as F

from sentryca_proto.sentry.v1 import sentry_pb2


def test_service_and_method_path():
    service = sentry_pb2.DESCRIPTOR.services_by_name["CA"]
    assert service.full_name == "dapr.proto.sentry.v1.CA"
    method = service.methods_by_name["SignCertificate"]
    assert f"/{service.full_name}/{method.name}" == "/dapr.proto.sentry.v1.CA/SignCertificate"
    assert method.input_type.full_name == "dapr.proto.sentry.v1.SignCertificateRequest"
    assert method.output_type.full_name == "dapr.proto.sentry.v1.SignCertificateResponse"
    assert not method.client_streaming and not method.server_streaming


def fields(message):
    return {f.name: (f.number, f.type, f.is_repeated) for f in message.fields}


def test_request_fields():
    req = sentry_pb2.SignCertificateRequest.DESCRIPTOR
    assert fields(req) == {
        "id": (1, F.TYPE_STRING, False),
        "token": (2, F.TYPE_STRING, False),
        "trust_domain": (3, F.TYPE_STRING, False),
        "namespace": (4, F.TYPE_STRING, False),
        "certificate_signing_request": (5, F.TYPE_BYTES, False),
        "token_validator": (6, F.TYPE_ENUM, False),
        "jwt_audiences": (7, F.TYPE_STRING, True),
    }
    enum = req.enum_types_by_name["TokenValidator"]
    assert enum.full_name == "dapr.proto.sentry.v1.SignCertificateRequest.TokenValidator"
    assert {v.name: v.number for v in enum.values} == {
        "UNKNOWN": 0,
        "INSECURE": 1,
        "KUBERNETES": 2,
        "JWKS": 3,
    }
    assert not enum.is_closed  # open enum: unknown numbers arrive


def test_response_fields():
    resp = sentry_pb2.SignCertificateResponse.DESCRIPTOR
    got = fields(resp)
    assert got["workload_certificate"] == (1, F.TYPE_BYTES, False)
    assert got["trust_chain_certificates"] == (2, F.TYPE_BYTES, True)
    assert got["valid_until"] == (3, F.TYPE_MESSAGE, False)
    assert resp.fields_by_name["valid_until"].message_type.full_name == "google.protobuf.Timestamp"
    assert got["jwt"] == (4, F.TYPE_MESSAGE, False)
    assert resp.fields_by_name["jwt"].message_type.full_name == "google.protobuf.StringValue"
    per = resp.fields_by_name["per_audience_jwts"]
    assert per.number == 5 and per.message_type.GetOptions().map_entry
    assert per.message_type.fields_by_name["key"].type == F.TYPE_STRING
    assert per.message_type.fields_by_name["value"].message_type.full_name == "google.protobuf.StringValue"


def test_unknown_enum_numbers_survive_the_wire():
    req = sentry_pb2.SignCertificateRequest(token_validator=7)  # type: ignore[arg-type]
    again = sentry_pb2.SignCertificateRequest.FromString(req.SerializeToString())
    assert int(again.token_validator) == 7
