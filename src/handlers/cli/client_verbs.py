"""``sentryca request`` and ``sentryca sign``: have a running CA sign a CSR over gRPC (design §2,
§3), verify the answer with ``sentryca_client`` and write the result to ``--out``."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from ca_core.keys import KeyAlgorithm
from ca_core.validators import TokenValidatorKind
from sentryca_client.files import write_file

from .client_errors import connection_error, read_trust_anchors, store_in
from .common import REFUSED, USAGE, CommandError


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``request`` and ``sign``."""
    p = sub.add_parser(
        "request",
        allow_abbrev=False,
        help="generate a key and CSR, have the CA sign it, verify and write the result",
    )
    _client_args(p, with_csr=False)
    p.add_argument("--key-algorithm", default="ecdsa-p256", help="ecdsa-p256 (default), ecdsa-p384, ed25519")
    p.set_defaults(func=cmd_request)
    p = sub.add_parser(
        "sign", allow_abbrev=False, help="have the CA sign a CSR made elsewhere, verify and write the result"
    )
    _client_args(p, with_csr=True)
    p.set_defaults(func=cmd_sign)


def _client_args(p: argparse.ArgumentParser, with_csr: bool) -> None:
    if with_csr:
        p.add_argument("--csr", required=True, help="PEM CSR file (made e.g. with openssl req)")
    p.add_argument("--id", required=True, help="app id")
    p.add_argument("--namespace", required=True, help="namespace")
    p.add_argument(
        "--trust-domain", default="", help="trust domain to ask for (INSECURE/JWKS; default public)"
    )
    p.add_argument(
        "--token", default=os.environ.get("SENTRY_TOKEN", ""), help="identity token (or SENTRY_TOKEN)"
    )
    p.add_argument(
        "--token-file",
        default=os.environ.get("SENTRY_TOKEN_FILE") or None,
        help="read the identity token from this file when the call is made, e.g. a projected "
        "service-account token or a CI job's OIDC token (or SENTRY_TOKEN_FILE; not with --token)",
    )
    p.add_argument(
        "--token-validator",
        default="0",
        help="insecure, kubernetes, jwks, aws-iam or a number (default: the CA's)",
    )
    p.add_argument(
        "--server", default="localhost:50001", help="CA address HOST:PORT (default localhost:50001)"
    )
    p.add_argument("--server-name", default=None, help="TLS name to expect from the CA, if not HOST")
    p.add_argument("--trust-anchors", required=True, help="PEM file of the CA's trust anchors (ca.crt)")
    p.add_argument(
        "--out",
        required=True,
        help="directory for tls.crt (chain) and ca.crt" + ("" if with_csr else " and tls.key"),
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument(
        "--jwt-audience",
        action="append",
        default=[],
        metavar="AUDIENCE",
        help="ask for JWT-SVIDs for this audience too (repeatable); they are verified and written "
        "to --out as jwt.token and jwt-AUDIENCE.token",
    )
    p.add_argument(
        "--jwks", help="the JWK Set verifying the JWT-SVIDs: a file, or an https:// URL (e.g. jwks.json)"
    )
    p.add_argument(
        "--jwks-ca", help="PEM file of the CAs trusted for an https:// --jwks (default: the system's)"
    )
    p.add_argument(
        "--trust-bundle-store",
        help="without --jwks: read the JWK Set from this store's public part (the URL `serve` takes)",
    )
    p.add_argument("--kubeconfig", help="Kubernetes API access for a kubernetes:// --trust-bundle-store")
    _aws_iam_args(p)


def _aws_iam_args(p: argparse.ArgumentParser) -> None:
    """The AWS IAM proof flags (design §6.6): the token is signed here from the default AWS
    credential chain, for the CA's STS region and endpoint and its server id."""
    g = p.add_argument_group("AWS IAM (the CA's aws-iam validator)")
    g.add_argument(
        "--aws-iam",
        action="store_true",
        help="prove the caller's IAM role: sign a GetCallerIdentity request as the token "
        "(token validator aws-iam)",
    )
    g.add_argument(
        "--aws-region",
        default=None,
        help="the STS region the CA uses (default AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1)",
    )
    g.add_argument("--aws-sts-endpoint", default=None, help="the CA's stsEndpoint (default from the region)")
    g.add_argument(
        "--aws-server-id",
        default=None,
        help="the CA's serverId (default: the SPIFFE ID of the CA's TLS certificate)",
    )


def _token(args: argparse.Namespace) -> str:
    """The identity token: ``--token``, or the content of ``--token-file`` read now (so a token
    its issuer renews in the file is current), surrounding whitespace stripped. Raises CommandError
    (usage) when both are given, the file cannot be read, or it holds no token."""
    path = args.token_file
    if path is None:
        return str(args.token)
    if args.token:
        raise CommandError(
            "--token and --token-file exclude each other (SENTRY_TOKEN, SENTRY_TOKEN_FILE)", USAGE
        )
    from sentryca_client.svid import TokenFileError, read_token_file

    try:
        return read_token_file(path)
    except TokenFileError as e:
        raise CommandError(f"--token-file {path}: {e}", USAGE) from None


def _aws_iam_token(args: argparse.Namespace, csr_key: object, anchors: bytes) -> tuple[str, int]:
    """(token, validator number) for ``--aws-iam``. Raises CommandError."""
    from sentryca_client import aws_iam

    if args.token or args.token_file:
        raise CommandError(
            "--aws-iam signs its own token: leave out --token / SENTRY_TOKEN and --token-file", USAGE
        )
    server_id = args.aws_server_id
    if server_id is None:
        try:
            server_id = aws_iam.ca_spiffe_id(args.server, anchors, args.server_name, min(args.timeout, 10.0))
        except (OSError, ValueError) as e:
            raise CommandError(
                f"--aws-iam: cannot read the CA's SPIFFE ID from its TLS certificate ({e}); give "
                "--aws-server-id",
                REFUSED,
            ) from None
    try:
        token = aws_iam.aws_iam_token(
            csr_key,  # type: ignore[arg-type]
            server_id,
            region=args.aws_region,
            sts_endpoint=args.aws_sts_endpoint,
        )
    except aws_iam.NoCredentials as e:
        raise CommandError(f"--aws-iam: {e}", REFUSED) from None
    return token, aws_iam.AWS_IAM_VALIDATOR


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign ``--csr``; writes tls.crt and ca.crt. Raises CommandError (1 refused, 2 usage)."""
    try:
        csr_pem = Path(args.csr).read_bytes()
    except OSError as e:
        raise CommandError(f"--csr {args.csr}: {e.strerror}", USAGE) from None
    return _sign_and_write(args, csr_pem, None)


def cmd_request(args: argparse.Namespace) -> int:
    """Generate a key of ``--key-algorithm`` and its CSR, sign it; writes tls.key too.
    Raises CommandError (1 refused, 2 usage)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from ca_core.keys import private_key_pem, signature_hash

    try:
        algorithm = KeyAlgorithm.parse(args.key_algorithm)
    except ValueError as e:
        raise CommandError(f"--key-algorithm: {e}", USAGE) from None
    key = algorithm.generate()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, signature_hash(key))
    return _sign_and_write(args, csr.public_bytes(Encoding.PEM), private_key_pem(key))


