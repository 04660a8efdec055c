"""``make rotation-timeline``: the picture of a root rotation (``docs/rotation-timeline.svg``),
drawn from what the project's own rotation code does (design §5.9, §5.10), not by hand.

It generates a bundle, runs ``sentryca rotate root``'s action (``ca_core.rotation.actions.
prepare_root``) at +0h, then the running CA's upkeep (``ca_core.rotation.rules.advance``) at
every expiry check over simulated time, and records each step, the state after it and the
times the state says steps fall due. A leaf signed by the old issuer as late as another CA may
still sign with it (``ca_core.policy.stale_signing_bound``) is signed for real with
``ca_core.certs.sign_workload``. The SVG (plain text: rectangles, lines and labels) shows only
times relative to the rotation and fixed labels, never a key, serial or fingerprint, so the
same settings always give the same file; a test compares the committed picture with a fresh one.

Usage: python -m tools.rotation_timeline [--out FILE] [--workload-cert-ttl 24h]
[--allowed-clock-skew 15m] [--root-propagation-window 24h] [--store-poll-interval 30s]
[--expiry-check-interval 1h]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

from ca_core.bundle import TrustBundle, fingerprint, generate_bundle
from ca_core.certs import sign_workload
from ca_core.config.loader import load_config
from ca_core.durations import format_duration
from ca_core.errors import ConfigError
from ca_core.policy import rotation_policy, signing_policy, stale_signing_bound
from ca_core.rotation.actions import prepare_root
from ca_core.rotation.rules import advance, next_step_due
from ca_core.rotation.state import EMPTY, RotationState, active_root

ROTATE_AT = datetime(2026, 1, 1, tzinfo=UTC)  # when `sentryca rotate root` runs (+0h): a fixed time
LEAD = timedelta(hours=12)  # drawn before the rotation and after the last step
# the settings pictured: the CA's defaults, with the 30 s store poll of template.yaml and deploy/
DEFAULTS = {
    "workload_cert_ttl": "24h",
    "allowed_clock_skew": "15m",
    "root_propagation_window": "24h",
    "store_poll_interval": "30s",
    "expiry_check_interval": "1h",
}
PHASES = ("prepared", "active", "retiring")


@dataclass
class Timeline:
    """What the simulation saw, in times relative to the rotation (timedelta from ROTATE_AT)."""

    settings: dict[str, str]
    end: timedelta = timedelta(0)
    steps: list[tuple[timedelta, str]] = field(default_factory=list)  # (taken at, "root activate")
    phases: dict[str, list[tuple[timedelta, timedelta, str]]] = field(default_factory=dict)
    signing: list[tuple[timedelta, timedelta, str]] = field(default_factory=list)  # issuer in force
    window: tuple[timedelta, timedelta] = (timedelta(0), timedelta(0))  # prepared → activate_after
    bound: tuple[timedelta, timedelta] = (timedelta(0), timedelta(0))  # activation → prune_after
    leaf: tuple[timedelta, timedelta] = (timedelta(0), timedelta(0))  # the old issuer's last leaf


def simulate(settings: dict[str, str] | None = None) -> Timeline:
    """Walk one manual root rotation through the rotation rules with ``settings`` (option dest →
    value as a flag takes it, over :data:`DEFAULTS`); the CA checks every expiry-check interval."""
    given = DEFAULTS | (settings or {})
    cfg = load_config(given, env={})
    policy = rotation_policy(cfg)
    tl = Timeline(settings=given)
    names: dict[str, str] = {}  # root fingerprint → "root 1", "root 2"; issuer serial → "issuer N"

    def name(kind: str, key: str) -> str:
        return names.setdefault(f"{kind}:{key}", f"{kind} {sum(k.startswith(kind) for k in names) + 1}")

    issued = ROTATE_AT - timedelta(days=30)  # a bundle in mid-life: no expiry interferes
    bundle = generate_bundle(cfg.trust_domain, signing_policy(cfg).ca_identity, issued)
    state: RotationState = EMPTY
    snapshots = [(-LEAD, _phases(bundle, state, name), _signer(bundle, name))]
    old_issuer, old_key = bundle.issuer, bundle.issuer_key
    rotation = prepare_root(bundle, state, ROTATE_AT, policy)
    bundle, state = rotation.bundle, rotation.state
    if state.prepared_root is None:  # pragma: no cover - prepare_root always prepares one
        raise RuntimeError("rotate root prepared no root")
    tl.window = (timedelta(0), state.prepared_root.activate_after - ROTATE_AT)
    tl.steps += [(timedelta(0), f"{s.kind} {s.action}") for s in rotation.steps]
    snapshots.append((timedelta(0), _phases(bundle, state, name), snapshots[-1][2]))
    now = ROTATE_AT
    while next_step_due(bundle, state, policy) is not None:
        now += cfg.expiry_check_interval
        taken = advance(bundle, state, now, policy)
        if taken is None:
            continue
        at = now - ROTATE_AT
        if any(s.action == "activate" and s.kind == "root" for s in taken.steps):
            (retiring,) = taken.state.retiring
            tl.bound = (at, retiring.prune_after - ROTATE_AT)
            late = now + stale_signing_bound(cfg)  # another CA signs with the old issuer until then
            leaf = sign_workload(
                old_issuer, old_key, old_key.public_key(), "spiffe://public/ns/default/app", late,
                ttl=cfg.workload_cert_ttl, clock_skew=cfg.allowed_clock_skew,
            )  # fmt: skip
            tl.leaf = (leaf.not_valid_before_utc - ROTATE_AT, leaf.not_valid_after_utc - ROTATE_AT)
        bundle, state = taken.bundle, taken.state
        tl.steps += [(at, f"{s.kind} {s.action}") for s in taken.steps]
        snapshots.append((at, _phases(bundle, state, name), _signer(bundle, name)))
    tl.end = now - ROTATE_AT + LEAD
    _segments(tl, snapshots)
    return tl


def _signer(bundle: TrustBundle, name) -> str:
    """The issuer in force and its root, by their labels: "issuer 1 (under root 1)"."""
    issuer = name("issuer", str(bundle.issuer.serial_number))
    return f"{issuer} (under {name('root', fingerprint(active_root(bundle)))})"


def _phases(bundle: TrustBundle, state: RotationState, name) -> dict[str, str]:
    """Each root's phase in ``bundle``/``state``: root label → prepared | active | retiring."""
    out = {name("root", fingerprint(active_root(bundle))): "active"}
    if state.prepared_root is not None:
        out[name("root", fingerprint(state.prepared_root.root))] = "prepared"
    for r in state.retiring:
        out[name("root", r.sha256)] = "retiring"
    return out


