"""The server's request log: one line per request on standard error, JSON by default.

    {"time": "2026-12-08T02:23:46.123Z", "level": "info", "logger": "access", "pid": 4242,
     "method": "POST", "path": "/v1/transfers", "status": 201, "duration_ms": 2.91,
     "client": "127.0.0.1", "actor": "shaxian-exchange", "key_id": "…", "command": "transfer",
     "command_id": "trade/shaxian-exchange/SX-1", "position": 89}

`actor` and `key_id` appear where a signature was verified (a write's actor, a signed read's
signer); `command`, `command_id` for writes; `position` (the log's position after it) for an
accepted write, `replayed` for an idempotent retry; `code` for a refusal. Nothing else from a
request is written: no header (so no signature, nonce or digest), no body, no query, no key.

Handlers add their fields with `note(...)` while the request runs: the record is held in a
context variable that RegistryApp.__call__ sets per request, so the fast write path (which
answers before FastAPI's stack) and FastAPI's routes and error handlers all reach it. The same
formats serve uvicorn's own log lines (`logging_config`), so that standard error holds one
format throughout.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

import msgspec

ENV_FORMAT = "CARBON_LEDGER_LOG_FORMAT"
ENV_LEVEL = "CARBON_LEDGER_LOG_LEVEL"
FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error", "critical")
ACCESS_LEVEL = logging.INFO  # a request's line; one that failed with a 5xx is an error
# The fields a handler may note, in the order a text line shows them.
NOTED = ("actor", "key_id", "command", "command_id", "position", "replayed", "code")

_record: ContextVar[dict[str, Any] | None] = ContextVar("carbon_ledger_access_record",
                                                        default=None)
_encode = msgspec.json.Encoder().encode


def note(**fields: Any) -> None:
    """Add fields to the line of the request being served (nothing outside a request)."""
    record = _record.get()
    if record is not None:
        record.update(fields)


def start() -> tuple[dict[str, Any], Any]:
    """A new request's record, current until `finish(token)`."""
    record: dict[str, Any] = {}
    return record, _record.set(record)


def finish(token: Any) -> None:
    _record.reset(token)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _now() -> str:
    """The time in UTC, ISO 8601 to the millisecond (the seconds formatted once a second:
    datetime's isoformat costs more than the rest of a line)."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int((now - second) * 1000):03d}Z"


class AccessLog:
    """Writes each request's line, straight to the stream (no logging.Logger on the way: a
    write's line costs a few microseconds this way, not tens)."""

    def __init__(self, fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.json = fmt == "json"
        self.threshold = logging.getLevelName(level.upper())
        if not isinstance(self.threshold, int):
            raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
        self.stream = stream or sys.stderr
        try:  # one write(2) a line, past the text layer's buffer and lock
            self.fd: int | None = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream with no file behind it
            self.fd = None
        self.pid = os.getpid()

    def emit(self, method: str, path: str, status: int, seconds: float, client: Any,
             noted: dict[str, Any]) -> None:
        level = logging.ERROR if status >= 500 else ACCESS_LEVEL
        if level < self.threshold:
            return
        line: dict[str, Any] = {
            "time": _now(), "level": "error" if level == logging.ERROR else "info",
            "logger": "access", "pid": self.pid, "method": method, "path": path,
            "status": status, "duration_ms": round(seconds * 1000, 3)}
        if client:
            line["client"] = client[0]
        for name in NOTED:
            value = noted.get(name)
            if value is not None and value is not False:
                line[name] = value
        if self.json:
            data = _encode(line) + b"\n"
        else:
            extra = " ".join(f"{k}={line[k]}" for k in ("pid", "client", *NOTED) if k in line)
            data = (f"{line['time']} {line['level']} {method} {path} {status} "
                    f"{line['duration_ms']:.1f}ms {extra}\n").encode("utf-8", "backslashreplace")
        if self.fd is not None:
            self.stream.flush()  # anything written through the stream before stays before
            os.write(self.fd, data)
        else:
            self.stream.write(data.decode("utf-8"))


def from_environment() -> AccessLog | None:
    """The access log `carbon-ledger serve` asked for, or None (an app made in-process)."""
    fmt = os.environ.get(ENV_FORMAT)
    if not fmt:
        return None
    return AccessLog(fmt, os.environ.get(ENV_LEVEL, "info"))


# Every other log line (uvicorn's, the serving parent's) in the same format ----------------------

class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _now(), "level": record.levelname.lower(),
                                "logger": record.name, "pid": record.process,
                                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encode(line).decode("utf-8")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{_now()} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for uvicorn's loggers and ours, on standard error."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "default",
               "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
               for name in ("uvicorn", "uvicorn.error", "carbon_ledger")}
    loggers["uvicorn.access"] = {"handlers": [], "level": "CRITICAL", "propagate": False}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"default": {"()": f"{__name__}.{formatter.__name__}"}},
            "handlers": {"stderr": handler}, "loggers": loggers}
