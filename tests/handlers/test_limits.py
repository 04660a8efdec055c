"""Limits (issue 7, hardening 3): the per-caller rate limit (RESOURCE_EXHAUSTED past it) and the
gRPC concurrent-streams option, as options of the one configuration table."""

from __future__ import annotations

import grpc
import pytest

import sentryca_client as client
from ca_core.config import load_config
from ca_core.errors import ConfigError
from handlers.rate_limit import MAX_CALLERS, RateLimiter, peer_host
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.pki import make_csr


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_caller_gets_its_burst_then_refusals_until_tokens_refill():
    clock = Clock()
    limiter = RateLimiter(5, clock=clock)
    assert [limiter.allow("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("10.0.0.2")  # another caller has its own bucket
    clock.t += 0.2  # one token back at 5/s
    assert limiter.allow("10.0.0.1") and not limiter.allow("10.0.0.1")
    clock.t += 60  # never more than the burst
    assert sum(limiter.allow("10.0.0.1") for _ in range(20)) == 5


def test_zero_means_no_limit_and_configure_changes_it():
    limiter = RateLimiter(0, clock=Clock())
    assert all(limiter.allow("a") for _ in range(10_000))
    limiter.configure(1)
    assert limiter.allow("a") and not limiter.allow("a")


def test_the_table_of_callers_is_bounded():
    limiter = RateLimiter(1, clock=Clock())
    callers = [f"c{i}" for i in range(MAX_CALLERS + 50)]
    for caller in callers:
        limiter.allow(caller)  # each spends its one token
    # The table holds MAX_CALLERS callers: the newest are remembered (their buckets still empty)...
    assert [limiter.allow(caller) for caller in callers[50:]] == [False] * MAX_CALLERS
    # ...and the 50 oldest were forgotten: each starts again with a full bucket.
    assert [limiter.allow(caller) for caller in callers[:50]] == [True] * 50


@pytest.mark.parametrize(
    "peer, host",
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("unix:/tmp/s", "unix:/tmp/s"),
    ],
)
def test_peer_host(peer, host):
    assert peer_host(peer) == host


def test_rate_limit_over_grpc_is_resource_exhausted_and_counted(tmp_path):
    store = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(ca_config(store, rate_limit="0.5"))  # a burst of 1, then one every 2 s
    chan = client.channel(f"localhost:{ca.grpc_port}", (store / "ca.crt").read_bytes())
    try:
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
        with pytest.raises(grpc.RpcError) as e:
            client.sign(chan, make_csr(), "orders", "prod")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 'category="rate_limited",reason="rate_limited"' in ca.metrics.exposition().decode()
        ca.restart(ca_config(store, rate_limit="0"))  # in place: the new limit applies
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
    finally:
        chan.close()
        ca.stop(grace=0)


def test_an_identity_past_its_rate_is_refused_while_others_at_the_same_address_sign(tmp_path, caplog):
    """The second bucket (design §3.1 step 3b): per proven SPIFFE ID, checked after validation,
    so one workload cannot spend the budget of an address it shares with others."""
    store = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(ca_config(store, identity_rate_limit="0.5"))  # a burst of 1 per identity
    chan = client.channel(f"localhost:{ca.grpc_port}", (store / "ca.crt").read_bytes())
    caplog.set_level("INFO", logger="sentryca.audit")
    try:
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
        with pytest.raises(grpc.RpcError) as e:
            client.sign(chan, make_csr(), "orders", "prod")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "spiffe://" in (e.value.details() or "") and "/ns/prod/orders" in e.value.details()
        # the same peer address, other identities: each has its own bucket
        assert client.sign(chan, make_csr(), "payments", "prod").workload_certificate
        assert client.sign(chan, make_csr(), "orders", "staging").workload_certificate
        # a call refused before its identity is proven (step 1: an unknown validator) spends no
        # identity token: "cart" still signs after it
        with pytest.raises(grpc.RpcError) as e:
            client.sign(chan, make_csr(), "cart", "prod", token_validator=99)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.sign(chan, make_csr(), "cart", "prod").workload_certificate
        text = ca.metrics.exposition().decode()
        assert 'category="rate_limited",reason="identity_rate_limited"} 1.0' in text
        assert 'reason="rate_limited"' not in text  # the peer's bucket was never empty
        # every issuance's audit record names the caller's own address, not a proxy's
        peers = [r.peer for r in caplog.records if getattr(r, "event", "") == "certificate_issued"]
        assert len(peers) == 4 and all(p.startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:")) for p in peers)
        assert "sentryca_restarts_total 0.0" in text  # a start is not a restart
        ca.restart(ca_config(store, identity_rate_limit="0"))  # in place: the new limit applies
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
        assert "sentryca_restarts_total 1.0" in ca.metrics.exposition().decode()
    finally:
        chan.close()
        ca.stop(grace=0)


def test_limits_are_options_with_generous_defaults():
    cfg = load_config({}, {})
    assert cfg.rate_limit == 1000 and cfg.max_concurrent_streams == 100
    assert cfg.identity_rate_limit == 0  # off unless set (the template sets it)
    assert load_config({}, {"SENTRY_IDENTITY_RATE_LIMIT": "2"}).identity_rate_limit == 2
    cfg = load_config({"max_concurrent_streams": "8"}, {"SENTRY_RATE_LIMIT": "2.5"})
    assert cfg.rate_limit == 2.5 and cfg.max_concurrent_streams == 8


@pytest.mark.parametrize(
    "flags",
    [
        {"rate_limit": "-1"},
        {"rate_limit": "fast"},
        {"rate_limit": "inf"},
        {"identity_rate_limit": "-1"},
        {"max_concurrent_streams": "0"},
    ],
)
def test_bad_limits_are_config_errors(flags):
    with pytest.raises(ConfigError):
        load_config(flags, {})


def test_changing_max_concurrent_streams_restarts_the_grpc_server(tmp_path):
    store = tmp_path / "credentials"
    ca = CertificateAuthority()
    ca.start(ca_config(store, max_concurrent_streams="4"))
    try:
        first = ca.grpc_server
        ca.restart(ca_config(store, max_concurrent_streams="4"))
        assert ca.grpc_server is first  # unchanged: swapped in place
        ca.restart(ca_config(store, max_concurrent_streams="8"))
        assert ca.grpc_server is not first and ca.config.max_concurrent_streams == 8
        chan = client.channel(f"localhost:{ca.grpc_port}", (store / "ca.crt").read_bytes())
        assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate
        chan.close()
    finally:
        ca.stop(grace=0)