def _segments(tl: Timeline, snapshots: list[tuple[timedelta, dict[str, str], str]]) -> None:
    """Turn the snapshots (time, phases, issuer in force) into bars that run to the next one."""
    for n, (at, phases, issuer) in enumerate(snapshots):
        until = snapshots[n + 1][0] if n + 1 < len(snapshots) else tl.end
        for root, phase in phases.items():
            bars = tl.phases.setdefault(root, [])
            if bars and bars[-1][2] == phase and bars[-1][1] == at:
                bars[-1] = (bars[-1][0], until, phase)
            else:
                bars.append((at, until, phase))
        if tl.signing and tl.signing[-1][2] == issuer:
            tl.signing[-1] = (tl.signing[-1][0], until, issuer)
        else:
            tl.signing.append((at, until, issuer))


# --- the picture ---------------------------------------------------------------------------------

WIDTH, LEFT, RIGHT, ROW, GAP, TOP = 1000, 190, 20, 26, 14, 94
COLOURS = {"prepared": "#9ecae1", "active": "#3182bd", "retiring": "#bdbdbd", "leaf": "#74c476"}
LEGEND = (
    ("prepared", "prepared: a trust anchor, not signing"),
    ("active", "active: signs"),
    ("retiring", "retiring: still an anchor"),
    ("leaf", "a leaf's validity"),
)
LINE = 'stroke="#252525"'


def _hours(d: timedelta) -> str:
    h = d.total_seconds() / 3600
    return f"{h:+.0f}h" if h == int(h) else f"{h:+.2f}h"


def _text(x: float, y: float, text: str, extra: str = "") -> str:
    return f'<text x="{x}" y="{y}"{extra}>{escape(text)}</text>'


def _rect(x: float, y: float, width: float, height: float, fill: str) -> str:
    return (
        f'<rect x="{x}" y="{y}" width="{round(width, 1)}" height="{height}" fill="{fill}" {LINE} '
        'stroke-width="0.5"/>'
    )


