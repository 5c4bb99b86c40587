"""The primary side: an asyncio mutual-TLS server that ships the WAL to secondaries.

One :class:`ReplicationServer` runs on every node of a primary cluster. A connection goes:
TCP accept (connection cap) → TLS handshake with a *required* client certificate signed by
the replication CA (nothing is read from the peer before it is verified) → Hello (the
certificate CN is the secondary id) → authorization and active-node check → Welcome →
optional bulk sync → WAL streaming with heartbeats, until either side closes. See DESIGN.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import socket
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import structlog

from vaultraft.raft.tls import NodeCert, PKIError, peer_node_id
from vaultraft.replication.fence import LeaseGrant, valid_duration, valid_epoch, valid_name
from vaultraft.replication.interfaces import Mode, WalSource
from vaultraft.replication.listener import ListenerConn, TlsListener
from vaultraft.replication.registry import (
    PrimaryState,
    SecondaryContact,
    SecondaryRegistry,
)
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
    PeerClosed,
    Redirect,
    ThrottledLog,
    Wal,
    Welcome,
    WireError,
    read_message,
    write_message,
)
from vaultraft.storage.batch import Batch
from vaultraft.storage.wal import WalEntry

__all__ = ["PrimaryState", "ReplicationServer", "SecondaryContact", "SecondaryRegistry", "ServerConfig",
           "filter_local"]

log = structlog.get_logger("vaultraft.replication")
_throttled = ThrottledLog()
#: Secondaries only send small control messages.
_CLIENT_FRAME_LIMIT = 64 << 10
_OFFLOAD_FILTER_BYTES = 256 << 10
_CLOSE_GRACE = 1.0
_MAX_PENDING_LEASES = 8


@dataclass(frozen=True)
class ServerConfig:
    """Limits and timings of a :class:`ReplicationServer`."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    handshake_timeout: float = 10.0  # accept → TLS handshake → Hello received
    heartbeat_interval: float = 1.0  # a Heartbeat after this much silence
    idle_timeout: float = 60.0  # close if the secondary sends nothing for this long
    write_timeout: float = 60.0  # close if a frame is not taken by the secondary in this time
    max_connections: int = 64  # handshaking and established together
    eviction_grace: float = 0.5  # an unauthenticated connection older than this may be evicted
    wal_max_entries: int = 1024  # per read_wal call (one Wal frame)
    wal_max_bytes: int = 1 << 20
    bulk_chunk_bytes: int = 1 << 20
    max_pending_digests: int = 4
    state_check_interval: float = 1.0  # how often a stream re-checks authorization and leadership
    #: While the primary is busy, at most one Wal frame per ``stream_interval`` (an apply
    #: that comes later than that after the last frame goes out at once), so that one frame
    #: carries several entries: each round (read, frame, TLS write, the secondary's Ack)
    #: costs the primary's event loop about the same whatever it carries. Adds at most this
    #: to the lag, and to a write's latency in ``dr_sync`` mode (where the manager sets a
    #: shorter interval). "Busy" is read from group commit: the last entries shipped carried
    #: ``busy_batches`` batches (writes) each on average, so concurrent writes were queueing.
    stream_interval: float = 0.025
    busy_batches: float = 4.0


