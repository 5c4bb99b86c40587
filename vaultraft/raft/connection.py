"""One TLS connection and the listening socket, driven by pysyncobj's poller (no threads).

A :class:`TlsConnection` is a non-blocking socket that goes CONNECTING (outgoing TCP connect)
-> HANDSHAKING (TLS, ``do_handshake`` retried on poll events) -> CONNECTED. Application bytes
are read only in CONNECTED, i.e. after OpenSSL has verified the peer's certificate against the
cluster CA, so nothing an unauthenticated peer sends is ever parsed by Python code.

Frames are a 4-byte big-endian length followed by one msgpack value. A header announcing more
than ``frame_limit`` bytes closes the connection before any of the body is buffered. A frame
holding msgpack ``nil`` is a transport keepalive and is never delivered.
"""

from __future__ import annotations

import enum
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import set_keepalive

from vaultraft.raft.tls import peer_node_id

log = structlog.get_logger("vaultraft.raft.transport")

_HEADER = 4
_KEEPALIVE_FRAME = b"\x00\x00\x00\x01\xc0"  # length 1, msgpack nil
_SEND_CHUNK = 1 << 16
_READ_BUDGET = 4 << 20  # bytes read per poll event before yielding to the rest of the tick
_ACCEPT_BATCH = 64
_LOG_PERIOD = 5.0  # seconds between two log lines of the same event (floods must not flood logs)


class _ThrottledLog:
    """Logs each event name at most once per period, counting what it suppressed."""

    def __init__(self, period: float) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: str, event: str, **fields: Any) -> None:
        now = monotonic_time()
        last = self._last.get(event)
        if last is not None and now - last < self._period:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(log, level)(event, **fields)


#: Rate-limited logger for events a remote party can trigger at will.
throttled_log = _ThrottledLog(_LOG_PERIOD)


class ConnState(enum.IntEnum):
    """Life cycle of a connection."""

    DISCONNECTED = 0
    CONNECTING = 1
    HANDSHAKING = 2
    CONNECTED = 3


@dataclass(frozen=True)
class SocketOptions:
    """Socket and timing limits shared by all connections of one transport."""

    send_buffer: int
    recv_buffer: int
    handshake_timeout: float
    idle_timeout: float
    keepalive_interval: float
    tcp_keepalive: tuple[int, int, int] | None = None


class FrameError(Exception):
    """A frame could not be encoded within the limits."""


def encode_frame(message: object, max_frame_bytes: int) -> bytes:
    """Encode ``message`` as a length-prefixed msgpack frame; raise FrameError if too large."""
    try:
        body: bytes = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise FrameError(f"message cannot be encoded: {type(e).__name__}") from None
    if len(body) > max_frame_bytes:
        raise FrameError(f"message of {len(body)} bytes exceeds the {max_frame_bytes}-byte frame limit")
    return len(body).to_bytes(_HEADER, "big") + body


def decode_body(body: bytes) -> Any:
    """Decode one frame body: str stays str, bin stays bytes, arrays become tuples."""
    return msgpack.unpackb(body, raw=False, use_list=False, strict_map_key=False, ext_hook=_no_ext)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not accepted")


