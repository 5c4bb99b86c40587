"""The replication wire protocol: length-prefixed msgpack frames and versioned messages.

A frame is a 4-byte big-endian body length followed by one msgpack value (never pickle,
extension types refused). A header announcing more than the frame cap (default 32 MiB) or
zero bytes is a :class:`WireError` before any of the body is read. Every message is the
array ``[PROTOCOL_VERSION, type, {field: value}]``; :func:`decode_message` checks the
version, the type, the exact field set and every field's type and range, and anything else
is a :class:`WireError` (the caller then closes the connection).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, get_args

import msgpack
import structlog

from vaultraft.replication.interfaces import Mode
from vaultraft.storage.batch import MAX_KEY_BYTES
from vaultraft.storage.wal import WalEntry

log = structlog.get_logger("vaultraft.replication")

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME_BYTES: Final = 32 << 20
_HEADER: Final = 4
#: Frames at least this large are (de)serialized in a worker thread, off the event loop.
_OFFLOAD_BYTES: Final = 1 << 20
_MAX_INT: Final = (1 << 63) - 1
_MAX_SHORT_STR: Final = 1024
_MAX_TEXT: Final = 4096
_HEX_DIGEST = re.compile(r"^[0-9a-f]{1,128}$")
MODES: Final[tuple[str, ...]] = get_args(Mode)


class WireError(Exception):
    """A frame or message that violates the protocol; the connection must be closed."""


class PeerClosed(ConnectionError):
    """The peer closed the connection (at a frame boundary or inside a frame)."""


# -- frames ------------------------------------------------------------------------------------

def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` (bin type for bytes); WireError if it cannot be encoded."""
    try:
        body: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"message cannot be encoded: {type(e).__name__}") from None
    return body


def unpack(body: bytes) -> Any:
    """Decode one frame body (str stays str, bin stays bytes); WireError for anything else."""
    try:
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext)
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types; all mean "garbage"
        raise WireError(f"undecodable frame: {type(e).__name__}") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not accepted")


