from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca_core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24h", timedelta(hours=24)),
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("300ms", timedelta(milliseconds=300)),
        ("2us", timedelta(microseconds=2)),
        ("2µs", timedelta(microseconds=2)),
        ("0", timedelta(0)),
        ("-5m", timedelta(minutes=-5)),
        ("8760h", timedelta(days=365)),
    ],
)
def test_go_syntax(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "1d", "h", "1h 30m", "ten minutes", "1.h.5", "--1h"])
def test_rejects_non_go_syntax(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "delta, text",
    [(timedelta(hours=24), "24h0m0s"), (timedelta(minutes=15), "15m0s"), (timedelta(seconds=1.5), "1.5s")],
)
def test_format_like_go(delta, text):
    assert format_duration(delta) == text


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_format_then_parse_is_identity(microseconds):
    delta = timedelta(microseconds=microseconds)
    assert parse_duration(format_duration(delta)) == delta
