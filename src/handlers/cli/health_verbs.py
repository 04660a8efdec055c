"""``sentryca healthcheck``: ask a running CA's ``/healthz`` (or ``/livez``) whether it is ready,
for container health checks (the Dockerfile's ``HEALTHCHECK``) and scripts. It imports no gRPC
and makes one HTTP request with a short timeout."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request

from ca_core.config import SERVE_OPTIONS, add_options, load_config
from ca_core.errors import ConfigError

from .common import REFUSED, USAGE, CommandError

# compared with --listen-address, never bound
_ANY_V4 = "0.0.0.0"  # noqa: S104  # nosec B104


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``healthcheck``."""
    p = sub.add_parser(
        "healthcheck",
        allow_abbrev=False,
        help="exit 0 when the CA's /healthz says ready, 1 when not ready or unreachable",
    )
    add_options(p, tuple(o for o in SERVE_OPTIONS if o.flag in ("healthz-port", "listen-address")))
    p.add_argument(
        "--url",
        help="the URL to ask (default http://127.0.0.1:<--healthz-port>/healthz; the host follows "
        "--listen-address when it is not a wildcard or loopback one)",
    )
    p.add_argument(
        "--live", action="store_true", help="ask /livez (is the process alive) instead of /healthz"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.set_defaults(func=cmd_healthcheck)


def default_url(args: argparse.Namespace) -> str:
    """``--url``, or the CA's own /healthz (/livez with ``--live``) from ``--healthz-port`` and
    ``--listen-address`` over the SENTRY_* environment. Raises ConfigError."""
    if args.url:
        return str(args.url)
    names = ("SENTRY_HEALTHZ_PORT", "SENTRY_LISTEN_ADDRESS")
    flags = argparse.Namespace(healthz_port=args.healthz_port, listen_address=args.listen_address)
    # only these two variables: a healthcheck must not fail on a setting it does not read
    cfg = load_config(flags, {k: v for k, v in os.environ.items() if k in names})
    address = cfg.listen_address
    if address in ("", _ANY_V4, "127.0.0.1"):
        host = "127.0.0.1"
    elif address in ("::", "::1"):
        host = "[::1]"
    else:
        host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{cfg.healthz_port}/{'livez' if args.live else 'healthz'}"


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """0 and ``ready: URL`` when the answer is 200 and its JSON does not say ``"ready": false``;
    CommandError (1) naming what is not ready or why nothing answered; (2) a bad URL or flag."""
    try:
        url = default_url(args)
    except ConfigError as e:
        raise CommandError(str(e), USAGE) from None
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--url {url}: expected an http:// or https:// URL", USAGE)
    try:
        # http(s) only, checked above
        with urllib.request.urlopen(url, timeout=args.timeout) as r:  # noqa: S310  # nosec B310
            status, body = r.status, r.read(65536)
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read(65536)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CommandError(f"unreachable: {url}: {reason}", REFUSED) from None
    try:
        details = json.loads(body)
    except ValueError:
        details = None
    if status == 200 and not (isinstance(details, dict) and details.get("ready") is False):
        print(f"{'alive' if args.live else 'ready'}: {url}")
        return 0
    raise CommandError(f"not ready: {url}: HTTP {status}{_why(details)}", REFUSED)


def _why(details: object) -> str:
    """``; grpc: not serving; …`` from a /healthz body's ``not_ready`` list, or ``""``."""
    if not isinstance(details, dict):
        return ""
    parts = [f"{name}: {details.get(name, '?')}" for name in details.get("not_ready") or ()]
    if not parts and details.get("ca"):
        parts = [f"ca: {details['ca']}"]
    return "".join(f"; {p}" for p in parts)
