"""The one configuration object (design §7), filled from flags, ``SENTRY_*`` environment variables
and a Dapr-Configuration-shaped YAML file, in that order of precedence, validated once.

Pure: the environment and file contents are passed in, never looked up here. Cheap to import
(``yaml`` and ``argparse`` are imported only when used): the Lambda functions import it cold.

- :mod:`.options`: the option table (``--flag`` ↔ ``SENTRY_FLAG`` ↔ field) and its value parsers;
- :mod:`.model`: :class:`Config`, :class:`JwksSettings`, defaults, bounds, :func:`validate`;
- :mod:`.dapr_yaml`: the ``--config`` file reader;
- :mod:`.loader`: :func:`load_config`, the precedence.
"""

from .dapr_yaml import JWKS_OPTION_KEYS, read_config_file
from .loader import explicit_source, load_config
from .model import (
    BOOTSTRAP_POLICIES,
    DEFAULT_JWKS_MIN_REFRESH,
    DEFAULT_JWKS_REQUEST_TIMEOUT,
    FIELDS_WITHOUT_OPTION,
    MAX_CLOCK_SKEW,
    MAX_EXPIRY_CHECK_INTERVAL,
    MAX_PROPAGATION_WINDOW,
    MAX_STORE_POLL_INTERVAL,
    MAX_WORKERS,
    MAX_WORKLOAD_TTL,
    MODES,
    Config,
    JwksSettings,
    JwtIssuerSettings,
    validate,
)
from .options import SERVE_OPTIONS, STORE_OPTIONS, Option, add_options

__all__ = [
    "BOOTSTRAP_POLICIES",
    "DEFAULT_JWKS_MIN_REFRESH",
    "DEFAULT_JWKS_REQUEST_TIMEOUT",
    "FIELDS_WITHOUT_OPTION",
    "JWKS_OPTION_KEYS",
    "MAX_CLOCK_SKEW",
    "MAX_EXPIRY_CHECK_INTERVAL",
    "MAX_PROPAGATION_WINDOW",
    "MAX_STORE_POLL_INTERVAL",
    "MAX_WORKERS",
    "MAX_WORKLOAD_TTL",
    "MODES",
    "SERVE_OPTIONS",
    "STORE_OPTIONS",
    "Config",
    "JwksSettings",
    "JwtIssuerSettings",
    "Option",
    "add_options",
    "explicit_source",
    "load_config",
    "read_config_file",
    "validate",
]
