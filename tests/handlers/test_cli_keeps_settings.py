"""The verbs that change a bundle keep its trust domain, issuer ID and key algorithm (design §5.15),
run as an operator would against a file store and S3 and Secrets Manager (moto): `rotate root`,
`rotate issuer`, `rotate advance`, `rotate root --emergency`, `bundle regenerate`."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from adapters.stores import open_store
from ca_core.bundle import parse_bundle
from ca_core.keys import KeyAlgorithm, key_algorithm_of
from ca_core.rotation.codec import parse_state

from support.cli import run_sentryca as run
from support.openssl import run_openssl

ISSUER_ID = "spiffe://example.org/ns/prod/dapr-sentry"


def org(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value


def read(url: str):
    """(bundle, rotation state, stored) of the store at ``url``, read in this process."""
    stored = open_store(url).load()
    bundle = parse_bundle(stored.items)
    return bundle, parse_state(stored.items, bundle), stored


def test_rotations_keep_the_trust_domain_and_issuer_id_of_an_example_org_store(store_url_env, tmp_path):
    url, env = store_url_env
    r = run(
        "bundle",
        "init",
        "--trust-bundle-store",
        url,
        "--trust-domain",
        "example.org",
        env=env | {"NAMESPACE": "prod"},
    )
    assert r.returncode == 0, r.stderr
    # No trust domain given, NAMESPACE unset: the tester's case that produced O=localhost.
    r = run("rotate", "root", "--trust-bundle-store", url, env=env | {"SENTRY_ROOT_PROPAGATION_WINDOW": "0s"})
    assert r.returncode == 0, r.stderr
    assert "trust domain example.org (the bundle's: the root's O=)" in r.stdout
    assert f"issuer ID {ISSUER_ID} (the bundle's)" in r.stdout
    bundle, state, _ = read(url)
    prepared = state.prepared_root
    assert org(prepared.root) == "example.org" and org(prepared.issuer_chain[0]) == ISSUER_ID
    assert all(org(a) == "example.org" for a in bundle.trust_anchors)

    r = run("rotate", "advance", "--trust-bundle-store", url, env=env)
    assert r.returncode == 0 and "is now active" in r.stdout, r.stdout + r.stderr
    bundle, _, _ = read(url)
    assert bundle.anchor_for(bundle.issuer) == prepared.root and org(bundle.issuer) == ISSUER_ID

    r = run("rotate", "issuer", "--trust-bundle-store", url, env=env)
    assert r.returncode == 0, r.stderr
    after, _, _ = read(url)
    assert after.issuer != bundle.issuer and org(after.issuer) == ISSUER_ID

    r = run("rotate", "root", "--trust-bundle-store", url, "--emergency", env=env)
    assert r.returncode == 0, r.stderr
    after, _, _ = read(url)
    assert [org(a) for a in after.trust_anchors] == ["example.org"] and org(after.issuer) == ISSUER_ID


def test_a_contradicting_trust_domain_is_refused_word_for_word_and_changes_nothing(store_url_env, tmp_path):
    url, env = store_url_env
    assert (
        run(
            "bundle", "init", "--trust-bundle-store", url, "--trust-domain", "example.org", env=env
        ).returncode
        == 0
    )
    description = open_store(url).description
    _, _, before = read(url)
    attempts = [
        (
            ["rotate", "root", "--trust-domain", "example.com"],
            {},
            "--trust-domain example.com",
            "rotate root",
        ),
        (["rotate", "root", "--emergency"], {"SENTRY_TRUST_DOMAIN": "example.com"}, None, "rotate root"),
        (["rotate", "issuer"], {"SENTRY_TRUST_DOMAIN": "example.com"}, None, "rotate issuer"),
        (["rotate", "advance"], {"SENTRY_TRUST_DOMAIN": "example.com"}, None, "rotate advance"),
        (
            ["bundle", "regenerate", "--trust-domain", "example.com"],
            {},
            "--trust-domain example.com",
            "bundle regenerate",
        ),
    ]
    for args, extra, said, verb in attempts:
        r = run(*args, "--trust-bundle-store", url, env=env | extra, cwd=tmp_path)
        said = said or "SENTRY_TRUST_DOMAIN=example.com"
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: {said} contradicts the trust bundle in {description}: its trust domain is "
            f"example.org (the root's O=). `{verb}` cannot move a CA to another trust domain; nothing "
            "was changed. Run it with the bundle's trust domain (example.org) or with none; a CA in "
            "another trust domain is a new CA, in a new store (`sentryca bundle init`)"
        ], args
        assert read(url)[2] == before, args
    assert not (tmp_path / ".sentry").exists()  # the refused regenerate made no backup either
    # The same trust domain, given explicitly, is no contradiction.
    r = run("rotate", "issuer", "--trust-bundle-store", url, env=env | {"SENTRY_TRUST_DOMAIN": "example.org"})
    assert r.returncode == 0, r.stderr


def test_the_key_algorithm_is_kept_and_changes_only_with_a_new_root(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    assert run("bundle", "init", "--trust-bundle-store", url, "--ca-key-algorithm", "ed25519").returncode == 0
    r = run("rotate", "issuer", "--trust-bundle-store", url)  # default ecdsa-p256 is not "told otherwise"
    assert r.returncode == 0, r.stderr
    bundle, _, before = read(url)
    assert key_algorithm_of(bundle.issuer_key) is KeyAlgorithm.ED25519
    r = run("rotate", "issuer", "--trust-bundle-store", url, "--ca-key-algorithm", "ecdsa-p384")
    assert r.returncode == 2 and "its issuer's key is ed25519. `rotate issuer` keeps the bundle's" in r.stderr
    assert read(url)[2] == before
    r = run("rotate", "root", "--trust-bundle-store", url, "--ca-key-algorithm", "ecdsa-p384")
    assert r.returncode == 0, r.stderr
    assert "key algorithm ecdsa-p384 (--ca-key-algorithm; the current root's is ed25519)" in r.stdout
    _, state, _ = read(url)
    assert key_algorithm_of(state.prepared_root.root_key) is KeyAlgorithm.ECDSA_P384
    assert key_algorithm_of(state.prepared_root.issuer_key) is KeyAlgorithm.ECDSA_P384
    # The CA's settings move to the new algorithm with it: accepted while that root is prepared.
    r = run("rotate", "advance", "--trust-bundle-store", url, env={"SENTRY_CA_KEY_ALGORITHM": "ecdsa-p384"})
    assert r.returncode == 0, r.stderr


def test_regenerate_keeps_the_trust_domain_issuer_id_and_algorithm(store_url_env, tmp_path):
    url, env = store_url_env
    init_env = env | {"NAMESPACE": "prod", "SENTRY_TRUST_DOMAIN": "example.org"}
    assert (
        run(
            "bundle", "init", "--trust-bundle-store", url, "--ca-key-algorithm", "ecdsa-p384", env=init_env
        ).returncode
        == 0
    )
    old, _, _ = read(url)
    r = run("bundle", "regenerate", "--trust-bundle-store", url, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new, _, _ = read(url)
    assert new.trust_anchors[0] != old.trust_anchors[0]
    assert org(new.trust_anchors[0]) == "example.org" and org(new.issuer) == ISSUER_ID
    assert key_algorithm_of(new.root_key) is KeyAlgorithm.ECDSA_P384


def test_a_pki_naming_no_trust_domain_takes_the_configured_one_and_says_so(tmp_path):
    """An operator's PKI made with OpenSSL (no O=, no SPIFFE ID): nothing to contradict, so the
    configuration names what is generated, and the verb says where that came from."""
    t = tmp_path
    (t / "ca.ext").write_text("basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n")
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    for command in (
        f"req -x509 {ec} -days 30 -subj /CN=Root -keyout {t}/root.key -out {t}/root.crt "
        "-addext basicConstraints=critical,CA:true",
        f"req -new {ec} -subj /CN=Issuer -keyout {t}/issuer.key -out {t}/issuer.csr",
        f"x509 -req -in {t}/issuer.csr -CA {t}/root.crt -CAkey {t}/root.key -days 20 "
        f"-extfile {t}/ca.ext -out {t}/issuer.crt",
    ):
        r = run_openssl(*command.split())
        assert r.returncode == 0, r.stderr
    url = f"file://{tmp_path / 'store'}"
    files = ["--root", "root.crt", "--issuer-cert", "issuer.crt", "--issuer-key", "issuer.key"]
    files += ["--root-key", "root.key"]
    r = run("bundle", "import", "--trust-bundle-store", url, *files, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("rotate", "root", "--trust-bundle-store", url, env={"SENTRY_TRUST_DOMAIN": "corp.example"})
    assert r.returncode == 0, r.stderr
    assert "trust domain corp.example (SENTRY_TRUST_DOMAIN: the bundle names none)" in r.stdout
    assert "issuer ID spiffe://corp.example/ns/default/dapr-sentry (new)" in r.stdout
    _, state, _ = read(url)
    assert org(state.prepared_root.root) == "corp.example"
