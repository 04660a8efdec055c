"""A restart swaps only what changed (design §8.3–8.5): validators whose settings are unchanged are
kept (their key caches and API clients with them); a store poll applies the content it read
without reading the store again; a rotation step this CA wrote is put in force from the items it
wrote, under the version token the store answered, without reading the store back. Store reads
are counted through a real file store."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.stores import FileBundleStore, StoredBundle
from ca_core.bundle import parse_bundle
from ca_core.config import Config, load_config
from ca_core.policy import ValidatorSettings
from ca_core.rotation.actions import prepare_root
from ca_core.rotation.state import EMPTY, RotationPolicy
from ca_core.validators import TokenValidatorKind
from handlers import composition
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.jwks_server import SigningKey, jwks
from support.pki import NOW, bundle_with_issuer_window, reissued
from support.wait import wait_until

DAY = timedelta(days=1)


class CountingStore(FileBundleStore):
    """A real file store that counts its reads: ``loads`` (every ``load()``), ``reads_of``
    (version → loads that returned it) and, for each version published once accepted,
    how many loads had returned it by then (``reads_when_accepted``)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.loads = 0
        self.reads_of: Counter[str] = Counter()
        self.reads_when_accepted: dict[str, int] = {}

    def load(self) -> StoredBundle | None:
        stored = super().load()
        self.loads += 1
        if stored is not None:
            self.reads_of[stored.version] += 1
        return stored

    def publish_public(self, stored: StoredBundle) -> None:
        # Called by a restart once it accepted ``stored`` (design §5.5).
        self.reads_when_accepted.setdefault(stored.version, self.reads_of[stored.version])
        super().publish_public(stored)


@pytest.fixture
def counting_store(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingStore]:
    """The store every CA of the test builds (``composition.build_store``)."""
    store = CountingStore(store_dir)
    monkeypatch.setattr(composition, "build_store", lambda cfg, url=None: store)
    yield store


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def jwks_config(tmp_path: Path, min_refresh: str = "1s", **flags: str) -> Config:
    """A test CA's Config whose only validator is JWKS over a key set in a file."""
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(jwks(SigningKey("k1", "ES256"))))
    f = tmp_path / f"config-{min_refresh}.yaml"
    f.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n"
        f"      - name: jwks\n        options:\n          source: {keys}\n"
        f"          minRefreshInterval: {min_refresh}\n"
    )
    return load_config(
        {
            "issuer_credentials": str(tmp_path / "credentials"),
            "port": "0",
            "healthz_port": "0",
            "metrics_port": "0",
            "mode": "standalone",
            "config": str(f),
            **flags,
        },
        {},
        lambda name: Path(name).read_text(),
    )


# --- (a) validators ---------------------------------------------------------------------------


def test_the_validator_settings_are_those_build_validators_reads(tmp_path):
    base = ca_config(tmp_path / "credentials")
    same = ValidatorSettings.of(base)
    unrelated = {
        "workload_cert_ttl": "2h",
        "rate_limit": "5",
        "port": "50002",
        "store_poll_interval": "1s",
        "listen_address": "::1",  # still loopback only: INSECURE needs no opt-in either way
    }
    for flag, value in unrelated.items():
        assert ValidatorSettings.of(ca_config(tmp_path / "credentials", **{flag: value})) == same, flag
    relevant = {
        "mode": "kubernetes",
        "kubeconfig": "/etc/kubeconfig",
        "token_audience": "other",
        "trust_domain": "example.org",
        "allow_insecure_on_network": "true",
        "listen_address": "0.0.0.0",  # reachable from a network: INSECURE's opt-in applies
    }
    for flag, value in relevant.items():
        assert ValidatorSettings.of(ca_config(tmp_path / "credentials", **{flag: value})) != same, flag
    assert ValidatorSettings.of(base.with_changes(namespace="sentry")) != same  # from $NAMESPACE
    jwks_one = ValidatorSettings.of(jwks_config(tmp_path, "1s"))
    assert jwks_one == ValidatorSettings.of(jwks_config(tmp_path, "1s"))
    assert jwks_one != ValidatorSettings.of(jwks_config(tmp_path, "2s")) != same