def _existing_key_conflict(out: Path, csr_key: object) -> str | None:
    """Why OUT/tls.key must not be left beside the new certificate, or None."""
    from cryptography.hazmat.primitives import serialization

    key_file = out / "tls.key"
    if not key_file.exists():
        return None
    try:
        existing = serialization.load_pem_private_key(key_file.read_bytes(), password=None).public_key()
    except (OSError, ValueError, TypeError):
        return f"{key_file} exists and is not a readable private key"
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if existing.public_bytes(*spki) != csr_key.public_bytes(*spki):  # type: ignore[attr-defined]
        return (
            f"{key_file} holds another key than the CSR's: the new certificate would not match it. "
            "Choose another --out, or remove that file"
        )
    return None


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot become a directory this process writes into, without
    creating anything (CommandError, exit 2)."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: not a directory", USAGE)
    nearest = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: Permission denied", USAGE)


def _sign_and_write(args: argparse.Namespace, csr_pem: bytes, key_pem: bytes | None) -> int:
    """Check the arguments, have the CA sign ``csr_pem``, verify the answer, then write it (and
    ``key_pem`` when given) to ``--out``: nothing is written unless every check passed."""
    import grpc

    import sentryca_client as client
    from ca_core.csr import csr_public_key
    from ca_core.errors import InvalidRequest

    try:
        validator = TokenValidatorKind.parse(args.token_validator)
    except ValueError as e:
        raise CommandError(f"--token-validator: {e}", USAGE) from None
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):[0-9]{1,5}", args.server):
        raise CommandError(
            f"--server {args.server}: expected HOST:PORT, e.g. localhost:50001 or [::1]:50001", USAGE
        )
    anchors = read_trust_anchors(args.trust_anchors)
    try:
        csr_key = csr_public_key(csr_pem)
    except InvalidRequest as e:
        raise CommandError(f"--csr: {e}", USAGE) from None
    out = Path(args.out)
    if store := store_in(out):
        raise CommandError(
            f"{store}: tls.crt and ca.crt written there would replace the CA's own files; nothing was "
            "written, choose another --out",
            USAGE,
        )
    _check_out(out)  # created only once the answer verified: a failed call leaves nothing behind
    if key_pem is None and (conflict := _existing_key_conflict(out, csr_key)):
        raise CommandError(conflict, USAGE)
    jwt_keys = _jwt_keys(args)  # before the call: a JWK Set that cannot be had refuses at once
    token, validator_number = _token(args), int(validator)
    if getattr(args, "aws_iam", False):
        token, validator_number = _aws_iam_token(args, csr_key, anchors)
    try:
        with client.channel(args.server, anchors, args.server_name) as chan:
            response = client.sign(
                chan,
                csr_pem,
                args.id,
                args.namespace,
                trust_domain=args.trust_domain,
                token=token,
                token_validator=validator_number,
                jwt_audiences=args.jwt_audience,
                timeout=args.timeout,
            )
        signed = client.verify_response(
            response,
            anchors,
            namespace=args.namespace,
            app_id=args.id,
            trust_domain=args.trust_domain or None,
            public_key=csr_key,
        )
        tokens = _jwt_files(response, jwt_keys, signed.spiffe_id, args.jwt_audience) if jwt_keys else {}
    except grpc.RpcError as e:
        raise connection_error(client.diagnose(e, args.server), args) from None
    except client.VerifyError as e:
        raise CommandError(f"{e}; nothing was written", REFUSED) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if key_pem is not None:
            write_file(out / "tls.key", key_pem, 0o600)
        write_file(out / "tls.crt", signed.chain_pem, 0o644)
        write_file(out / "ca.crt", signed.anchors_pem, 0o644)
        for name, token in tokens.items():
            write_file(out / name, token.encode() + b"\n", 0o600)
    except OSError as e:
        raise CommandError(f"--out {out}: cannot write ({e.strerror or e})", USAGE) from None
    print(
        f"{signed.spiffe_id}\nvalid until {signed.valid_until.isoformat()}\nwritten to {out}/"
        f"{{tls.crt,ca.crt{',tls.key' if key_pem else ''}{''.join(',' + n for n in tokens)}}}"
    )
    return 0


