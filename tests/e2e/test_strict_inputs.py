"""Inputs an attacker's test found accepted, each refused with the status of design §3.2, over a
real CA on loopback."""

import grpc
import pytest

import sentryca_client as client

from support.pki import make_csr


@pytest.mark.parametrize("trust_domain", [".", "-", "_", "a..b", "example.org."])
def test_a_trust_domain_that_is_not_dns_shaped_is_denied(running_ca, channel_to, trust_domain):
    with pytest.raises(grpc.RpcError) as e:
        client.sign(channel_to(running_ca), make_csr(), "orders", "prod", trust_domain=trust_domain)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "DNS-shaped" in e.value.details()


@pytest.mark.parametrize("trust_domain", ["public", "localhost", "example.org", "cluster.local"])
def test_dns_shaped_trust_domains_are_still_signed(running_ca, channel_to, store_dir, trust_domain):
    resp = client.sign(channel_to(running_ca), make_csr(), "orders", "prod", trust_domain=trust_domain)
    signed = client.verify_response(resp, (store_dir / "ca.crt").read_bytes(), trust_domain=trust_domain)
    assert signed.spiffe_id == f"spiffe://{trust_domain}/ns/prod/orders"