def render(tl: Timeline) -> str:
    """The SVG text of ``tl``: one row per root and for the issuer in force and the old issuer's
    last leaf, a dashed line at each step taken, and brackets for the window and the leaf bound."""
    start = -LEAD
    scale = (WIDTH - LEFT - RIGHT) / (tl.end - start).total_seconds()

    def x(t: timedelta) -> float:
        return round(LEFT + (t - start).total_seconds() * scale, 1)

    rows: list[tuple[str, list[tuple[timedelta, timedelta, str]]]] = sorted(tl.phases.items())
    rows += [("signs new leaves", tl.signing), ("old issuer's last leaf", [(*tl.leaf, "leaf")])]
    bottom = TOP + len(rows) * (ROW + GAP)
    height = bottom + 150
    s = tl.settings
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(10, 20, "A root rotation, as ca_core.rotation takes it", ' font-size="15" font-weight="bold"'),
        _text(
            10,
            38,
            "sentryca rotate root at +0h; then the CA takes the steps due at each expiry check "
            f"(every {s['expiry_check_interval']}).",
        ),
        _text(
            10,
            54,
            f"Workload TTL {s['workload_cert_ttl']}, clock skew {s['allowed_clock_skew']}, root propagation "
            f"window {s['root_propagation_window']}, store poll {s['store_poll_interval']}.",
        ),
    ]
    for n, (at, label) in enumerate(tl.steps):  # a dashed line per step, labels staggered above
        out.append(f'<line x1="{x(at)}" y1="{TOP - 16}" x2="{x(at)}" y2="{bottom}" stroke="#636363" '
                   'stroke-dasharray="4 3"/>')  # fmt: skip
        out.append(_text(x(at) + 3, TOP - 4 - 13 * (n % 2), f"{label} ({_hours(at)})"))
    for n, (label, bars) in enumerate(rows):
        y = TOP + 8 + n * (ROW + GAP)
        out.append(_text(10, y + ROW / 2 + 4, label))
        for a, b, phase in bars:
            colour = COLOURS.get(phase, COLOURS["active"])  # the issuer in force signs: active
            text = "the last leaf issuer 1 may sign" if phase == "leaf" else phase
            ink = ' fill="white"' if colour == COLOURS["active"] else ""
            out += [_rect(x(a), y, x(b) - x(a), ROW, colour), _text(x(a) + 4, y + ROW / 2 + 4, text, ink)]
    y = bottom + 20
    brackets = (
        (tl.window, f"propagation window {format_duration(tl.window[1] - tl.window[0])}: new root trusted, "
                    "not signing"),
        (tl.bound, f"leaf bound {format_duration(tl.bound[1] - tl.bound[0])} = TTL + skew + store poll: "
                   "root 1 stays an anchor, then the next check prunes it"),
    )  # fmt: skip
    for n, ((a, b), text) in enumerate(brackets):
        yy = y + 30 * n
        out.append(f'<path d="M{x(a)},{yy - 6} V{yy} H{x(b)} V{yy - 6}" fill="none" {LINE}/>')
        if x(a) + 4 + 6.5 * len(text) < WIDTH - RIGHT:  # about 6.5 px a character at 12 px
            out.append(_text(x(a) + 4, yy + 14, text))
        else:  # it would run off the right: end it where its bracket ends
            out.append(_text(x(b), yy + 14, text, ' text-anchor="end"'))
    y += 70
    out.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" {LINE}/>')
    t = start
    while t <= tl.end:
        out.append(f'<line x1="{x(t)}" y1="{y}" x2="{x(t)}" y2="{y + 5}" {LINE}/>')
        out.append(_text(x(t), y + 18, _hours(t), ' text-anchor="middle"'))
        t += timedelta(hours=12)
    lx = 10.0
    for phase, text in LEGEND:  # each entry after the last one's text (about 6.5 px a character)
        out += [_rect(lx, y + 32, 14, 14, COLOURS[phase]), _text(lx + 20, y + 44, text)]
        lx += 20 + 6.5 * len(text) + 30
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rotation_timeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="-", help="SVG file to write (default: standard output)")
    for dest, default in DEFAULTS.items():
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    try:
        svg = render(simulate(args))
    except ConfigError as e:  # a setting the CA would refuse too
        print(f"rotation_timeline: {e}", file=sys.stderr)
        return 2
    if out == "-":
        sys.stdout.write(svg)
    else:
        Path(out).write_text(svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