def jwt_file_name(audience: str | None) -> str:
    """The file a JWT-SVID is written to in ``--out``: ``jwt.token`` for the token of every
    audience (response field 4, ``jwt``), ``jwt-AUDIENCE.token`` for the token of ``audience``
    alone (field 5, ``per_audience_jwts``), the audience percent-encoded (RFC 3986: letters,
    digits and ``-._~`` stay), e.g. ``jwt-sts.amazonaws.com.token``,
    ``jwt-api%3A%2F%2FAzureADTokenExchange.token``."""
    from urllib.parse import quote

    return "jwt.token" if audience is None else f"jwt-{quote(audience, safe='')}.token"


_MAX_NAME = 200  # a file name's bytes, with room for write_file's temporary name within 255


def _jwt_keys(args: argparse.Namespace) -> object | None:
    """The JWK Set verifying the JWT-SVIDs (a ``jwt.PyJWKSet``) when ``--jwt-audience`` is given:
    ``--jwks``, else the ``jwks.json`` of ``--trust-bundle-store``'s public part. Raises
    CommandError: 2 for bad usage or an unreadable file, 1 for a JWK Set that cannot be fetched."""
    import sentryca_client as client

    if not args.jwt_audience:
        if args.jwks or args.jwks_ca or args.trust_bundle_store:
            raise CommandError(
                "--jwks, --jwks-ca and --trust-bundle-store verify JWT-SVIDs: ask for them with "
                "--jwt-audience",
                USAGE,
            )
        return None
    for aud in args.jwt_audience:
        if not aud:
            raise CommandError("--jwt-audience: an audience must not be empty", USAGE)
        if len(jwt_file_name(aud).encode()) > _MAX_NAME:
            raise CommandError(f"--jwt-audience {aud[:40]}...: too long for a file name", USAGE)
    if args.jwks:
        try:
            return client.load_jwks(args.jwks, timeout=args.timeout, cafile=args.jwks_ca)
        except client.JwksError as e:
            code = REFUSED if args.jwks.startswith("https://") else USAGE
            raise CommandError(f"--jwks {e}", code) from None
    if not args.trust_bundle_store:
        raise CommandError(
            "--jwt-audience needs the JWK Set to verify the tokens with before they are written: give "
            "--jwks FILE|URL (e.g. the jwks.json of `sentryca bundle show --out DIR`, or the OIDC "
            "server's <issuer>/jwks.json), or --trust-bundle-store URL to read it from the store",
            USAGE,
        )
    return _store_jwks(args.trust_bundle_store, args.kubeconfig)


