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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if level != "debug":  # uvicorn's start/stop chatter; our own lines say the same
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
