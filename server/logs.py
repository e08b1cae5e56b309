"""The server's log lines: plain text, or one JSON object per line (``--log-json``) for log shippers."""

from __future__ import annotations

import json
import logging
import sys


class _JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-json``); the standard library has no JSON formatter."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = record.span_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    """The plain line, plus `` trace_id=… span_id=…`` when the record carries them (tracing on)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line} trace_id={trace_id} span_id={record.span_id}" if trace_id else line


def configure_logging(level: str, as_json: bool, trace_ids: bool = False) -> None:
    """Root logging to stderr. ``trace_ids``: add the current span's ids to each line (tracing on)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else _TextFormatter())
    if trace_ids:
        from server.tracing import TraceIdFilter

        handler.addFilter(TraceIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if level != "debug":  # uvicorn's start/stop chatter; our own lines say the same
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