def _store_jwks(url: str, kubeconfig: str | None) -> object:
    """The JWK Set in the public part of the store at ``url``. Raises CommandError."""
    import sentryca_client as client
    from adapters.stores import open_store
    from ca_core.bundle import JWKS
    from ca_core.errors import CAError, ConfigError

    try:
        store = open_store(url, kubeconfig=kubeconfig)
        stored = store.load_public()
    except ConfigError as e:
        raise CommandError(f"--trust-bundle-store: {e}", USAGE) from None
    except CAError as e:
        raise CommandError(f"--trust-bundle-store {url}: cannot read ({e})") from None
    data = stored.items.get(JWKS) if stored else None
    if data is None:
        raise CommandError(
            f"--trust-bundle-store {url}: the public part holds no {JWKS} (does the CA run with "
            "--jwt-enabled true?); nothing was asked"
        )
    try:
        return client.parse_jwks(data, f"{store.description}: {JWKS}")
    except client.JwksError as e:
        raise CommandError(f"--trust-bundle-store {e}") from None


def _jwt_files(response: object, keys: object, spiffe_id: str, audiences: list[str]) -> dict[str, str]:
    """File name → token, every JWT-SVID of ``response`` verified (:func:`sentryca_client.verify_jwt_svids`).
    Raises VerifyError."""
    import sentryca_client as client

    svids = client.verify_jwt_svids(response, keys, spiffe_id=spiffe_id, audiences=audiences)  # type: ignore[arg-type]
    files = {jwt_file_name(None): svids.jwt.token}
    for aud, svid in svids.per_audience.items():
        name = jwt_file_name(aud)
        if len(name.encode()) > _MAX_NAME:
            raise client.VerifyError(
                f"per_audience_jwts: the audience {aud[:40]!r}... is too long for a file name"
            )
        files[name] = svid.token
    return files