class TlsConnection:
    """A non-blocking TLS connection registered with a pysyncobj poller."""

    def __init__(self, poller: Any, ctx: ssl.SSLContext, opts: SocketOptions, *, frame_limit: int,
                 server_side: bool) -> None:
        self._poller = poller
        self._ctx = ctx
        self._opts = opts
        self._server_side = server_side
        self.frame_limit = frame_limit
        #: Monotonic time by which the transport must have authenticated the peer; None once it has.
        self.deadline: float | None = None
        self.peer_id: str | None = None
        self.remote: str = ""
        self.on_open: Callable[[], None] | None = None
        self.on_message: Callable[[Any], None] | None = None
        self.on_close: Callable[[], None] | None = None
        self._sock: socket.socket | None = None
        self._fileno: int | None = None
        self._state = ConnState.DISCONNECTED
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._mask = 0
        self._read_wants_write = False
        now = monotonic_time()
        self._last_recv = now
        self._last_send = now
        self.created = now

    @property
    def state(self) -> ConnState:
        """The current life-cycle state."""
        return self._state

    @property
    def authenticated(self) -> bool:
        """True once TLS is up and the transport has accepted the peer (deadline cleared)."""
        return self._state == ConnState.CONNECTED and self.deadline is None

    def connect(self, host: str | None, port: int) -> bool:
        """Start a non-blocking connect to (host, port); False if it failed at once."""
        self.disconnect()
        if host is None:
            return False
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return False
        self._configure(sock)
        self._reset(monotonic_time())
        self.remote = f"{host}:{port}"
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._fileno = sock.fileno()
        self._state = ConnState.CONNECTING
        self._subscribe(POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        return True

    def send(self, message: object) -> bool:
        """Queue one message and try to write it; False if it cannot be encoded or sent."""
        if self._state == ConnState.DISCONNECTED:
            return False
        try:
            frame = encode_frame(message, self.frame_limit)
        except FrameError as e:
            throttled_log("error", "raft_frame_not_sent", peer=self.peer_id, reason=str(e))
            return False
        self._queue(frame)
        return self.state != ConnState.DISCONNECTED

    def check_timers(self, now: float) -> None:
        """Enforce the authentication deadline and idle timeout; send keepalives when quiet."""
        if self._state == ConnState.DISCONNECTED:
            return
        if self.deadline is not None:
            if now > self.deadline:
                throttled_log("info", "raft_peer_auth_timeout", remote=self.remote, state=self._state.name)
                self.disconnect()
            return
        if now - self._last_recv > self._opts.idle_timeout:
            throttled_log("info", "raft_peer_idle_timeout", peer=self.peer_id)
            self.disconnect()
        elif now - self._last_send >= self._opts.keepalive_interval:
            self._queue(_KEEPALIVE_FRAME)

    def disconnect(self) -> None:
        """Close the socket; fire ``on_close`` if the connection was not already closed."""
        was_open = self._state != ConnState.DISCONNECTED
        self._state = ConnState.DISCONNECTED
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._mask = 0
        if was_open and self.on_close is not None:
            self.on_close()

    # -- internals -----------------------------------------------------------------------

    def start_server(self, sock: socket.socket) -> None:
        """Take an accepted socket and start the server-side TLS handshake."""
        self._configure(sock)
        try:
            host, port = sock.getpeername()[:2]
            self.remote = f"{host}:{port}"
        except OSError:
            self.remote = "?"
        self._reset(monotonic_time())
        self._state = ConnState.CONNECTING
        self._sock = sock
        self._fileno = sock.fileno()
        self._start_tls()

    def _configure(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._opts.send_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._opts.recv_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._opts.tcp_keepalive is not None:
                set_keepalive(sock, *self._opts.tcp_keepalive)
        except OSError:
            pass

    def _reset(self, now: float) -> None:
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._read_wants_write = False
        self.peer_id = None
        self.created = self._last_recv = self._last_send = now
        self.deadline = now + self._opts.handshake_timeout

    def _subscribe(self, mask: int) -> None:
        if self._fileno is not None and mask != self._mask:
            self._mask = mask
            self._poller.subscribe(self._fileno, self._on_event, mask)

    def _on_event(self, descr: int, event: int) -> None:
        # The poller may deliver a stale event for a descriptor we already closed (and which
        # may now belong to another socket): ignore it, never unsubscribe someone else's fd.
        if self._sock is None or descr != self._fileno:
            return
        if event & POLL_EVENT_TYPE.ERROR and not event & POLL_EVENT_TYPE.READ:
            self.disconnect()
            return
        if self._state == ConnState.CONNECTING:
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err or event & POLL_EVENT_TYPE.ERROR:
                self.disconnect()
                return
            try:
                self._sock.getpeername()
            except OSError:
                return  # a stale event for a reused descriptor: the connect is still pending
            self._start_tls()
        elif self._state == ConnState.HANDSHAKING:
            self._handshake()
        elif self._state == ConnState.CONNECTED:
            if event & POLL_EVENT_TYPE.READ or (self._read_wants_write and event & POLL_EVENT_TYPE.WRITE):
                self._read()
            if event & POLL_EVENT_TYPE.ERROR and self.state != ConnState.DISCONNECTED:
                self.disconnect()
                return
            self._flush()

    def _start_tls(self) -> None:
        plain = self._sock
        if plain is None:
            return
        try:
            self._sock = self._ctx.wrap_socket(plain, server_side=self._server_side,
                                               do_handshake_on_connect=False)
        except (ssl.SSLError, OSError):
            self.disconnect()
            return
        self._state = ConnState.HANDSHAKING
        self._handshake()

    def _handshake(self) -> None:
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            self.disconnect()
            return
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._subscribe(POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
            return
        except ssl.SSLWantWriteError:
            self._subscribe(POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
            return
        except (ssl.SSLError, OSError, ValueError) as e:
            throttled_log("info", "raft_tls_handshake_failed", remote=self.remote, reason=_reason(e))
            self.disconnect()
            return
        try:
            self.peer_id = peer_node_id(sock)
        except ValueError as e:
            throttled_log("info", "raft_tls_no_peer_identity", remote=self.remote, reason=str(e))
            self.disconnect()
            return
        self._state = ConnState.CONNECTED
        self._last_recv = monotonic_time()
        self._subscribe(POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
        if self.on_open is not None:
            self.on_open()
        if self._state == ConnState.CONNECTED:
            # The handshake may have pulled application data into OpenSSL's buffer already.
            self._read()
            self._flush()

    def _queue(self, frame: bytes) -> None:
        self._wbuf += frame
        self._last_send = monotonic_time()
        if self._state == ConnState.CONNECTED:
            self._flush()

    def _flush(self) -> None:
        sock = self._sock
        if self._state != ConnState.CONNECTED or sock is None:
            return
        while self._wbuf:
            try:
                sent = sock.send(bytes(self._wbuf[:_SEND_CHUNK]))
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                break
            except (ssl.SSLError, OSError) as e:
                throttled_log("info", "raft_peer_write_failed", peer=self.peer_id, reason=_reason(e))
                self.disconnect()
                return
            if sent <= 0:
                break
            del self._wbuf[:sent]
        mask = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if self._wbuf or self._read_wants_write:
            mask |= POLL_EVENT_TYPE.WRITE
        self._subscribe(mask)

    def _read(self) -> None:
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return
        self._read_wants_write = False
        budget = _READ_BUDGET
        chunk_size = max(16384, self._opts.recv_buffer)
        while self._state == ConnState.CONNECTED:
            try:
                chunk = sock.recv(chunk_size)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                return
            except (ssl.SSLError, OSError) as e:
                throttled_log("info", "raft_peer_read_failed", peer=self.peer_id, remote=self.remote,
                              reason=_reason(e))
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            self._last_recv = monotonic_time()
            self._rbuf += chunk
            if not self._parse():
                return
            budget -= len(chunk)
            # Data already decrypted inside OpenSSL does not wake the poller: drain it.
            if budget <= 0 and sock.pending() == 0:
                return

    def _parse(self) -> bool:
        """Deliver every complete frame in the read buffer; False if the connection closed."""
        buf = self._rbuf
        while len(buf) >= _HEADER:
            size = int.from_bytes(buf[:_HEADER], "big")
            if size == 0 or size > self.frame_limit:
                throttled_log("warning", "raft_frame_rejected", peer=self.peer_id, remote=self.remote, size=size,
                            limit=self.frame_limit)
                self.disconnect()
                return False
            if len(buf) < _HEADER + size:
                return True
            body = bytes(buf[_HEADER:_HEADER + size])
            del buf[:_HEADER + size]
            try:
                message = decode_body(body)
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                throttled_log("warning", "raft_frame_undecodable", peer=self.peer_id, reason=type(e).__name__)
                self.disconnect()
                return False
            if message is None:
                continue  # keepalive
            if self.on_message is not None:
                self.on_message(message)
            if self._state != ConnState.CONNECTED:
                return False
        return True


class TlsServer:
    """The listening socket; hands every accepted socket to ``on_accept``."""

    def __init__(self, poller: Any, host: str, port: int, backlog: int,
                 on_accept: Callable[[socket.socket], None], opts: SocketOptions) -> None:
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._backlog = backlog
        self._on_accept = on_accept
        self._opts = opts
        self._sock: socket.socket | None = None
        self._fileno: int | None = None

    def bind(self) -> None:
        """Bind and listen; raises OSError if the address is unavailable."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._opts.recv_buffer)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._fileno = sock.fileno()
        self._poller.subscribe(self._fileno, self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        """Stop listening."""
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_event(self, descr: int, event: int) -> None:
        if self._sock is None or descr != self._fileno:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: keep listening, the next tick retries.
                throttled_log("warning", "raft_accept_failed", reason=_reason(e))
                return
            self._on_accept(sock)
            if self._sock is None:
                return


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    return type(e).__name__
