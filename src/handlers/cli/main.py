"""The parser of every verb and the one place that turns a refusal into ``error: …`` and an
exit code (0 success; 1 the CA or store refused or could not be used; 2 bad usage or
configuration)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ca_core.errors import CAError, ConfigError

from . import bundle_verbs, client_verbs, health_verbs, rotate_verbs, serve
from .common import REFUSED, USAGE, CommandError

_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # a value, as argparse reads it


class _VersionAction(argparse.Action):
    """``--version``: the package version and the wire protocol, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``sentryca VERSION (wire protocol dapr.proto.sentry.v1.CA, …)``: the installed
    distribution's version (``unknown`` when run from a source tree that is not installed) and
    the gRPC service of the generated code (design §2)."""
    from importlib import metadata

    from sentryca_proto.sentry.v1 import sentry_pb2

    try:
        version = metadata.version("sentryca")
    except metadata.PackageNotFoundError:
        version = "unknown"
    services = ", ".join(s.full_name for s in sentry_pb2.DESCRIPTOR.services_by_name.values())
    return f"sentryca {version} (wire protocol {services}, as Dapr Sentry)"


def build_parser() -> argparse.ArgumentParser:
    """The ``sentryca`` parser; each verb's namespace carries its handler as ``func``."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="sentryca",
        description="Workload-identity CA, wire-compatible with Dapr Sentry.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and the wire protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    client_verbs.add_parsers(sub)
    bundle_verbs.add_parsers(sub)
    rotate_verbs.add_parsers(sub)
    health_verbs.add_parser(sub)
    return parser


def refuse_unknown_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit 2 through the verb's own parser (its usage, then ``error: unrecognized argument
    --app-id (did you mean --id?)``) at the first flag the verb does not know, before argparse
    would report a required flag missing instead. Arguments after ``--`` are not flags."""
    for arg in argv:
        if arg == "--":
            return
        if arg.startswith("-") and len(arg) > 1 and not _NEGATIVE_NUMBER.match(arg):
            flag = arg.split("=", 1)[0]
            known = parser._option_string_actions
            if flag not in known:
                near = difflib.get_close_matches(flag, [o for o in known if o.startswith("--")], n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                parser.error(f"unrecognized argument {flag}{hint}")
            continue
        verbs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if verbs is not None and arg in verbs.choices:
            parser = verbs.choices[arg]  # the rest belongs to this verb


def quiet_grpc(command: str) -> None:
    """Keep gRPC core's own log lines (``I1201 … ssl_transport_security.cc …``) off a CLI user's
    terminal: ``GRPC_VERBOSITY=NONE``, or ``ERROR`` for ``serve``, whose operator needs a
    failure to bind. Set in this process's environment before grpc is imported (workers
    inherit it); left alone when the user set GRPC_VERBOSITY or GRPC_TRACE (not empty: an empty one
    means gRPC's default, INFO, a line per failed handshake), or grpc is loaded."""
    if "grpc" in sys.modules or os.environ.get("GRPC_VERBOSITY") or os.environ.get("GRPC_TRACE"):
        return
    os.environ["GRPC_VERBOSITY"] = "ERROR" if command == "serve" else "NONE"


def main(argv: list[str] | None = None) -> int:
    """Run the verb of ``argv`` (default: ``sys.argv[1:]``); the process exit code. A reader
    of stdout that goes away (``sentryca inspect | head -1``) ends the verb quietly, without a
    traceback: its exit code when it had finished, else 0 (every verb prints after acting, so
    only output was lost: the reader chose to stop reading)."""
    code = 0
    try:
        try:
            code = _parse_and_run(sys.argv[1:] if argv is None else argv)
        finally:  # also after argparse's exit (--help, --version, usage errors)
            sys.stdout.flush()
    except BrokenPipeError:
        # stdout's reader is gone: nothing more can be said there, and the interpreter's
        # final flush must not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _parse_and_run(argv: list[str]) -> int:
    parser = build_parser()
    refuse_unknown_flags(parser, argv)
    args = parser.parse_args(argv)
    quiet_grpc(args.command)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except CommandError as e:
        message, code = e.message, e.exit_code
    except ConfigError as e:
        message, code = str(e), USAGE
    except CAError as e:
        message, code = str(e), REFUSED
    print(f"error: {message}", file=sys.stderr)
    return code
