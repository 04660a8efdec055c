import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca_core.errors import PermissionDenied
from ca_core.spiffe_id import SpiffeId, app_id_problem, namespace_problem, trust_domain_problem


@pytest.mark.parametrize(
    "td", ["public", "localhost", "cluster.local", "example.org", "a-b_c.d0", "x" * 255, "1.2.3.4"]
)
def test_valid_trust_domains(td):
    assert trust_domain_problem(td) is None


@pytest.mark.parametrize(
    "td, words",
    [
        ("", "empty"),
        ("Example.org", "lowercase"),
        ("exa mple", "lowercase"),
        ("example.org/path", "lowercase"),
        ("spiffe://example.org", "lowercase"),
        ("x" * 256, "255"),
        ("exämple", "lowercase"),
        (".", "DNS-shaped"),
        ("-", "DNS-shaped"),
        ("_", "DNS-shaped"),
        ("a..b", "DNS-shaped"),
        ("example.org.", "DNS-shaped"),
        (".example.org", "DNS-shaped"),
        ("-a.org", "DNS-shaped"),
        ("a_.org", "DNS-shaped"),
    ],
)
def test_invalid_trust_domains(td, words):
    assert words in trust_domain_problem(td)


@pytest.mark.parametrize("app_id", ["myapp", "my-app_2", "A" * 64, "dapr-sentry"])
def test_valid_app_ids(app_id):
    assert app_id_problem(app_id) is None


@pytest.mark.parametrize(
    "app_id, words",
    [("", "empty"), ("my.app", "'.'"), ("a" * 65, "64"), ("a/b", "characters"), ("a b", "characters")],
)
def test_invalid_app_ids(app_id, words):
    assert words in app_id_problem(app_id)


@pytest.mark.parametrize("ns", ["default", "dapr-system", "a", "a1-b2", "x" * 63])
def test_valid_namespaces(ns):
    assert namespace_problem(ns) is None


@pytest.mark.parametrize("ns", ["", "Default", "-a", "a-", "a_b", "a.b", "x" * 64])
def test_invalid_namespaces(ns):
    assert namespace_problem(ns) is not None


def test_spiffe_id_format_and_parse_round_trip():
    sid = SpiffeId.for_workload("example.org", "prod", "orders")
    assert str(sid) == "spiffe://example.org/ns/prod/orders"
    assert SpiffeId.parse(str(sid)) == sid


def test_for_workload_reports_every_problem_at_once():
    with pytest.raises(PermissionDenied) as e:
        SpiffeId.for_workload("Bad TD", "Bad_NS", "bad.id")
    message = str(e.value)
    assert "trust domain" in message and "namespace" in message and "app id" in message


@pytest.mark.parametrize(
    "uri",
    ["https://example.org/ns/a/b", "spiffe://example.org/a/b", "spiffe://example.org/ns/a", "spiffe://"],
)
def test_parse_rejects_other_shapes(uri):
    with pytest.raises(ValueError):
        SpiffeId.parse(uri)


@given(st.text(max_size=300))
def test_checks_never_crash_on_arbitrary_text(text):
    for check in (trust_domain_problem, app_id_problem, namespace_problem):
        result = check(text)
        assert result is None or isinstance(result, str)
