"""The secondary side: connects to the primary, applies what it ships through a ReplicaSink.

:meth:`ReplicationClient.run` loops until cancelled: pick a primary address (following
redirects from standbys), mutual TLS with this secondary's certificate (the server must
present a certificate of the replication CA), Hello with the sink's position, then apply
bulk syncs and WAL frames in order. Frames are read ahead while an apply runs, and Wal
frames queued behind each other are applied and acknowledged as one. Any error — network, protocol,
refusal, a sink fault — ends the session and the client reconnects with jittered backoff.
Every sink call is awaited, so a slow sink slows the primary's sending (TCP backpressure)
and never the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog

from vaultraft.raft.tls import NodeCert, client_context, peer_node_id
from vaultraft.replication.fence import LeaseGrant, LeaseVoter
from vaultraft.replication.interfaces import Mode, ReplicaSink
from vaultraft.replication.wire import (
    DEFAULT_MAX_FRAME_BYTES,
    Ack,
    BulkBegin,
    BulkChunk,
    BulkEnd,
    DigestReply,
    DigestRequest,
    Error,
    Heartbeat,
    Hello,
    LeaseReply,
    LeaseRequest,
    Message,
    Redirect,
    ThrottledLog,
    Wal,
    Welcome,
    WireError,
    parse_addr,
    read_message,
    write_message,
)
from vaultraft.storage.wal import WalEntry, is_cluster_own

__all__ = ["ClientConfig", "ClientStatus", "MerkleResult", "RemoteRefused", "ReplicationClient",
           "ReplicationError"]

log = structlog.get_logger("vaultraft.replication")
_throttled = ThrottledLog()

State = Literal["idle", "connecting", "merkle-sync", "stream-wals"]
ConnectionState = Literal["connected", "disconnected", "connecting"]


class ReplicationError(Exception):
    """The replication link cannot do what was asked (e.g. not connected)."""


class RemoteRefused(ReplicationError):
    """The primary sent an Error frame (unauthorized, mode mismatch, not active, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class ClientConfig:
    """Limits and timings of a :class:`ReplicationClient`."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    connect_timeout: float = 10.0  # TCP connect + TLS handshake
    idle_timeout: float = 15.0  # reconnect if the primary sends nothing for this long
    write_timeout: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_redirects: int = 3  # consecutive redirects followed before backing off
    read_ahead_frames: int = 64  # frames read while an apply runs (then TCP backpressure)
    max_apply_bytes: int = 8 * 1024 * 1024  # queued Wal frames merged into one apply, at most


@dataclass(frozen=True)
class ClientStatus:
    """The secondary's view of the link (Vault's replication status vocabulary)."""

    state: State
    connection_state: ConnectionState
    last_remote_wal: int
    last_heartbeat: float | None  # unix time of the last Heartbeat or Wal frame
    primary_cluster_addr: str  # the connected address, "" when not connected
    known_primary_cluster_addrs: tuple[str, ...]
    primary_epoch: int
    primary_applied_index: int
    #: Why the last connection attempt or session failed ("" once a session is established);
    #: never a sink's message (it could quote stored data), only its type.
    last_error: str = ""


@dataclass(frozen=True)
class MerkleResult:
    """Digests of both sides over the same primary entries (every entry <= primary_index).

    ``secondary_index`` is the last applied entry, which may be below ``primary_index``
    (entries that changed nothing are not in the WAL), so only the roots are compared.
    """

    primary_index: int
    primary_root: str
    secondary_index: int
    secondary_root: str
    equal: bool


@dataclass(eq=False)
class _Session:
    writer: asyncio.StreamWriter
    addr: str
    lineage: str
    last: int
    welcomed: bool = False
    epoch: int = 0
    bulk_index: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ReplicationClient:
    """Keeps one secondary cluster's active node replicating from the primary."""

    def __init__(self, sink: ReplicaSink, cert: NodeCert, addrs: Sequence[str], mode: Mode, *,
                 secondary_id: str, config: ClientConfig | None = None,
                 accept_server_id: Callable[[str], bool] | None = None,
                 voter: LeaseVoter | None = None) -> None:
        """``cert`` is this secondary's certificate from the primary's replication CA; its
        CN must be ``secondary_id``. ``addrs`` are the primary's replication addresses.
        ``accept_server_id`` vets the server certificate's CN (default: anything but our own
        id; pass a stricter predicate when primary node ids are recognizable). ``voter``
        (DR mode only) answers the primary's fencing lease requests; it must be the same
        voter this secondary uses for its own promotion. Without one, every request is
        refused."""
        if cert.node_id != secondary_id:
            raise ValueError("the certificate was not issued for this secondary id")
        if voter is not None and mode != "dr":
            raise ValueError("only a DR secondary votes on the primary's lease")
        self._voter = voter
        self._sink = sink
        self._cert = cert
        self._addrs = _check_addrs(addrs)
        self._mode: Mode = mode
        self._id = secondary_id
        self._cfg = config or ClientConfig()
        self._accept = accept_server_id or (lambda cn: cn != secondary_id)
        self._ctx: ssl.SSLContext | None = None
        self._running = False
        self._next = 0
        self._session: _Session | None = None
        self._pending: dict[int, asyncio.Future[MerkleResult]] = {}
        self._ids = itertools.count(1)
        self._merkle_lock = asyncio.Lock()
        self._state: State = "idle"
        self._conn_state: ConnectionState = "disconnected"
        self._primary_addr = ""
        self._last_remote_wal = 0
        self._last_heartbeat: float | None = None
        self._epoch = 0
        self._primary_applied = 0
        self._last_error = ""

    def status(self) -> ClientStatus:
        """A consistent snapshot of the link's state (cheap; never blocks)."""
        return ClientStatus(
            state=self._state if self._running else "idle",
            connection_state=self._conn_state if self._running else "disconnected",
            last_remote_wal=self._last_remote_wal, last_heartbeat=self._last_heartbeat,
            primary_cluster_addr=self._primary_addr, known_primary_cluster_addrs=self._addrs,
            primary_epoch=self._epoch, primary_applied_index=self._primary_applied, last_error=self._last_error)

    def update_addrs(self, addrs: Sequence[str]) -> None:
        """Replace the primary addresses (used from the next connection attempt on)."""
        self._addrs = _check_addrs(addrs)
        self._next = 0

    async def run(self) -> None:
        """Replicate until cancelled (reconnecting on every error); one run at a time."""
        if self._running:
            raise RuntimeError("replication client is already running")
        self._running = True
        backoff = self._cfg.backoff_initial
        redirects = 0
        redirect_to: str | None = None
        try:
            if self._ctx is None:
                self._ctx = await asyncio.to_thread(client_context, self._cert)
            with contextlib.suppress(Exception):  # status only; a failing sink surfaces in _connect
                self._last_remote_wal = self._sink.position().remote_index
            while True:
                addr = redirect_to or self._pick()
                redirect_to = None
                established = False
                if addr is not None:
                    self._state, self._conn_state = "connecting", "connecting"
                    try:
                        redirect_to = await self._connect(addr)
                    except Exception as e:  # noqa: BLE001 - any failure: reconnect
                        self._log_failure(addr, e)
                    finally:
                        established = self._session_established
                        self._teardown()
                    if redirect_to is not None:
                        log.info("replication_redirected", from_addr=addr, to_addr=redirect_to)
                        redirects += 1
                        if redirects <= self._cfg.max_redirects:
                            continue
                        redirect_to = None
                    if established:
                        backoff = self._cfg.backoff_initial
                    else:
                        self._next += 1
                redirects = 0
                self._conn_state = "disconnected"
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._cfg.backoff_max)
        finally:
            self._running = False
            self._teardown()
            self._state, self._conn_state = "idle", "disconnected"

    async def merkle_check(self, timeout: float = 30.0) -> MerkleResult:
        """Compare the primary's digest with this secondary's over the same entries.

        The primary computes its digest at index X and sends every entry <= X before the
        reply; this client computes the sink's digest when the reply arrives, i.e. once
        exactly those entries are applied. Raises ReplicationError when not streaming and
        TimeoutError after ``timeout``.
        """
        async with asyncio.timeout(timeout), self._merkle_lock:  # one check at a time
            sess = self._session
            if sess is None:
                raise ReplicationError("not connected to a primary")
            request_id = next(self._ids)
            fut: asyncio.Future[MerkleResult] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = fut
            try:
                await self._write(sess, DigestRequest(request_id))
                return await fut
            finally:
                self._pending.pop(request_id, None)
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning after a timeout

    # -- one connection ---------------------------------------------------------------------

    @property
    def _session_established(self) -> bool:
        return self._session is not None

    def _pick(self) -> str | None:
        if not self._addrs:
            return None
        return self._addrs[self._next % len(self._addrs)]

    async def _connect(self, addr: str) -> str | None:
        """One session with ``addr``; returns a redirect address, raises when it ends otherwise."""
        host, port = parse_addr(addr)
        async with asyncio.timeout(self._cfg.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self._ctx, ssl_handshake_timeout=self._cfg.connect_timeout)
        try:
            server_id = peer_node_id(writer.get_extra_info("ssl_object"))
            if not self._accept(server_id):
                raise ReplicationError(f"unexpected primary certificate {server_id[:64]!r}")
            pos = self._sink.position()
            sess = _Session(writer, addr, pos.lineage, pos.remote_index)
            await self._write(sess, Hello(self._id, self._mode, pos.lineage, pos.remote_index, pos.complete))
            return await self._receive(sess, reader)
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _receive(self, sess: _Session, reader: asyncio.StreamReader) -> str | None:
        """Read frames in a task of its own while this one applies them, so frames that arrive
        during an apply queue up and consecutive Wal frames are applied (and acknowledged) as
        one: under load the secondary's log gets one entry per apply, not one per frame."""
        inbox: asyncio.Queue[Message | BaseException] = asyncio.Queue(self._cfg.read_ahead_frames)
        reading = asyncio.create_task(self._read_frames(reader, inbox), name="replication-read-frames")
        try:
            held: Message | None = None
            while True:
                msg = held if held is not None else await _next_frame(inbox)
                held = None
                if isinstance(msg, Redirect):  # before Welcome, or later when the node loses leadership
                    return msg.addr
                if isinstance(msg, Error):
                    raise RemoteRefused(msg.code, msg.message)
                if not sess.welcomed:
                    if not isinstance(msg, Welcome):
                        raise WireError(f"expected welcome, got {msg.TYPE}")
                    self._welcome(sess, msg)
                elif isinstance(msg, Wal):
                    held = await self._apply_wals(sess, msg, inbox)
                else:
                    await self._handle(sess, msg)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read_frames(self, reader: asyncio.StreamReader, inbox: asyncio.Queue[Message | BaseException]) -> None:
        """Queue every frame from ``reader`` (blocking while the queue is full: TCP backpressure
        reaches the primary), then the error that ended the stream."""
        try:
            while True:
                async with asyncio.timeout(self._cfg.idle_timeout):
                    msg = await read_message(reader, self._cfg.max_frame_bytes)
                await inbox.put(msg)
        except Exception as e:  # noqa: BLE001 - handed to the applying task, which raises it
            await inbox.put(e)

    async def _apply_wals(self, sess: _Session, first: Wal,
                          inbox: asyncio.Queue[Message | BaseException]) -> Message | None:
        """Apply ``first`` and the valid Wal frames queued right behind it (up to
        ``max_apply_bytes``) in one sink call, then acknowledge the last index once.

        Returns the first queued frame not merged (any other message, or a Wal frame that
        fails the epoch or order check: it is handled next and ends the session after what
        came before it was applied). Raises for an invalid ``first``, applying nothing."""
        if sess.bulk_index is not None:
            raise WireError("wal entries inside a bulk sync")
        self._check_epoch(sess, first.epoch)
        if first.entries[0].index <= sess.last:
            raise WireError("wal entries at or below the applied index")
        entries = list(first.entries)
        size = _wal_bytes(first)
        held: Message | BaseException | None = None
        while size < self._cfg.max_apply_bytes and not inbox.empty():
            nxt = inbox.get_nowait()
            if not (isinstance(nxt, Wal) and nxt.epoch >= sess.epoch and nxt.entries[0].index > entries[-1].index):
                held = nxt
                break
            sess.epoch = self._epoch = nxt.epoch
            entries.extend(nxt.entries)
            size += _wal_bytes(nxt)
        await self._sink.apply_wal(sess.lineage, entries)
        sess.last = self._last_remote_wal = entries[-1].index
        self._last_heartbeat = time.time()
        await self._write(sess, Ack(sess.last))
        if isinstance(held, BaseException):
            raise held
        return held

    def _welcome(self, sess: _Session, msg: Welcome) -> None:
        if not msg.bulk and msg.lineage != sess.lineage:
            raise WireError("primary offered to stream a different lineage")
        sess.welcomed, sess.lineage, sess.epoch = True, msg.lineage, msg.epoch
        self._session = sess
        self._epoch, self._primary_addr = msg.epoch, sess.addr
        self._conn_state = "connected"
        self._state = "merkle-sync" if msg.bulk else "stream-wals"
        self._last_error = ""
        log.info("replication_connected", primary=sess.addr, bulk=msg.bulk, remote_index=sess.last)

    async def _handle(self, sess: _Session, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            self._check_epoch(sess, msg.epoch)
            self._primary_applied, self._last_heartbeat = msg.applied_index, time.time()
            await self._write(sess, Ack(sess.last))
        elif isinstance(msg, BulkBegin):
            if sess.bulk_index is not None or msg.lineage != sess.lineage:
                raise WireError("unexpected bulk_begin")
            self._state = "merkle-sync"
            log.info("replication_bulk_sync_started", primary=sess.addr, index=msg.index)
            await self._sink.begin_bulk(msg.lineage, msg.index)
            sess.bulk_index = msg.index
        elif isinstance(msg, BulkChunk):
            if sess.bulk_index is None:
                raise WireError("bulk_chunk outside a bulk sync")
            items = [item for item in msg.items if not is_cluster_own(item[0])]
            if len(items) != len(msg.items):
                _throttled("warning", "replication_cluster_own_keys_dropped", count=len(msg.items) - len(items))
            if items:
                await self._sink.bulk_put(items)
        elif isinstance(msg, BulkEnd):
            if sess.bulk_index != msg.index:
                raise WireError("bulk_end does not match bulk_begin")
            await self._sink.end_bulk(sess.lineage, msg.index)
            sess.bulk_index = None
            sess.last = self._last_remote_wal = msg.index
            self._state = "stream-wals"
            log.info("replication_bulk_sync_finished", primary=sess.addr, index=msg.index)
            await self._write(sess, Ack(sess.last))
        elif isinstance(msg, DigestReply):
            await self._digest_reply(msg)
        elif isinstance(msg, LeaseRequest):
            grant = (self._voter.renew(msg.holder, msg.epoch, msg.duration) if self._voter is not None
                     else LeaseGrant(False, 0, "", "no_voter"))
            if not grant.granted:
                _throttled("info", "replication_lease_refused", holder=msg.holder[:64], epoch=msg.epoch,
                           reason=grant.reason)
            await self._write(sess, LeaseReply(msg.request_id, grant.granted, grant.epoch, grant.holder,
                                               grant.reason))
        else:
            raise WireError(f"unexpected {msg.TYPE} message from the primary")

    async def _digest_reply(self, msg: DigestReply) -> None:
        """Every entry <= msg.index has been applied (they came first): digest the sink now."""
        fut = self._pending.get(msg.request_id)
        if fut is None or fut.done():
            return  # the caller gave up (timeout); nothing to compare
        try:
            index, root = await self._sink.digest(self._mode)
        except Exception as e:
            if not fut.done():
                fut.set_exception(ReplicationError(f"secondary digest failed: {type(e).__name__}"))
            raise
        if not fut.done():
            fut.set_result(MerkleResult(msg.index, msg.root, index, root, msg.root == root))

    def _check_epoch(self, sess: _Session, epoch: int) -> None:
        if epoch < sess.epoch:
            raise WireError("primary epoch went backwards")
        sess.epoch = self._epoch = epoch

    async def _write(self, sess: _Session, msg: Message) -> None:
        async with sess.lock:
            await write_message(sess.writer, msg, self._cfg.max_frame_bytes, self._cfg.write_timeout)

    def _teardown(self) -> None:
        self._session = None
        self._primary_addr = ""
        if self._running:
            self._state, self._conn_state = "connecting", "disconnected"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ReplicationError("replication connection lost"))

    def _log_failure(self, addr: str, e: BaseException) -> None:
        if isinstance(e, RemoteRefused):
            self._last_error = f"the primary at {addr} refused this secondary: {str(e)[:200]}"
            log.warning("replication_refused_by_primary", primary=addr, code=e.code)
        elif isinstance(e, (WireError, ReplicationError)):
            self._last_error = f"the session with the primary at {addr} failed: {str(e)[:200]}"
            log.warning("replication_session_failed", primary=addr, reason=str(e)[:200])
        elif isinstance(e, (OSError, TimeoutError, ConnectionError)):
            self._last_error = f"cannot reach the primary at {addr}: {type(e).__name__}"
            _throttled("info", "replication_connection_failed", primary=addr, reason=type(e).__name__)
        else:
            self._last_error = f"the session with the primary at {addr} failed: {type(e).__name__}"
            # Only the type: a sink's message could quote stored data.
            log.error("replication_session_failed", primary=addr, error=type(e).__name__)


def _wal_bytes(msg: Wal) -> int:
    return sum(len(b) for e in msg.entries for b in e.batches)


async def _next_frame(inbox: asyncio.Queue[Message | BaseException]) -> Message:
    """The next queued frame; raises the error that ended the reading task."""
    item = await inbox.get()
    if isinstance(item, BaseException):
        raise item
    return item


def _check_addrs(addrs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(addrs, str):
        raise TypeError("addrs is a sequence of host:port strings")
    for addr in addrs:
        parse_addr(addr)
    return tuple(addrs)
