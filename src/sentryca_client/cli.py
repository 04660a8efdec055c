"""``sentryca-client request``: the slim client distribution's console script (clients/python),
:func:`~sentryca_client.request_x509_svid` from a shell, for a machine that has the client only.
The same flags as ``sentryca request`` for an X.509 SVID (the server's CLI, with JWT-SVIDs and
its checks against a CA's own store, needs the server's packages). Exit 0 issued and written;
1 the CA refused, could not be reached, or its answer did not verify; 2 bad usage."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .files import write_file

USAGE, REFUSED = 2, 1
_VALIDATORS = {"0": 0, "insecure": 1, "selfhosted": 1, "kubernetes": 2, "jwks": 3, "aws-iam": 100}


class _Refused(Exception):
    def __init__(self, message: str, code: int = REFUSED) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def build_parser() -> argparse.ArgumentParser:
    """The ``sentryca-client`` parser (one verb, ``request``)."""
    from .svid import KEY_ALGORITHMS

    parser = argparse.ArgumentParser(
        prog="sentryca-client", allow_abbrev=False, description="Get an X.509 SVID from a sentryca CA."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "request", allow_abbrev=False, help="generate a key and CSR, have the CA sign it, verify, write"
    )
    p.add_argument("--id", required=True, help="app id")
    p.add_argument("--namespace", required=True, help="namespace")
    p.add_argument("--trust-domain", default="", help="trust domain to ask for (INSECURE/JWKS)")
    p.add_argument(
        "--token", default=os.environ.get("SENTRY_TOKEN", ""), help="identity token (or SENTRY_TOKEN)"
    )
    p.add_argument(
        "--token-file",
        default=os.environ.get("SENTRY_TOKEN_FILE") or None,
        help="read the identity token from this file (or SENTRY_TOKEN_FILE; not with --token)",
    )
    p.add_argument(
        "--token-validator",
        default="0",
        help="insecure, kubernetes, jwks, aws-iam or a number (default: the CA's)",
    )
    p.add_argument("--server", default="localhost:50001", help="CA address HOST:PORT")
    p.add_argument("--server-name", default=None, help="TLS name to expect from the CA, if not HOST")
    p.add_argument("--trust-anchors", required=True, help="PEM file of the CA's trust anchors (ca.crt)")
    p.add_argument("--out", required=True, help="directory for tls.key, tls.crt (chain) and ca.crt")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--key-algorithm", default="ecdsa-p256", choices=KEY_ALGORITHMS)
    p.add_argument("--aws-iam", action="store_true", help="prove the caller's IAM role (aws-iam validator)")
    p.add_argument(
        "--aws-region",
        default=None,
        help="the STS region the CA uses (default AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1)",
    )
    p.add_argument("--aws-sts-endpoint", default=None, help="the CA's stsEndpoint (default from the region)")
    p.add_argument("--aws-server-id", default=None, help="the CA's serverId (default: its certificate's)")
    return parser


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _Refused(f"{flag} {path}: cannot read it ({e.strerror or e})", USAGE) from None


def _token(args: argparse.Namespace) -> str:
    from .svid import TokenFileError, read_token_file

    if args.token_file is None:
        return str(args.token)
    if args.token:
        raise _Refused("--token and --token-file exclude each other", USAGE)
    try:
        return read_token_file(args.token_file)
    except TokenFileError as e:
        raise _Refused(f"--token-file {args.token_file}: {e}", USAGE) from None


def cmd_request(args: argparse.Namespace) -> int:
    """Issue, verify, then write OUT/tls.key (0600), tls.crt and ca.crt; nothing is written
    unless the answer verified. Raises _Refused."""
    import grpc
    from cryptography import x509

    from . import aws_iam, diagnose
    from .client import VerifyError
    from .explain import explain
    from .svid import request_x509_svid

    validator = _VALIDATORS.get(args.token_validator.strip().lower())
    if validator is None and args.token_validator.strip().isdigit():
        validator = int(args.token_validator)
    if validator is None:
        raise _Refused(
            f"--token-validator {args.token_validator!r}: use insecure, kubernetes, jwks, aws-iam or a "
            "number",
            USAGE,
        )
    token = _token(args)
    if args.aws_iam and token:
        raise _Refused("--aws-iam signs its own token: leave out --token and --token-file", USAGE)
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):[0-9]{1,5}", args.server):
        raise _Refused(
            f"--server {args.server}: expected HOST:PORT, e.g. localhost:50001 or [::1]:50001", USAGE
        )
    anchors = _read(args.trust_anchors, "--trust-anchors")
    try:
        x509.load_pem_x509_certificates(anchors)
    except ValueError:
        raise _Refused(f"--trust-anchors {args.trust_anchors}: no PEM certificates in it", USAGE) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _Refused(f"--out {out}: not a directory", USAGE)
    try:
        svid = request_x509_svid(
            args.server,
            anchors,
            args.id,
            args.namespace,
            trust_domain=args.trust_domain,
            token=token,
            token_validator=validator,
            aws_iam=args.aws_iam,
            aws_region=args.aws_region,
            aws_sts_endpoint=args.aws_sts_endpoint,
            aws_server_id=args.aws_server_id,
            server_name=args.server_name,
            key_algorithm=args.key_algorithm,
            timeout=args.timeout,
        )
    except grpc.RpcError as e:
        d = diagnose(e, args.server)
        raise _Refused(explain(d, args.server, args.trust_anchors, args.timeout, args.server_name)) from None
    except VerifyError as e:
        raise _Refused(f"{e}; nothing was written") from None
    except aws_iam.NoCredentials as e:
        raise _Refused(f"--aws-iam: {e}") from None
    except (OSError, ValueError) as e:  # only ca_spiffe_id raises these past the checks above
        raise _Refused(f"--aws-iam: cannot read the CA's SPIFFE ID ({e}); give --aws-server-id") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_file(out / "tls.key", svid.private_key_pem, 0o600)
        write_file(out / "tls.crt", svid.chain_pem, 0o644)
        write_file(out / "ca.crt", svid.trust_anchors_pem, 0o644)
    except OSError as e:
        raise _Refused(f"--out {out}: cannot write ({e.strerror or e})", USAGE) from None
    print(
        f"{svid.spiffe_id}\nvalid until {svid.valid_until.isoformat()}\n"
        f"written to {out}/{{tls.crt,ca.crt,tls.key}}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``sentryca-client ARGV``; the exit code. gRPC core's own log lines are kept off the
    terminal (``GRPC_VERBOSITY=NONE``, set before grpc is imported) unless GRPC_VERBOSITY or
    GRPC_TRACE is set: the error line says what failed."""
    if "grpc" not in sys.modules and not (os.environ.get("GRPC_VERBOSITY") or os.environ.get("GRPC_TRACE")):
        os.environ["GRPC_VERBOSITY"] = "NONE"
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return cmd_request(args)
    except _Refused as e:
        print(f"error: {e.message}", file=sys.stderr)
        return e.code
