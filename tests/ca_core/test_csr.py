"""CSR parsing (design §3 step 4): every bad input is an InvalidRequest with a reason."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from ca_core.csr import parse_csr
from ca_core.errors import InvalidRequest

from support.openssl import run_openssl
from support.pki import make_csr, make_key


@pytest.mark.parametrize("kind", ["p256", "p384", "ed25519", "rsa2048", "rsa3072"])
def test_accepted_key_types(kind):
    key = make_key(kind)
    csr = parse_csr(make_csr(key))
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("kind, reason", [("rsa1024", "csr_key_type"), ("p521", "csr_key_type")])
def test_refused_key_types(kind, reason):
    with pytest.raises(InvalidRequest) as e:
        parse_csr(make_csr(make_key(kind)))
    assert e.value.reason == reason
    assert "accepted" in str(e.value)


def test_legacy_certificate_pem_type_holding_a_csr_is_accepted():
    pem = make_csr().replace(b"CERTIFICATE REQUEST", b"CERTIFICATE")
    assert b"BEGIN CERTIFICATE-----" in pem
    assert isinstance(parse_csr(pem), x509.CertificateSigningRequest)


def _pem(der: bytes) -> bytes:
    return serialization_pem("CERTIFICATE REQUEST", der)


def serialization_pem(label: str, der: bytes) -> bytes:
    import base64

    return (
        f"-----BEGIN {label}-----\n".encode() + base64.encodebytes(der) + f"-----END {label}-----\n".encode()
    )


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)


def _spki(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_tampered_signature_is_refused():
    der = bytearray(_der(make_csr()))
    der[-1] ^= 0x01  # last byte of the signature's s value
    with pytest.raises(InvalidRequest) as e:
        parse_csr(_pem(bytes(der)))
    assert e.value.reason == "csr_signature"


def test_csr_whose_key_did_not_sign_it_is_refused():
    """The CSR names key B but was signed by key A: proof of possession fails."""
    key_a, key_b = make_key(), make_key()
    der = _der(make_csr(key_a))
    assert _spki(key_a) in der
    swapped = der.replace(_spki(key_a), _spki(key_b))
    with pytest.raises(InvalidRequest) as e:
        parse_csr(_pem(swapped))
    assert e.value.reason == "csr_signature"


@pytest.mark.parametrize(
    "pem, reason",
    [
        (b"", "csr_empty"),
        (b"hello, I am not PEM", "csr_not_pem"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "csr_wrong_pem_type"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
            "csr_unparseable",
        ),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
            "csr_unparseable",
        ),
    ],
)
def test_malformed_inputs(pem, reason):
    with pytest.raises(InvalidRequest) as e:
        parse_csr(pem)
    assert e.value.reason == reason
    assert str(e.value).startswith("invalid CSR: ")


def test_two_pem_blocks_are_refused():
    with pytest.raises(InvalidRequest, match="one PEM block"):
        parse_csr(make_csr() + make_csr())


def test_truncated_csr_is_refused():
    pem = make_csr()
    lines = pem.splitlines()
    truncated = b"\n".join(lines[:3] + lines[-1:]) + b"\n"
    with pytest.raises(InvalidRequest):
        parse_csr(truncated)


_VALID = make_csr()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash(data):
    try:
        parse_csr(data)
    except InvalidRequest:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(_VALID) - 1), st.integers(min_value=0, max_value=255))
def test_single_byte_corruptions_are_accepted_only_if_still_a_valid_csr(pos, value):
    data = bytearray(_VALID)
    data[pos] = value
    try:
        csr = parse_csr(bytes(data))
    except InvalidRequest:
        return
    assert csr.is_signature_valid


# DER of the signatureAlgorithm OIDs (same length, so a byte swap keeps the structure valid).
_ECDSA_SHA256 = bytes.fromhex("06082a8648ce3d040302")
_ECDSA_SHA224 = bytes.fromhex("06082a8648ce3d040301")
_ECDSA_SHA384 = bytes.fromhex("06082a8648ce3d040303")


def test_ecdsa_csr_claiming_an_unaccepted_hash_is_refused():
    der = _der(make_csr())
    assert der.count(_ECDSA_SHA256) == 1
    with pytest.raises(InvalidRequest) as e:
        parse_csr(_pem(der.replace(_ECDSA_SHA256, _ECDSA_SHA224)))
    assert e.value.reason == "csr_signature"


def test_ecdsa_csr_claiming_another_hash_than_it_was_signed_with_is_refused():
    der = _der(make_csr())
    with pytest.raises(InvalidRequest) as e:
        parse_csr(_pem(der.replace(_ECDSA_SHA256, _ECDSA_SHA384)))
    assert e.value.reason == "csr_signature"


def openssl_csr(tmp_path, algorithm: str) -> bytes:
    """A CSR made by the OpenSSL CLI for a new ``algorithm`` key (2048-bit RSA kinds)."""
    key, csr = tmp_path / "key.pem", tmp_path / "csr.pem"
    r = run_openssl(
        "req", "-new", "-newkey", algorithm, "-pkeyopt", "rsa_keygen_bits:2048", "-nodes",
        "-keyout", str(key), "-subj", "/CN=orders", "-out", str(csr),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return csr.read_bytes()


def test_rsa_pss_restricted_key_is_refused(tmp_path):
    with pytest.raises(InvalidRequest) as e:
        parse_csr(openssl_csr(tmp_path, "rsa-pss"))
    assert e.value.reason == "csr_key_type" and "RSASSA-PSS" in str(e.value)


def test_openssl_rsa_key_is_accepted(tmp_path):
    parse_csr(openssl_csr(tmp_path, "rsa"))
