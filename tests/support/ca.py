"""An in-process CA's configuration for the tests."""

from __future__ import annotations

from pathlib import Path

from ca_core.config import Config, load_config


def ca_config(store_dir: Path, **overrides: str) -> Config:
    """A Config for a test CA: ephemeral ports on loopback, file store in ``store_dir``."""
    flags = {
        "issuer_credentials": str(store_dir),
        "port": "0",
        "healthz_port": "0",
        "metrics_port": "0",
        "mode": "standalone",
        **overrides,
    }
    return load_config(flags, {})
