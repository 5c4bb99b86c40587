"""structlog configuration: JSON or console lines, snake_case events, never secrets.

Every request logs one line, so the processors on that path are kept cheap: the
timestamp's date-time part is formatted once per second (structlog's ``TimeStamper``
formats a full ``datetime`` per line) and JSON lines reuse one encoder.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from vaultraft import jsoncodec

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


class UTCStamper:
    """Adds ``timestamp`` exactly as ``TimeStamper(fmt="iso", utc=True)`` does
    (``2026-11-23T04:26:11.387916Z``), formatting the date and time once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Set ``event_dict["timestamp"]`` to the current UTC time."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event_dict


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with a value JSON cannot encode."""
    structlog_repr = getattr(obj, "__structlog__", None)
    if structlog_repr is not None:
        return structlog_repr()
    return repr(obj)


class JSONLines:
    """``JSONRenderer()``'s output (same fallback; compact separators) through
    :mod:`vaultraft.jsoncodec`."""

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        """The event as one JSON object."""
        return jsoncodec.dumps(event_dict, default=_fallback).decode("utf-8")


_NOTHING = object()
_QUOTED = frozenset(" \t=\r\n\"'")
_LEVEL_WIDTH = 9  # ConsoleRenderer pads "[info     ]" to its longest level name
_EVENT_WIDTH = 30


def _console_value(val: Any) -> str:
    if isinstance(val, str):
        return repr(val) if _QUOTED.intersection(val) else val
    return repr(val)


def _pad(s: str, width: int) -> str:
    missing = width - len(s)
    return s + " " * missing if missing > 0 else s


class ConsoleLines:
    """``ConsoleRenderer(colors=False)``'s output, character for character (property-tested),
    at a fraction of its cost (~75 µs a request line); events carrying a stack or exception
    go to structlog's renderer itself."""

    def __init__(self) -> None:
        self._full = structlog.dev.ConsoleRenderer(colors=False)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        """The event as one console line."""
        if "exc_info" in event_dict or "exception" in event_dict or "stack" in event_dict:
            return self._full(logger, method, event_dict)
        pop = event_dict.pop
        parts: list[str] = []
        ts = pop("timestamp", _NOTHING)
        if ts is not _NOTHING:
            parts.append(str(ts))
        level = pop("level", _NOTHING)
        if level is not _NOTHING:
            parts.append(f"[{_pad(str(level), _LEVEL_WIDTH)}]")
        event = pop("event", _NOTHING)
        if event is not _NOTHING:
            parts.append(_pad(str(event), _EVENT_WIDTH))
        for key in ("logger", "logger_name"):
            name = pop(key, _NOTHING)
            if name is not _NOTHING:
                parts.append(f"[{name}]")
        for key in sorted(event_dict):
            parts.append(f"{key}={_console_value(event_dict[key])}")
        return " ".join(p for p in parts if p).rstrip(" ")


#: Loggers with this name batch their lines (see :class:`LineWriter`): the per-request line.
REQUEST_LOGGER = "vaultraft.http.requests"


class LineWriter:
    """Writes rendered lines to one text file, in order, from any thread.

    A line logged through :meth:`batched` on a thread running an asyncio loop is queued and
    written, with every line queued in the same loop turn, by one callback at the end of
    that turn: a ``write`` releases the GIL, and under load pysyncobj's thread then keeps
    it until it blocks or a switch interval (5 ms) passes, so one write per request cost
    the event loop far more than the write. Any other line is written at once, after what
    is queued; queued lines are also written at exit.
    """

    def __init__(self, file: Any) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._pending: list[str] = []
        atexit.register(self.flush)

    def now(self, line: str) -> None:
        """Write ``line`` (after any queued lines) before returning."""
        with self._lock:
            self._pending.append(line)
            self._write_pending()

    def batched(self, line: str) -> None:
        """Queue ``line`` until the end of this loop turn (at once off the loop)."""
        loop = asyncio._get_running_loop()
        if loop is None:
            self.now(line)
            return
        with self._lock:
            self._pending.append(line)
            if len(self._pending) == 1:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued line."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        with contextlib.suppress(OSError, ValueError):  # a closed stderr: nowhere to log
            self._file.write(text)
            self._file.flush()


class _LineLogger:
    """structlog's wrapped logger: every level method writes the rendered line."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.msg = self.log = self.debug = self.info = self.warn = self.warning = write
        self.error = self.critical = self.exception = self.fatal = self.failure = write


class _LoggerFactory:
    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def __call__(self, *args: Any) -> _LineLogger:
        name = args[0] if args else None
        return _LineLogger(self._writer.batched if name == REQUEST_LOGGER else self._writer.now)


_writer: LineWriter | None = None


class _RequestLines:
    """The per-request line, written without structlog's machinery: the same text that
    ``structlog.get_logger(REQUEST_LOGGER).info("http_request", **fields)`` writes through
    the chain :func:`configure_logging` sets up (property-tested), at a third of the cost."""

    def __init__(self, json: bool, enabled: bool, writer: LineWriter) -> None:
        self._json, self.enabled, self._writer = json, enabled, writer
        self._stamp = UTCStamper()

    def __call__(self, request_id: str, method: str, path: str, status: int, duration_ms: float,
                 remote: str | None) -> None:
        if not self.enabled:
            return
        ts: MutableMapping[str, Any] = {}
        self._stamp(None, "info", ts)
        if self._json:
            line = jsoncodec.dumps({"request_id": request_id, "method": method, "path": path, "status": status,
                                    "duration_ms": duration_ms, "remote": remote, "event": "http_request",
                                    "level": "info", "timestamp": ts["timestamp"]},
                                   default=_fallback).decode("utf-8")
        else:
            cv = _console_value
            line = (f"{ts['timestamp']} [info     ] http_request                   duration_ms={duration_ms!r} "
                    f"method={cv(method)} path={cv(path)} remote={cv(remote)} request_id={cv(request_id)} "
                    f"status={status!r}")
        self._writer.batched(line)


_request_lines: _RequestLines | None = None


def log_request(request_id: str, method: str, path: str, status: int, duration_ms: float,
                remote: str | None) -> None:
    """Log the one line of a finished HTTP request (event ``http_request``, level info),
    batched per loop turn like every line of :data:`REQUEST_LOGGER`."""
    lines = _request_lines
    if lines is None:  # logging not configured (library use, tests): structlog's defaults
        structlog.get_logger(REQUEST_LOGGER).info(
            "http_request", request_id=request_id, method=method, path=path, status=status,
            duration_ms=duration_ms, remote=remote)
    else:
        lines(request_id, method, path, status, duration_ms, remote)


def configure_logging(level: str = "info", fmt: str = "standard") -> None:
    """Route structlog to stderr at ``level``, as JSON when ``fmt`` is "json"."""
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = JSONLines()
    else:
        renderer = ConsoleLines()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            UTCStamper(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_LoggerFactory(_stderr_writer()),
        cache_logger_on_first_use=True,
    )
    global _request_lines
    _request_lines = _RequestLines(fmt == "json", lvl <= logging.INFO, _stderr_writer())


def _stderr_writer() -> LineWriter:
    global _writer
    if _writer is None:
        _writer = LineWriter(sys.stderr)
    return _writer
