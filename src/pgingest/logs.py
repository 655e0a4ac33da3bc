"""Logging set-up: plain text or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# Control characters (line breaks above all) and the Unicode line separators, as escapes: a
# document key or a provider's message cannot start a line of its own (issue 18, item 14).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# A value that would read as more than one key=value: quoted (JSON string syntax).
_NEEDS_QUOTES = re.compile(r'[\s="\\]|^$')


def _escape_char(m: re.Match[str]) -> str:
    return json.dumps(m[0])[1:-1]


def escape(text: str) -> str:
    """``text`` on one line: control characters and line separators as JSON escapes (``\\n``)."""
    return _CONTROL.sub(_escape_char, text)


def _field(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTES.search(text) else escape(text)


class TextFormatter(logging.Formatter):
    """One line a record (a traceback excepted): the message escaped, then ``key=value`` extras
    (a value with spaces, ``=``, quotes or control characters is a JSON string)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {
            k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        }
        if extras:
            line = " ".join(
                f"{escape(str(k)).replace('=', '%3D')}={_field(v)}" for k, v in extras.items()
            )
            first, sep, rest = base.partition("\n")
            base = f"{first} {line}{sep}{rest}"
        return base


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's captured stream that
    has since been closed is not kept)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = _StderrHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pgingest")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
