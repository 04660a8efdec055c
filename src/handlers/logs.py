"""Logging set-up: plain text or JSON lines (``--log-as-json``), never a token or a key."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import log_limit

if TYPE_CHECKING:
    from ca_core.rotation.state import Step

audit_log = logging.getLogger("sentryca.audit")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    _std = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str | int | float | bool | None] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in self._std and k not in out and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | None) else str(v)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", as_json: bool = False) -> None:
    """Configure the root logger once for the process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    log_limit.install()


def audit_rotation(step: Step, store: str) -> None:
    """One audit record (logger ``sentryca.audit``) for a rotation step: event ``rotation_step``,
    kind (root | issuer | jwt), step (prepare | activate | prune | rotate | emergency | bound |
    record), trigger (manual | auto), store, and the step's fingerprints, serials, key ids and
    times."""
    audit_log.info(
        "rotation_step: %s %s (%s) in %s",
        step.kind,
        step.action,
        step.trigger,
        store,
        extra={
            "event": "rotation_step",
            "kind": step.kind,
            "step": step.action,
            "trigger": step.trigger,
            "store": store,
            **step.fields,
        },
    )