async def read_frame(reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Any:
    """Read one frame and return its decoded msgpack value.

    Raises WireError for an oversized or empty header (before reading the body) or an
    undecodable body, and PeerClosed at EOF. Large bodies are decoded off the event loop.
    """
    try:
        header = await reader.readexactly(_HEADER)
    except asyncio.IncompleteReadError:
        raise PeerClosed("connection closed") from None
    size = int.from_bytes(header, "big")
    if size == 0 or size > max_frame_bytes:
        raise WireError(f"frame of {size} bytes outside 1..{max_frame_bytes}")
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise PeerClosed("connection closed inside a frame") from None
    if size >= _OFFLOAD_BYTES:
        return await asyncio.to_thread(unpack, body)
    return unpack(body)


async def write_frame(writer: asyncio.StreamWriter, obj: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                      timeout: float | None = None) -> int:
    """Encode ``obj`` as one frame, write it and wait until the transport buffer drains.

    Raises WireError (nothing written) if the body exceeds ``max_frame_bytes``, and
    TimeoutError if the peer does not read it within ``timeout``. Returns the body size.
    """
    body = pack(obj)
    if len(body) > max_frame_bytes:
        raise WireError(f"message of {len(body)} bytes exceeds the {max_frame_bytes}-byte frame limit")
    writer.write(len(body).to_bytes(_HEADER, "big") + body)
    async with asyncio.timeout(timeout):
        await writer.drain()
    return len(body)


# -- messages ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """Base of all protocol messages; ``TYPE`` is the wire name."""

    TYPE: ClassVar[str] = ""

    def body(self) -> dict[str, Any]:
        """The field map sent on the wire (shallow: values are sent as they are)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Hello(Message):
    """Secondary → primary, first frame: who it is and where it stands."""

    TYPE: ClassVar[str] = "hello"
    secondary_id: str
    mode: Mode
    lineage: str
    remote_index: int
    complete: bool


@dataclass(frozen=True)
class Welcome(Message):
    """Primary → secondary: accepted; ``bulk`` says whether a bulk sync follows."""

    TYPE: ClassVar[str] = "welcome"
    lineage: str
    epoch: int
    bulk: bool


@dataclass(frozen=True)
class Redirect(Message):
    """Primary standby → secondary: connect to the active node's replication address."""

    TYPE: ClassVar[str] = "redirect"
    addr: str


@dataclass(frozen=True)
class Error(Message):
    """Either side: a refusal or a fault; the sender closes the connection after it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class BulkBegin(Message):
    """Primary → secondary: a bulk sync of snapshot ``index`` of ``lineage`` starts."""

    TYPE: ClassVar[str] = "bulk_begin"
    lineage: str
    index: int


@dataclass(frozen=True)
class BulkChunk(Message):
    """Primary → secondary: (key, ciphertext) pairs of the running bulk sync."""

    TYPE: ClassVar[str] = "bulk_chunk"
    items: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class BulkEnd(Message):
    """Primary → secondary: the bulk sync is complete at ``index``; streaming follows."""

    TYPE: ClassVar[str] = "bulk_end"
    index: int


@dataclass(frozen=True)
class Wal(Message):
    """Primary → secondary: WAL entries in strictly increasing index order."""

    TYPE: ClassVar[str] = "wal"
    epoch: int
    entries: tuple[WalEntry, ...]

    def body(self) -> dict[str, Any]:
        """Entries travel as ``[index, ts_ms, [batch, ...]]``."""
        return {"epoch": self.epoch, "entries": [[e.index, e.ts_ms, list(e.batches)] for e in self.entries]}


@dataclass(frozen=True)
class Heartbeat(Message):
    """Primary → secondary when idle: the primary's applied index, epoch and clock."""

    TYPE: ClassVar[str] = "heartbeat"
    applied_index: int
    epoch: int
    time: float


@dataclass(frozen=True)
class Ack(Message):
    """Secondary → primary: everything up to ``remote_index`` is applied (also answers heartbeats)."""

    TYPE: ClassVar[str] = "ack"
    remote_index: int


@dataclass(frozen=True)
class DigestRequest(Message):
    """Secondary → primary: please send a digest (and every entry it covers)."""

    TYPE: ClassVar[str] = "digest_request"
    request_id: int


@dataclass(frozen=True)
class DigestReply(Message):
    """Primary → secondary: digest ``root`` at ``index``; every entry <= index was sent before it."""

    TYPE: ClassVar[str] = "digest_reply"
    request_id: int
    index: int
    root: str


@dataclass(frozen=True)
class LeaseRequest(Message):
    """Primary → DR secondary: renew ``holder``'s fencing lease at ``epoch`` (see fence.py)."""

    TYPE: ClassVar[str] = "lease_request"
    request_id: int
    holder: str
    epoch: int
    duration: float


@dataclass(frozen=True)
class LeaseReply(Message):
    """DR secondary → primary: its voter's answer to the LeaseRequest ``request_id``."""

    TYPE: ClassVar[str] = "lease_reply"
    request_id: int
    granted: bool
    epoch: int
    holder: str
    reason: str


# -- validation --------------------------------------------------------------------------------

def _int(v: Any) -> int:
    if type(v) is not int or not 0 <= v <= _MAX_INT:
        raise WireError("expected a non-negative integer")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise WireError("expected a boolean")
    return v


def _short_str(v: Any) -> str:
    if type(v) is not str or len(v) > _MAX_SHORT_STR:
        raise WireError("expected a short string")
    return v


def _nonempty_str(v: Any) -> str:
    if not _short_str(v):
        raise WireError("expected a non-empty string")
    return str(v)


def _text(v: Any) -> str:
    if type(v) is not str or len(v) > _MAX_TEXT:
        raise WireError("expected a string")
    return v


def _duration(v: Any) -> float:
    if type(v) not in (int, float) or not 0 < v <= 86400:  # NaN fails the comparison
        raise WireError("expected a duration")
    return float(v)


def _mode(v: Any) -> str:
    if v not in MODES:
        raise WireError("unknown replication mode")
    return str(v)


def _time(v: Any) -> float:
    if type(v) not in (int, float) or not 0 <= v < 1e12:
        raise WireError("expected a time")
    return float(v)


def _hex(v: Any) -> str:
    if type(v) is not str or not _HEX_DIGEST.match(v):
        raise WireError("expected a hex digest")
    return v


def _key(v: Any) -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_KEY_BYTES:
        raise WireError("malformed key")
    return v


def _items(v: Any) -> tuple[tuple[str, bytes], ...]:
    if type(v) is not list:
        raise WireError("expected a list of items")
    out: list[tuple[str, bytes]] = []
    for item in v:
        if type(item) is not list or len(item) != 2 or type(item[1]) is not bytes:
            raise WireError("malformed item")
        out.append((_key(item[0]), item[1]))
    return tuple(out)


def _entries(v: Any) -> tuple[WalEntry, ...]:
    if type(v) is not list or not v:
        raise WireError("expected a non-empty list of entries")
    out: list[WalEntry] = []
    last = 0
    for item in v:
        if type(item) is not list or len(item) != 3:
            raise WireError("malformed wal entry")
        index, ts_ms, batches = _int(item[0]), _int(item[1]), item[2]
        if index <= last:
            raise WireError("wal entries out of order")
        if type(batches) is not list or any(type(b) is not bytes for b in batches):
            raise WireError("malformed wal batches")
        out.append(WalEntry(index, ts_ms, tuple(batches)))
        last = index
    return tuple(out)


_SPECS: dict[str, tuple[type[Message], dict[str, Callable[[Any], Any]]]] = {
    Hello.TYPE: (Hello, {"secondary_id": _nonempty_str, "mode": _mode, "lineage": _short_str,
                         "remote_index": _int, "complete": _bool}),
    Welcome.TYPE: (Welcome, {"lineage": _short_str, "epoch": _int, "bulk": _bool}),
    Redirect.TYPE: (Redirect, {"addr": _nonempty_str}),
    Error.TYPE: (Error, {"code": _short_str, "message": _text}),
    BulkBegin.TYPE: (BulkBegin, {"lineage": _short_str, "index": _int}),
    BulkChunk.TYPE: (BulkChunk, {"items": _items}),
    BulkEnd.TYPE: (BulkEnd, {"index": _int}),
    Wal.TYPE: (Wal, {"epoch": _int, "entries": _entries}),
    Heartbeat.TYPE: (Heartbeat, {"applied_index": _int, "epoch": _int, "time": _time}),
    Ack.TYPE: (Ack, {"remote_index": _int}),
    DigestRequest.TYPE: (DigestRequest, {"request_id": _int}),
    DigestReply.TYPE: (DigestReply, {"request_id": _int, "index": _int, "root": _hex}),
    LeaseRequest.TYPE: (LeaseRequest, {"request_id": _int, "holder": _nonempty_str, "epoch": _int,
                                       "duration": _duration}),
    LeaseReply.TYPE: (LeaseReply, {"request_id": _int, "granted": _bool, "epoch": _int, "holder": _short_str,
                                   "reason": _short_str}),
}


def encode_message(msg: Message) -> list[Any]:
    """The wire form ``[PROTOCOL_VERSION, type, body]`` of ``msg``."""
    return [PROTOCOL_VERSION, msg.TYPE, msg.body()]


def decode_message(obj: Any) -> Message:
    """Validate a decoded frame and build its message; WireError for anything malformed."""
    if type(obj) is not list or len(obj) != 3:
        raise WireError("a message is a 3-element array")
    version, kind, body = obj
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise WireError("unsupported protocol version")
    spec = _SPECS.get(kind) if type(kind) is str else None
    if spec is None:
        raise WireError("unknown message type")
    cls, checks = spec
    if type(body) is not dict or body.keys() != checks.keys():
        raise WireError(f"malformed {kind} message")
    return cls(**{name: check(body[name]) for name, check in checks.items()})


async def read_message(reader: asyncio.StreamReader, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Message:
    """Read and validate one message (see :func:`read_frame` and :func:`decode_message`)."""
    return decode_message(await read_frame(reader, max_frame_bytes))


async def write_message(writer: asyncio.StreamWriter, msg: Message, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                        timeout: float | None = None) -> int:
    """Write one message (see :func:`write_frame`); returns the body size."""
    return await write_frame(writer, encode_message(msg), max_frame_bytes, timeout)


# -- addresses and logging ---------------------------------------------------------------------

def parse_addr(addr: str) -> tuple[str, int]:
    """Split a replication address ``host:port`` (``[v6]:port`` too); ValueError if malformed."""
    host, sep, port_s = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536 or len(addr) > 300:
        raise ValueError(f"not a host:port address: {addr[:300]!r}")
    return host, int(port_s)


def format_addr(host: str, port: int) -> str:
    """The ``host:port`` form of an address (brackets around IPv6 hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ThrottledLog:
    """Logs each event name at most once per period, counting what it suppressed (for events
    a remote party can trigger at will)."""

    def __init__(self, period: float = 5.0) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: str, event: str, **kw: Any) -> None:
        """Log ``event`` at ``level`` unless it was logged less than a period ago."""
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self._period:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            kw["suppressed"] = suppressed
        getattr(log, level)(event, **kw)
