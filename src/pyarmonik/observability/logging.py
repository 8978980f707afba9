"""Structured logs: JSON lines (for collectors) or readable lines (on a terminal), carrying
the ids bound for the work at hand (session, task, partition) through context variables."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys never printed, whatever a caller binds (URLs with credentials travel as settings).
SECRET_KEYS = frozenset({"password", "secret", "token", "communication_token"})


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in SECRET_KEYS.intersection(event):
        event[key] = "***"
    return event


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route stdlib logging through structlog. `fmt`: json, console, or auto (console when
    stderr is a terminal)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


def bind(**ids: str) -> None:
    """Attach ids (session_id, task_id, partition) to every log line of this context."""
    structlog.contextvars.bind_contextvars(**ids)


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)
