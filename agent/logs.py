"""Logging to stderr: readable text by default, one JSON object a line with --log-format json.

Messages pass through `textsafe.shown`: a file name with a newline or an ESC sequence
cannot forge a log line or drive the terminal. Tracebacks stay as Python prints them.

Under journald (JOURNAL_STREAM set) text lines carry the `<N>` syslog priority prefix
that journald turns into the record's priority.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from agent.textsafe import shown

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": shown(record.getMessage()),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if journald
            else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        super().__init__(fmt)
        self.journald = journald

    def formatMessage(self, record: logging.LogRecord) -> str:
        # the message carries outside names (files, pickle globals): one line, no escapes
        record.message = shown(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" in text:
            # a traceback's lines are indented, so none of them (an exception message
            # quoting a file name, say) can pass for a record of its own
            text = shown_traceback(text)
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def shown_traceback(text: str) -> str:
    first, _, rest = text.partition("\n")
    return first + "".join(f"\n  {shown(line)}" for line in rest.split("\n"))


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "scapy", "watchdog", "alembic", "pyroute2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
