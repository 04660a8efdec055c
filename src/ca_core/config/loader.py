"""Loading the configuration (design §7): flags > ``SENTRY_*`` environment > ``--config`` file >
defaults, validated once. Pure: the environment and a file reader are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .dapr_yaml import read_config_file
from .model import Config, validate
from .options import SERVE_OPTIONS, STORE_OPTIONS, Option

if TYPE_CHECKING:  # argparse is only a type here: the Lambda functions import this package cold
    import argparse


def _parse_value(opt: Option, raw: str, source: str) -> Any:
    try:
        return opt.parse(raw)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(
    flags: argparse.Namespace | Mapping[str, Any],
    env: Mapping[str, str],
    read_file: Callable[[str], str] | None = None,
) -> Config:
    """Merge flags > ``SENTRY_*`` env > ``--config`` file > defaults into a validated Config.

    flags: parsed argparse namespace (unset flags are None) or a mapping of dest → string;
    env: the process environment (NAMESPACE and KUBERNETES_SERVICE_HOST are read from it too);
    read_file: returns a file's text (for ``--config``). Raises ConfigError naming the source.
    """
    given = dict(flags) if isinstance(flags, Mapping) else vars(flags)
    values: dict[str, Any] = {}
    config_path = given.get("config") or env.get("SENTRY_CONFIG")
    if config_path:
        if read_file is None:
            raise ConfigError("--config given but no way to read files")
        try:
            text = read_file(config_path)
        except OSError as e:
            raise ConfigError(f"--config {config_path}: cannot read ({e.strerror})") from None
        values.update(read_config_file(text, config_path))
    for opt in (*SERVE_OPTIONS, *STORE_OPTIONS):
        if opt.env_name in env and env[opt.env_name] != "":
            values[opt.dest] = _parse_value(opt, env[opt.env_name], opt.env_name)
        if given.get(opt.dest) is not None:
            values[opt.dest] = _parse_value(opt, given[opt.dest], f"--{opt.flag}")
    if env.get("NAMESPACE"):
        values["namespace"] = env["NAMESPACE"]
    values["kubernetes_detected"] = bool(env.get("KUBERNETES_SERVICE_HOST"))
    return validate(Config(**values))


def explicit_source(
    flags: argparse.Namespace | Mapping[str, Any], env: Mapping[str, str], dest: str
) -> str | None:
    """Where the option ``dest`` (a Config field, e.g. ``trust_domain``) was set explicitly, by
    the precedence of :func:`load_config`: ``--flag`` when given, else the ``SENTRY_*`` variable
    when set and not empty, else None (the ``--config`` file or the default). Raises KeyError
    for a field no option sets."""
    given = dict(flags) if isinstance(flags, Mapping) else vars(flags)
    opt = {o.dest: o for o in (*SERVE_OPTIONS, *STORE_OPTIONS)}[dest]
    if given.get(dest) is not None:
        return f"--{opt.flag}"
    if env.get(opt.env_name):
        return opt.env_name
    return None