def test_a_store_poll_restart_keeps_the_running_validators(tmp_path, store_dir):
    ca = CertificateAuthority()
    ca.start(jwks_config(tmp_path, store_poll_interval="1s"))
    try:
        before = dict(ca.signer.validators)
        first = ca.signer.bundle
        store = FileBundleStore(store_dir)
        stored = store.load()
        new = reissued(parse_bundle(stored.items), datetime.now(UTC), lifetime=timedelta(days=100))
        assert store.replace(new.to_items(), stored.version)
        wait_until(lambda: ca.signer.bundle.issuer == new.issuer, "the poll applies the new issuer")
        assert ca.signer.bundle is not first
        assert set(ca.signer.validators) == {TokenValidatorKind.JWKS}
        assert ca.signer.validators[TokenValidatorKind.JWKS] is before[TokenValidatorKind.JWKS]
    finally:
        ca.stop(grace=0)


def test_a_restart_keeps_validators_unless_their_settings_change(tmp_path):
    ca = CertificateAuthority()
    ca.start(jwks_config(tmp_path))
    try:
        first = ca.signer.validators[TokenValidatorKind.JWKS]
        ca.restart(jwks_config(tmp_path, workload_cert_ttl="2h"))  # an unrelated setting
        assert ca.signer.validators[TokenValidatorKind.JWKS] is first
        assert ca.signer.policy.workload_ttl == timedelta(hours=2)
        ca.restart(jwks_config(tmp_path, "2s"))  # the JWKS settings change
        replaced = ca.signer.validators[TokenValidatorKind.JWKS]
        assert replaced is not first
        ca.restart(ca_config(tmp_path / "credentials"))  # no JWKS: INSECURE, the standalone default
        assert set(ca.signer.validators) == {TokenValidatorKind.INSECURE}
        assert ca.readiness()[0]
    finally:
        ca.stop(grace=0)


# --- (b), (c) store reads -----------------------------------------------------------------------


def test_a_store_poll_reads_the_store_once_to_apply_a_new_version(counting_store, store_dir):
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, store_poll_interval="1s"))
    try:
        stored = FileBundleStore(store_dir).load()
        new = reissued(parse_bundle(stored.items), datetime.now(UTC), lifetime=timedelta(days=100))
        assert FileBundleStore(store_dir).replace(new.to_items(), stored.version)
        v2 = FileBundleStore(store_dir).load().version
        wait_until(lambda: ca.signer.bundle.issuer == new.issuer, "the poll applies the new issuer")
        # The poll's one read was all it took: accepted (and published) with no second load.
        assert counting_store.reads_when_accepted[v2] == 1
    finally:
        ca.stop(grace=0)


def test_a_rotation_step_is_put_in_force_from_what_was_written_without_reading_it_back(
    counting_store, store_dir
):
    # The prepared root's activation falls due (the active chain expired): one step to write.
    bundle = bundle_with_issuer_window(NOW - 100 * DAY, NOW + DAY, NOW)
    prepared = prepare_root(bundle, EMPTY, NOW, RotationPolicy(propagation_window=30 * DAY))
    assert FileBundleStore(store_dir).create(prepared.items())
    ca = CertificateAuthority(clock=Clock(NOW + 3 * DAY))
    ca.start(ca_config(store_dir))
    try:
        loads = counting_store.loads
        assert ca.rotate_if_due()
        assert counting_store.loads == loads  # the written step was not read back
        served = ca.signer.bundle
        assert served.trust_anchors == (prepared.state.prepared_root.root,)
        assert served.issuer == prepared.state.prepared_root.issuer_chain[0]
        # Accepted under the version token the store holds now, having read it zero times.
        stored = FileBundleStore(store_dir).load()  # another store object: not counted
        assert parse_bundle(stored.items).issuer == served.issuer
        assert counting_store.reads_when_accepted[stored.version] == 0
    finally:
        ca.stop(grace=0)


def test_a_rotation_step_lost_to_another_writer_loads_the_store_once(counting_store, store_dir):
    bundle = bundle_with_issuer_window(NOW - 100 * DAY, NOW + DAY, NOW)
    prepared = prepare_root(bundle, EMPTY, NOW, RotationPolicy(propagation_window=30 * DAY))
    assert FileBundleStore(store_dir).create(prepared.items())
    clock = Clock(NOW + 3 * DAY)
    replicas = [CertificateAuthority(clock=clock), CertificateAuthority(clock=clock)]
    for ca in replicas:
        ca.start(ca_config(store_dir))
    try:
        assert replicas[0].rotate_if_due()  # wins, reads nothing back
        loads = counting_store.loads
        assert not replicas[1].rotate_if_due()  # loses the conditional write
        assert counting_store.loads == loads + 1  # and loads the winner's bundle once
        assert replicas[1].signer.bundle.issuer == replicas[0].signer.bundle.issuer
    finally:
        for ca in replicas:
            ca.stop(grace=0)
