"""``sentryca``: run the CA and talk to it.

    sentryca serve    [options of design §7]        run the CA (what `make run` runs)
    sentryca request  --id APP --namespace NS ...   make a key and CSR, get them signed
    sentryca sign     --csr FILE --id APP ...       get a CSR made elsewhere signed
    sentryca inspect  [store options]               show trust anchors, issuer, expiry
    sentryca bundle init|import|export|show|regenerate
                                                    operate on the trust bundle in a store
    sentryca rotate issuer|root|advance             rotate the issuer or the root (design §5)
    sentryca healthcheck [--live] [--url URL]       is the running CA ready (container checks)
    sentryca --version                              the version and the wire protocol

Exit codes: 0 success; 1 the CA refused or could not be reached; 2 bad usage or configuration.
Modules: ``main`` (parser, error handling), ``serve``, ``client_verbs`` (request, sign) and
``client_errors`` (their messages), ``bundle_verbs`` (inspect, bundle init/import/regenerate),
``export_verbs`` (bundle export/show), ``rotate_verbs`` (rotate), ``health_verbs``
(healthcheck), ``common`` (shared helpers).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
