"""The Lambda functions' slim botocore data (tools.slim_botocore) drops prose and nothing else,
and a client built on it works against a real protocol peer (moto server)."""

from __future__ import annotations

import json
import re

import botocore.loaders
import botocore.model
import pytest
from botocore import xform_name

from adapters import aws
from adapters.stores import open_store
from ca_core.bundle import generate_bundle
from ca_core.errors import ConfigError
from tools import slim_botocore

from support import REPO_ROOT
from support.aws import TEST_BUCKET


def slim_loader(path) -> botocore.loaders.Loader:
    return botocore.loaders.Loader(extra_search_paths=[str(path)], include_default_search_paths=False)


@pytest.mark.parametrize("service", slim_botocore.SERVICES)
def test_each_model_is_botocores_own_without_prose_and_unused_operations(slim_botocore_data, service):
    full = botocore.loaders.Loader()
    mine = slim_loader(slim_botocore_data)
    theirs = slim_botocore.without_prose(full.load_service_model(service, "service-2"))
    model = mine.load_service_model(service, "service-2")
    operations = slim_botocore.OPERATIONS[service]
    if operations is None:
        assert model == theirs
        assert mine.load_service_model(service, "paginators-1") == full.load_service_model(
            service, "paginators-1"
        )
    else:
        assert sorted(model["operations"]) == sorted(operations)
        assert model["metadata"] == theirs["metadata"]
        assert all(model["operations"][op] == theirs["operations"][op] for op in operations)
        assert all(theirs["shapes"][name] == shape for name, shape in model["shapes"].items())
        assert len(model["shapes"]) < len(theirs["shapes"])
    assert mine.load_service_model(service, "endpoint-rule-set-1") == full.load_service_model(
        service, "endpoint-rule-set-1"
    )
    assert model["operations"] and not any(op["documentation"] for op in model["operations"].values())
    # every shape an operation reaches resolves: botocore builds the whole input and output
    service_model = botocore.model.ServiceModel(model, service)
    for name in service_model.operation_names:
        op = service_model.operation_model(name)
        for shape in (op.input_shape, op.output_shape):
            _walk(shape, set())


def _walk(shape, seen: set[str]) -> None:
    if shape is None or shape.name in seen:
        return
    seen.add(shape.name)
    for member in getattr(shape, "members", {}).values():
        _walk(member, seen)
    for attr in ("member", "key", "value"):
        if hasattr(shape, attr) and not callable(getattr(shape, attr)):
            _walk(getattr(shape, attr), seen)


def _sdk_calls() -> set[str]:
    """Every ``client.<operation>(`` / ``.client("svc").<operation>(`` call in src/."""
    calls = set()
    for path in (REPO_ROOT / "src").rglob("*.py"):
        calls |= set(re.findall(r"client(?:\([^)]*\))?\.([a-z_]+)\(", path.read_text()))
    return calls


def test_every_sdk_call_in_the_code_is_kept(slim_botocore_data):
    calls = _sdk_calls()
    assert {"get_object", "put_secret_value", "get_parameter", "update_service"} <= calls
    full, mine = botocore.loaders.Loader(), slim_loader(slim_botocore_data)
    found = set()
    for service in slim_botocore.SERVICES:
        kept = set(mine.load_service_model(service, "service-2")["operations"])
        for op in full.load_service_model(service, "service-2")["operations"]:
            if xform_name(op) in calls:
                found.add(xform_name(op))
                assert op in kept, (service, op)
    # what is not an AWS operation: the kubernetes client, the client library, closing a client
    # and the standard library's http.client (the OIDC server reads request heads with it)
    not_aws = {
        "channel",
        "close",
        "sign",
        "verify_response",
        "diagnose",
        "sanitize_for_serialization",
        "parse_headers",
        "load_jwks",  # the client library's JWT-SVID checks (sentryca_client.jwt_svid)
        "parse_jwks",
        "verify_jwt_svids",
    }
    assert calls - found <= not_aws | {c for c in calls if not c.islower()}, calls - found


def test_endpoints_keep_every_partition_and_only_the_listed_services(slim_botocore_data):
    full = botocore.loaders.Loader().load_data("endpoints")
    mine = slim_loader(slim_botocore_data).load_data("endpoints")
    assert [p["partition"] for p in mine["partitions"]] == [p["partition"] for p in full["partitions"]]
    for a, b in zip(mine["partitions"], full["partitions"], strict=True):
        assert {k: v for k, v in a.items() if k != "services"} == {
            k: v for k, v in b.items() if k != "services"
        }
        assert a["services"] == {k: v for k, v in b["services"].items() if k in slim_botocore.SERVICES}
    assert set(mine["partitions"][0]["services"]) == set(slim_botocore.SERVICES) & set(
        full["partitions"][0]["services"]
    )


def test_the_slim_data_is_a_fraction_of_the_size(slim_botocore_data):
    full = slim_botocore.botocore_data_dir()
    size = sum(f.stat().st_size for f in slim_botocore_data.rglob("*") if f.is_file())
    source = (
        sum(f.stat().st_size for s in slim_botocore.SERVICES for f in (full / s).rglob("*") if f.is_file())
        + (full / "endpoints.json").stat().st_size
    )
    assert size < source, (size, source)


@pytest.mark.parametrize("url", [f"s3://{TEST_BUCKET}/slim/bundle.json", "secretsmanager://slim-bundle"])
def test_stores_work_on_the_slim_data(url, aws_env, monkeypatch, slim_botocore_data, tmp_path):
    monkeypatch.setenv("SENTRY_BOTOCORE_DATA", str(slim_botocore_data))
    from datetime import UTC, datetime

    store = open_store(url)
    first, items = (
        generate_bundle(
            "localhost", "spiffe://localhost/ns/default/dapr-sentry", datetime.now(UTC)
        ).to_items()
        for _ in range(2)
    )
    assert store.create(first) and not store.create(items)
    got = store.load()
    assert got is not None and got.items["ca.crt"] == first["ca.crt"]
    assert store.replace(items, got.version) and not store.replace(first, got.version)
    store.publish_public(store.load())
    assert store.load_public().items["issuer.crt"] == items["issuer.crt"]
    # the client really loaded from the slim directory
    assert (
        store.client.meta.service_model.operation_model(
            "GetObject" if url.startswith("s3") else "GetSecretValue"
        ).documentation
        == ""
    )


def test_a_service_outside_the_slim_data_is_a_clear_configuration_error(
    slim_botocore_data, monkeypatch, aws_env
):
    monkeypatch.setenv("SENTRY_BOTOCORE_DATA", str(slim_botocore_data))
    with pytest.raises(ConfigError, match=r"no model for 'dynamodb'.*slim_botocore"):
        aws.client("dynamodb")


def test_a_missing_slim_directory_falls_back_to_botocores_data(tmp_path, monkeypatch, aws_env, caplog):
    monkeypatch.setenv("SENTRY_BOTOCORE_DATA", str(tmp_path / "absent"))
    client = aws.client("s3")
    assert client.meta.service_model.operation_model("GetObject").documentation != ""
    assert "holds no botocore data" in caplog.text


def test_command_line_names_an_unknown_service(tmp_path, capsys):
    assert slim_botocore.main([str(tmp_path / "out"), "--services", "s3,no-such-service"]) == 1
    assert "no service 'no-such-service'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert slim_botocore.main([str(tmp_path / "out"), "--services", "s3"]) == 0
    assert json.loads((tmp_path / "out" / "endpoints.json").read_text())["partitions"]
