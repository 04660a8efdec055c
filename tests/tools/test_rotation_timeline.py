"""docs/rotation-timeline.svg is what the rotation code does (tools.rotation_timeline): the
committed picture equals a fresh rendering, and the times it shows are the rules' own."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

from tools import rotation_timeline as rt

from support import REPO_ROOT

PICTURE = REPO_ROOT / "docs" / "rotation-timeline.svg"
H = timedelta(hours=1)


def test_the_committed_picture_is_a_fresh_rendering_of_the_rotation_code():
    assert PICTURE.read_text() == rt.render(rt.simulate()), (
        "docs/rotation-timeline.svg no longer shows what the rotation code does: run "
        "`make rotation-timeline` and commit the result"
    )
    assert "tools.rotation_timeline --out docs/rotation-timeline.svg" in (REPO_ROOT / "Makefile").read_text()


def test_the_steps_fall_when_the_rules_take_them():
    tl = rt.simulate()  # window 24h, TTL 24h, skew 15m, store poll 30s, a check every hour
    assert tl.steps == [(0 * H, "root prepare"), (24 * H, "root activate"), (49 * H, "root prune")]
    assert tl.window == (0 * H, 24 * H)
    bound = timedelta(hours=24, minutes=15, seconds=30)  # TTL + skew + store poll (design §5.10)
    assert tl.bound == (24 * H, 24 * H + bound)
    assert tl.phases["root 1"] == [(-12 * H, 24 * H, "active"), (24 * H, 49 * H, "retiring")]
    assert tl.phases["root 2"] == [(0 * H, 24 * H, "prepared"), (24 * H, tl.end, "active")]
    assert [(a, b, who) for a, b, who in tl.signing] == [
        (-12 * H, 24 * H, "issuer 1 (under root 1)"),
        (24 * H, tl.end, "issuer 2 (under root 2)"),
    ]
    # the old issuer's last leaf: signed by a CA that has not polled yet, backdated by the skew;
    # it expires inside the bound, and the root it chains to is pruned only after it
    signed = 24 * H + timedelta(seconds=30)
    assert tl.leaf == (signed - timedelta(minutes=15), signed + 24 * H)
    assert tl.leaf[1] <= tl.bound[1] <= 49 * H


def test_other_settings_move_the_steps():
    """Without a store poll the bound counts the expiry-check interval; a longer window delays
    the activation; the prune waits for the first check after the bound."""
    tl = rt.simulate({"root_propagation_window": "36h", "store_poll_interval": "0s"})
    bound = timedelta(hours=25, minutes=15)  # 24h + 15m + 1h
    assert tl.bound == (36 * H, 36 * H + bound)
    assert tl.steps == [(0 * H, "root prepare"), (36 * H, "root activate"), (62 * H, "root prune")]
    svg = rt.render(tl)
    assert "propagation window 36h0m0s" in svg and "leaf bound 25h15m0s" in svg
    assert "store poll 0s" in svg


def test_the_rendering_holds_no_random_value_and_is_well_formed():
    first, second = rt.render(rt.simulate()), rt.render(rt.simulate())  # new keys and serials each time
    assert first == second
    assert not re.search(r"[0-9a-f]{12,}", first)  # no serial or fingerprint
    root = ET.fromstring(first)
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for label in ("root 1", "root 2", "prepared", "retiring", "root activate (+24h)", "root prune (+49h)"):
        assert any(label in t for t in texts), label


def test_the_command_writes_the_file_and_refuses_a_setting_the_ca_refuses(tmp_path, capsys):
    out = tmp_path / "t.svg"
    assert rt.main(["--out", str(out), "--workload-cert-ttl", "12h"]) == 0
    assert "Workload TTL 12h" in out.read_text()
    assert rt.main(["--root-propagation-window", "800h"]) == 2
    assert "root" in capsys.readouterr().err.lower()
