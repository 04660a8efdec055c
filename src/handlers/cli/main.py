"""The parser of every verb and the one place that turns a refusal into ``error: …`` and an
exit code (0 success; 1 the CA or store refused or could not be used; 2 bad usage or
configuration)."""

from __future__ import annotations

import argparse
import sys

from ca_core.errors import CAError, ConfigError

from . import bundle_verbs, client_verbs, rotate_verbs, serve
from .common import REFUSED, USAGE, CommandError


def build_parser() -> argparse.ArgumentParser:
    """The ``sentryca`` parser; each verb's namespace carries its handler as ``func``."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="sentryca",
        description="Workload-identity CA, wire-compatible with Dapr Sentry.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    client_verbs.add_parsers(sub)
    bundle_verbs.add_parsers(sub)
    rotate_verbs.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the verb of ``argv`` (default: ``sys.argv[1:]``); the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as e:
        message, code = e.message, e.exit_code
    except ConfigError as e:
        message, code = str(e), USAGE
    except CAError as e:
        message, code = str(e), REFUSED
    print(f"error: {message}", file=sys.stderr)
    return code
