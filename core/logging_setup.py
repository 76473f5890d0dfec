"""`--log-format text|json` and `--log-level debug|info|warn|error` for `serve`."""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from datetime import UTC, datetime

import orjson

from core import workers
from core.requestid import RequestIdFilter

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}

# Attributes every LogRecord has; anything else was passed through `extra=` and is emitted.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _timestamp(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, logger, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": _timestamp(record),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


# C0 controls (newline, CR, ESC, ...), DEL, C1 controls and the Unicode line/paragraph
# separators: a client's text (path, ids, certificate names) must not end a log line early,
# forge the next one or drive the terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line: control characters as `\\n`, `\\x1b`, `\\u2028`, ..."""
    return _CONTROL.sub(_escape_char, text)


class WorkerFilter(logging.Filter):
    """Under `serve --workers N`, `worker` (the worker's index) on every record of a worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        if workers.count() > 1 and getattr(record, "worker", None) is None:
            record.worker = workers.index()
        return True


class TextFormatter(logging.Formatter):
    """One line per record; control characters in the message are escaped. A traceback follows
    on lines of its own, each indented, so none of them can pass for a record. A record logged
    during a request ends with ` request_id=<id>` (`core.requestid`), and one of a worker of
    `serve --workers N` with ` worker=<index>`."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        line = f"{_timestamp(record)} {level:<5} {escape_controls(record.getMessage())}"
        request_id = getattr(record, "request_id", None)
        if request_id:
            line += f" request_id={request_id}"  # validated by core.requestid: no controls
        worker = getattr(record, "worker", None)
        if worker is not None:
            line += f" worker={worker}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join("\n  " + escape_controls(part) for part in trace.split("\n"))
        return line


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())  # `request_id` on every line logged during a request
    handler.addFilter(WorkerFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # Libraries stay quiet unless we are debugging.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("daphne", "django", "twisted", "asyncio"):
        logging.getLogger(name).setLevel(max(quiet, LEVELS[level]))
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # we log requests ourselves