class _Close(Exception):
    """End this connection after sending ``reply`` (if any)."""

    def __init__(self, reason: str, reply: Message | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


@dataclass(eq=False)
class _Conn(ListenerConn):
    """Mutable per-connection state (internal)."""

    secondary_id: str = ""
    mode: Mode = "dr"
    lineage: str = ""
    key_filter: Callable[[str], bool] | None = None  # None: every key the mode allows
    epoch: int = 0
    sent_index: int = 0
    acked_index: int = 0
    last_recv: float = field(default_factory=time.time)
    last_send: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    last_wal: float = 0.0  # monotonic time the last Wal frame went out
    busy: bool = False  # the entries of the last Wal frame were group commits (frames paced)
    last_check: float = field(default_factory=time.monotonic)
    digests: collections.deque[int] = field(default_factory=collections.deque)
    waiter: asyncio.Task[int] | None = None  # the send loop's wait for an apply (_idle)
    streaming: bool = False  # Welcome sent: lease requests may follow
    leases: dict[int, asyncio.Future[LeaseReply | None]] = field(default_factory=dict)


class ReplicationServer(TlsListener[_Conn]):
    """Serves the WAL of this primary node to authorized secondaries over mutual TLS."""

    _what = "replication server"

    def __init__(self, source: WalSource, registry: SecondaryRegistry, cert: NodeCert,
                 host: str = "0.0.0.0", port: int = 0, *, config: ServerConfig | None = None) -> None:
        """``cert`` is this node's certificate from the replication CA (which also signs
        every secondary's client certificate). Nothing listens until :meth:`start`."""
        self._cfg = config or ServerConfig()
        super().__init__(cert, host, port, max_connections=self._cfg.max_connections,
                         eviction_grace=self._cfg.eviction_grace, frame_limit=_CLIENT_FRAME_LIMIT)
        self._source = source
        self._registry = registry
        self._lease_ids = itertools.count(1)

    async def start(self) -> None:
        """Build the TLS context and start listening."""
        await self._listen()
        log.info("replication_server_started", address=self.bound_address)

    def _stopped(self) -> None:
        log.info("replication_server_stopped")

    def disconnect(self, secondary_id: str) -> int:
        """Close every connection of ``secondary_id`` at once (revocation); returns how many.

        Authorization is the registry's: revoke there first so that a reconnect is refused.
        """
        closed = 0
        for conn in list(self._conns):
            if conn.secondary_id == secondary_id:
                conn.abort()
                conn.task.cancel()
                closed += 1
        if closed:
            log.info("replication_secondary_disconnected_by_primary", secondary_id=secondary_id,
                     connections=closed)
        return closed

    def connection_count(self) -> int:
        """Open connections, handshaking ones included."""
        return len(self._conns)

    async def request_lease(self, holder: str, epoch: int, duration: float, timeout: float, *,
                            secondary_ids: Collection[str] | None = None) -> list[LeaseGrant]:
        """Ask every welcomed DR connection (only those of ``secondary_ids`` if given) to renew
        ``holder``'s fencing lease; return one grant per reply received within ``timeout``
        (a missing reply is no vote). ValueError for a malformed request."""
        if not (valid_name(holder) and valid_epoch(epoch) and valid_duration(duration)):
            raise ValueError("invalid lease request")
        conns = [c for c in self._conns if c.streaming and c.mode == "dr"
                 and (secondary_ids is None or c.secondary_id in secondary_ids)
                 and len(c.leases) < _MAX_PENDING_LEASES]
        replies = await asyncio.gather(*(self._ask_lease(c, holder, epoch, duration, timeout) for c in conns))
        return [LeaseGrant(r.granted, r.epoch, r.holder, r.reason) for r in replies if r is not None]

    async def _ask_lease(self, conn: _Conn, holder: str, epoch: int, duration: float,
                         timeout: float) -> LeaseReply | None:
        request_id = next(self._lease_ids)
        fut: asyncio.Future[LeaseReply | None] = asyncio.get_running_loop().create_future()
        conn.leases[request_id] = fut
        try:
            async with asyncio.timeout(timeout):
                # The frame goes out whole at write(); it may share drain() with the send loop.
                await write_message(conn.writer, LeaseRequest(request_id, holder, epoch, duration),
                                    self._cfg.max_frame_bytes)
                return await fut
        except (OSError, TimeoutError, WireError):
            return None
        finally:
            conn.leases.pop(request_id, None)

    # -- accept and handshake ----------------------------------------------------------------

    def _make_conn(self, sock: socket.socket, peer: str) -> _Conn:
        return _Conn(sock=sock, peer=peer)

    def _refused(self, peer: str) -> None:
        _throttled("warning", "replication_connection_refused", reason="connection_cap", remote=peer)

    def _evicted(self, conn: _Conn) -> None:
        _throttled("info", "replication_connection_evicted", remote=conn.peer)

    def _conn_closed(self, conn: _Conn) -> None:
        for fut in conn.leases.values():
            if not fut.done():
                fut.set_result(None)
        if conn.secondary_id:
            log.info("replication_secondary_disconnected", secondary_id=conn.secondary_id, peer=conn.peer)
            self._contact(conn, connected=False)

    async def _serve(self, conn: _Conn) -> None:
        try:
            async with asyncio.timeout(self._cfg.handshake_timeout):
                reader = await self._start_tls(conn, self._cfg.handshake_timeout)
                peer_id = peer_node_id(conn.writer.get_extra_info("ssl_object"))
                conn.authenticated = True
                hello = await read_message(reader, _CLIENT_FRAME_LIMIT)
        except (OSError, ssl.SSLError, PKIError, TimeoutError) as e:
            _throttled("info", "replication_handshake_failed", remote=conn.peer, reason=type(e).__name__)
            return
        except (WireError, PeerClosed) as e:
            _throttled("info", "replication_hello_failed", remote=conn.peer, reason=str(e)[:200])
            return
        try:
            if not isinstance(hello, Hello):
                raise _Close("expected_hello", Error("protocol", "the first message must be hello"))
            self._admit(conn, peer_id, hello)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop(conn, reader))
                tg.create_task(self._send_loop(conn, hello))
        except Exception as e:  # noqa: BLE001 - every failure ends this connection only
            await self._finish(conn, _leaf(e))

    def _admit(self, conn: _Conn, peer_id: str, hello: Hello) -> None:
        """Authorize the Hello; raise _Close with the refusal otherwise."""
        if hello.secondary_id != peer_id:
            raise _Close("id_mismatch", Error("unauthorized", "secondary id does not match the certificate"))
        mode = self._registry.authorize(peer_id)
        if mode is None:
            raise _Close("unauthorized", Error("unauthorized", "unknown or revoked secondary"))
        if hello.mode != mode:
            raise _Close("mode_mismatch", Error("mode_mismatch", f"secondary is activated for {mode}"))
        state = self._registry.primary_state()
        self._check_active(state)
        conn.secondary_id, conn.mode, conn.lineage, conn.epoch = peer_id, mode, state.lineage, state.epoch
        # A registry may narrow what one secondary receives (a performance paths filter). The
        # filter's tag joins the lineage, so a changed filter makes the secondary resync.
        policy = getattr(self._registry, "stream_policy", None)
        if policy is not None:
            tag, conn.key_filter = policy(peer_id)
            if tag:
                conn.lineage = f"{state.lineage}:{tag}"
        conn.acked_index = hello.remote_index
        log.info("replication_secondary_connected", secondary_id=peer_id, mode=mode, peer=conn.peer,
                 remote_index=hello.remote_index)
        self._contact(conn, connected=True)

    @staticmethod
    def _check_active(state: PrimaryState) -> None:
        if not state.is_active:
            if state.active_addr:
                raise _Close("redirect", Redirect(state.active_addr))
            raise _Close("not_active", Error("not_active", "this node is not the active node"))

    async def _finish(self, conn: _Conn, e: BaseException) -> None:
        """Log why the connection ends, send the refusal if there is one, close gracefully."""
        if isinstance(e, _Close):
            level = "warning" if e.reason in ("unauthorized", "id_mismatch", "mode_mismatch") else "info"
            _throttled(level, "replication_connection_closed", secondary_id=conn.secondary_id or None,
                       remote=conn.peer, reason=e.reason)
            if e.reply is not None:
                with contextlib.suppress(Exception):
                    await write_message(conn.writer, e.reply, self._cfg.max_frame_bytes, _CLOSE_GRACE)
        elif isinstance(e, WireError):
            _throttled("warning", "replication_protocol_error", secondary_id=conn.secondary_id or None,
                       remote=conn.peer, reason=str(e)[:200])
            with contextlib.suppress(Exception):
                await write_message(conn.writer, Error("protocol", str(e)[:200]), _CLIENT_FRAME_LIMIT,
                                    _CLOSE_GRACE)
        elif isinstance(e, (PeerClosed, OSError, TimeoutError)):
            _throttled("info", "replication_connection_lost", secondary_id=conn.secondary_id or None,
                       remote=conn.peer, reason=type(e).__name__)
        else:
            # Only the type: a source's message could quote stored data.
            log.error("replication_stream_failed", secondary_id=conn.secondary_id or None, error=type(e).__name__)
        conn.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_GRACE):
                await conn.writer.wait_closed()

    # -- the two halves of an established connection ------------------------------------------

    async def _read_loop(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while True:
            async with asyncio.timeout(self._cfg.idle_timeout):
                msg = await read_message(reader, _CLIENT_FRAME_LIMIT)
            conn.last_recv = time.time()
            if isinstance(msg, Ack):
                conn.acked_index = msg.remote_index
                self._contact(conn, connected=True)
            elif isinstance(msg, DigestRequest):
                if len(conn.digests) >= self._cfg.max_pending_digests:
                    raise WireError("too many pending digest requests")
                conn.digests.append(msg.request_id)
                if conn.waiter is not None:
                    conn.waiter.cancel()  # the send loop answers it now
            elif isinstance(msg, LeaseReply):
                fut = conn.leases.get(msg.request_id)
                if fut is not None and not fut.done():  # else: a late reply, already given up
                    fut.set_result(msg)
            elif isinstance(msg, Error):
                raise _Close(f"secondary_error:{msg.code[:64]}")
            else:
                raise WireError(f"unexpected {msg.TYPE} message from a secondary")

    async def _send_loop(self, conn: _Conn, hello: Hello) -> None:
        applied = self._source.applied_index()
        first, _ = self._source.wal_bounds()
        r = hello.remote_index
        stream = (hello.lineage == conn.lineage and hello.complete and r <= applied
                  and (first - 1 <= r or r == applied))
        await self._send(conn, Welcome(conn.lineage, conn.epoch, not stream))
        conn.streaming = True
        pos = r if stream else await self._bulk_sync(conn)
        conn.sent_index = pos
        while True:
            self._check_state(conn)
            if conn.digests:
                pos = await self._answer_digest(conn, pos)
                continue
            applied = self._source.applied_index()
            entries, behind = await self._read_from(pos)
            if behind:
                log.info("replication_secondary_fell_behind", secondary_id=conn.secondary_id, remote_index=pos)
                pos = await self._bulk_sync(conn)
                continue
            if entries:
                pos = await self._send_wal(conn, entries)
                continue
            await self._idle(conn, applied)

    async def _read_from(self, pos: int) -> tuple[list[WalEntry], bool]:
        """Entries after ``pos`` and whether the secondary fell behind the retained window
        (the bounds are only re-read when the entries do not start right after ``pos``)."""
        entries = await self._source.read_wal(pos, self._cfg.wal_max_entries, self._cfg.wal_max_bytes)
        if entries and entries[0].index == pos + 1:
            return entries, False
        return entries, self._fell_behind(pos)

    def _fell_behind(self, pos: int) -> bool:
        """After a read from ``pos``: were entries after ``pos`` truncated (so the read may have
        skipped some)? Truncation only moves forward, so checking after the read suffices."""
        first, _ = self._source.wal_bounds()
        return first - 1 > pos and self._source.applied_index() != pos

    async def _send_wal(self, conn: _Conn, entries: list[WalEntry]) -> int:
        conn.busy = sum(len(e.batches) for e in entries) >= self._cfg.busy_batches * len(entries)
        if conn.mode == "performance":
            keep = conn.key_filter
            if sum(len(b) for e in entries for b in e.batches) >= _OFFLOAD_FILTER_BYTES:
                entries = await asyncio.to_thread(filter_local, entries, keep)
            else:
                entries = filter_local(entries, keep)
        conn.sent_index = entries[-1].index
        await self._send(conn, Wal(conn.epoch, tuple(entries)))
        conn.last_wal = conn.last_send
        return conn.sent_index

    async def _bulk_sync(self, conn: _Conn) -> int:
        log.info("replication_bulk_sync_started", secondary_id=conn.secondary_id, mode=conn.mode)
        items_sent = 0
        async with self._source.snapshot(conn.mode) as snap:
            index = snap.index
            await self._send(conn, BulkBegin(conn.lineage, index))
            chunks = snap.chunks(self._cfg.bulk_chunk_bytes)
            try:
                async for items in chunks:
                    if conn.key_filter is not None:
                        keep = conn.key_filter
                        items = [(k, v) for k, v in items if keep(k)]
                    if items:
                        await self._send(conn, BulkChunk(tuple(items)))
                        items_sent += len(items)
                    await self._heartbeat_if_due(conn, busy=True)
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            await self._send(conn, BulkEnd(index))
        conn.sent_index = index
        log.info("replication_bulk_sync_finished", secondary_id=conn.secondary_id, index=index, items=items_sent)
        return index

    async def _answer_digest(self, conn: _Conn, pos: int) -> int:
        """Compute the digest at X, send every entry <= X (none beyond), then the reply."""
        request_id = conn.digests.popleft()
        for _ in range(3):
            index, root = await self._digest(conn)
            if index < pos:  # the source went backwards: recompute rather than reply falsely
                continue
            while True:
                entries, behind = await self._read_from(pos)
                if behind:
                    pos = await self._bulk_sync(conn)
                    break  # the secondary now stands at the snapshot: compute a fresh digest
                upto = [e for e in entries if e.index <= index]
                if upto:
                    pos = await self._send_wal(conn, upto)
                if len(upto) < len(entries) or not entries:
                    await self._send(conn, DigestReply(request_id, index, root))
                    return pos
        raise _Close("digest_unavailable", Error("digest_unavailable", "could not compute a consistent digest"))

    async def _digest(self, conn: _Conn) -> tuple[int, str]:
        """``source.digest``, with heartbeats while a large keyspace is hashed."""
        digest = asyncio.ensure_future(self._source.digest(conn.mode))
        try:
            while not digest.done():
                await asyncio.wait({digest}, timeout=self._cfg.heartbeat_interval)
                await self._heartbeat_if_due(conn)
        finally:
            if not digest.done():
                digest.cancel()
                await asyncio.gather(digest, return_exceptions=True)
        return digest.result()

    async def _idle(self, conn: _Conn, applied: int) -> None:
        """Wait for an apply past ``applied``, a digest request, or the heartbeat deadline."""
        started = time.monotonic()
        remaining = conn.last_send + self._cfg.heartbeat_interval - started
        if remaining > 0 and not conn.digests:
            # One task per round, which a digest request cancels (the read loop).
            conn.waiter = asyncio.ensure_future(self._source.wait_for_index(applied, remaining))
            try:
                await conn.waiter
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise  # this connection is ending, not a digest request
            finally:
                conn.waiter = None
            delay = conn.last_wal + self._cfg.stream_interval - time.monotonic()
            if conn.busy and delay > 0 and not conn.digests:
                await asyncio.sleep(delay)
        await self._heartbeat_if_due(conn)

    async def _heartbeat_if_due(self, conn: _Conn, *, busy: bool = False) -> None:
        """A heartbeat after ``heartbeat_interval`` of silence, or (``busy``: during a bulk
        sync, whose chunks the secondary does not acknowledge) of no heartbeat, so that the
        secondary's Acks keep the idle timeout from firing."""
        now = time.monotonic()
        last = conn.last_heartbeat if busy else conn.last_send
        if now - last >= self._cfg.heartbeat_interval:
            await self._send(conn, Heartbeat(self._source.applied_index(), conn.epoch, time.time()))
            conn.last_heartbeat = now

    def _check_state(self, conn: _Conn) -> None:
        """Every ``state_check_interval``: still authorized, still active, same lineage."""
        now = time.monotonic()
        if now - conn.last_check < self._cfg.state_check_interval:
            return
        conn.last_check = now
        if self._registry.authorize(conn.secondary_id) != conn.mode:
            raise _Close("revoked", Error("unauthorized", "unknown or revoked secondary"))
        state = self._registry.primary_state()
        self._check_active(state)
        if state.lineage != conn.lineage.split(":", 1)[0]:
            raise _Close("lineage_changed", Error("lineage_changed", "the primary's lineage changed"))
        conn.epoch = max(conn.epoch, state.epoch)

    async def _send(self, conn: _Conn, msg: Message) -> None:
        await write_message(conn.writer, msg, self._cfg.max_frame_bytes, self._cfg.write_timeout)
        conn.last_send = time.monotonic()

    def _contact(self, conn: _Conn, *, connected: bool) -> None:
        try:
            self._registry.on_contact(SecondaryContact(conn.secondary_id, conn.mode, connected,
                                                       conn.acked_index, conn.last_recv, conn.peer))
        except Exception as e:  # noqa: BLE001 - a registry bug must not kill the stream
            log.error("replication_contact_failed", error=type(e).__name__)


def filter_local(entries: list[WalEntry], keep: Callable[[str], bool] | None = None) -> list[WalEntry]:
    """What a performance secondary receives: ops with ``local=True`` (and, with ``keep``,
    ops whose key it rejects) removed, batches left empty dropped, every entry kept (so
    indexes still advance). Undecodable batches raise BatchDecodeError (fail closed: a batch
    we cannot read might hold local data)."""
    out: list[WalEntry] = []
    for e in entries:
        batches: list[bytes] = []
        changed = False
        for raw in e.batches:
            batch = Batch.decode(raw)
            if not any(op.local or (keep is not None and not keep(op.key)) for op in batch.ops):
                batches.append(raw)
                continue
            changed = True
            ops = tuple(op for op in batch.ops if not op.local and (keep is None or keep(op.key)))
            if ops:
                batches.append(Batch(ops, batch.request_id).encode())
        out.append(WalEntry(e.index, e.ts_ms, tuple(batches)) if changed else e)
    return out


def _leaf(e: BaseException) -> BaseException:
    """The first non-group exception inside a (nested) exception group."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


