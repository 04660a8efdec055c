"""The rule for the CA's own TLS server certificate (design §9.1): its SANs, and who signs it.

Values in, values out: the server (``handlers.server.server_certificate``) asks here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from .bundle import certificates_pem
from .certs import IpAddress, check_issuer_valid, sign_workload
from .config import Config
from .errors import FailedPrecondition
from .keys import private_key_pem
from .validators import Identity

if TYPE_CHECKING:
    from .service import Signer


@dataclass(frozen=True)
class ServerCertificate:
    """The CA's own TLS certificate: chain PEM (leaf first), key PEM (PKCS#8), NotAfter, when to
    renew (half its life), and who signed it (``"issuer"`` or ``"root"``)."""

    chain_pem: bytes
    key_pem: bytes
    not_after: datetime
    renew_at: datetime
    signed_by: str


def server_sans(cfg: Config) -> tuple[tuple[str, ...], tuple[IpAddress, ...]]:
    """DNS and IP SANs of the server certificate (design §9.1): localhost, 127.0.0.1, ::1, a
    specific listen address, and the names the CA is reached by (``--server-names``)."""
    dns = ["localhost"]
    ips: list[IpAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for name in (cfg.listen_address, *cfg.server_names):
        addr = name.strip("[]")
        try:
            ip = ipaddress.ip_address(addr)
            if not ip.is_unspecified and ip not in ips:
                ips.append(ip)
        except ValueError:
            if addr and addr not in dns:
                dns.append(addr)
    return tuple(dns), tuple(ips)


def issue_server_certificate(signer: Signer, cfg: Config, now: datetime) -> ServerCertificate:
    """Issue the CA's TLS certificate for its own SPIFFE ID (design §9.1) with a fresh P-256 key,
    valid for the workload TTL.

    Signed by the issuer; when the issuer is not valid now but the root key is at hand, signed
    directly by the root, so clients can still reach the CA and be told FAILED_PRECONDITION.
    Raises FailedPrecondition when neither can sign.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = server_sans(cfg)
    identity = Identity(signer.policy.ca_identity)
    ttl = cfg.workload_cert_ttl
    bundle = signer.bundle
    try:
        signed = signer.issue(key.public_key(), identity, now, ttl=ttl, dns_names=dns, ip_addresses=ips)
        chain_pem, not_after, by = signed.chain_pem, signed.not_after, "issuer"
    except FailedPrecondition:
        root = bundle.anchor_for(bundle.issuer_chain[-1])
        if bundle.root_key is None or root is None:
            raise
        check_issuer_valid(root, now)
        cert = sign_workload(
            root,
            bundle.root_key,
            key.public_key(),
            identity.spiffe_id,
            now,
            ttl=ttl,
            clock_skew=cfg.allowed_clock_skew,
            dns_names=dns,
            ip_addresses=ips,
        )
        chain_pem, not_after, by = certificates_pem([cert]), cert.not_valid_after_utc, "root"
    renew_at = now + (not_after - now) / 2
    return ServerCertificate(chain_pem, private_key_pem(key), not_after, renew_at, by)
