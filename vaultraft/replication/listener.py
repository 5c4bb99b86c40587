"""The mutual-TLS listener both the replication server and the witness are built on.

It owns one task per connection (cancelled and awaited by :meth:`TlsListener.aclose`),
caps connections (evicting the oldest connection still unauthenticated after a grace
period), and hands each accepted socket to the subclass's ``_serve`` before a single byte
is read: the subclass starts TLS with the context that requires a client certificate.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vaultraft.raft.tls import NodeCert, server_context
from vaultraft.replication.wire import format_addr


@dataclass(eq=False)
class ListenerConn:
    """One accepted connection (subclasses add their own state)."""

    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    peer: str
    created: float = field(default_factory=time.monotonic)
    authenticated: bool = False


C = TypeVar("C", bound=ListenerConn)


def peer_of(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of the remote end, or "?"."""
    addr: Any = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        return format_addr(str(addr[0]), int(addr[1]))
    return "?"


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once (no TLS close_notify, no flush)."""
    with contextlib.suppress(Exception):
        writer.transport.abort()


class TlsListener(abc.ABC, Generic[C]):
    """Listening, connection bookkeeping and shutdown; subclasses implement
    :meth:`_make_conn` and :meth:`_serve` (and may override the hooks)."""

    _what = "listener"  # for error messages

    def __init__(self, cert: NodeCert, host: str, port: int, *, max_connections: int,
                 eviction_grace: float, frame_limit: int) -> None:
        self._cert = cert
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._eviction_grace = eviction_grace
        self._frame_limit = frame_limit
        self._ctx: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[C] = set()
        self._closing = False

    @property
    def bound_address(self) -> str:
        """The listening ``host:port`` (the real port when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"{self._what} is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return format_addr(str(host), int(port))

    def connection_count(self) -> int:
        """Open connections, handshaking ones included."""
        return len(self._conns)

    async def _listen(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"{self._what} already started")
        self._ctx = await asyncio.to_thread(server_context, self._cert)
        self._closing = False
        self._server = await asyncio.start_server(self._on_accept, self._host, self._port, backlog=128,
                                                  limit=self._frame_limit)

    async def aclose(self) -> None:
        """Stop listening, close every connection and wait for their tasks to finish."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for conn in conns:
            abort(conn.writer)
            conn.task.cancel()
        await asyncio.gather(*(c.task for c in conns), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._stopped()
            self._server = None

    # -- for subclasses -----------------------------------------------------------------------

    @abc.abstractmethod
    def _make_conn(self, task: asyncio.Task[None], writer: asyncio.StreamWriter, peer: str) -> C:
        """The state object for a newly accepted connection."""

    @abc.abstractmethod
    async def _serve(self, conn: C, reader: asyncio.StreamReader) -> None:
        """Start TLS, authenticate and serve ``conn`` until it ends."""

    def _conn_closed(self, conn: C) -> None:
        """After a connection ended (its socket is already aborted)."""

    def _refused(self, peer: str) -> None:
        """A connection refused at the cap."""

    def _evicted(self, conn: C) -> None:
        """An unauthenticated connection evicted to make room."""

    def _stopped(self) -> None:
        """The listener closed."""

    # -- shared machinery ---------------------------------------------------------------------

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # No await may come before start_tls: until then the plain StreamReader would
        # swallow the TLS ClientHello.
        task = asyncio.current_task()
        peer = peer_of(writer)
        if self._closing or self._ctx is None or task is None:
            abort(writer)
            return
        if len(self._conns) >= self._max_connections and not self._evict():
            self._refused(peer)
            abort(writer)
            return
        conn = self._make_conn(task, writer, peer)
        self._conns.add(conn)
        try:
            await self._serve(conn, reader)
        except asyncio.CancelledError:
            pass  # aclose() (or a subclass's disconnect): this is the connection's top-level task
        finally:
            self._conns.discard(conn)
            abort(writer)
            self._conn_closed(conn)

    def _evict(self) -> bool:
        """Close the oldest unauthenticated connection past its grace period, if any."""
        now = time.monotonic()
        stale = [c for c in self._conns if not c.authenticated and now - c.created >= self._eviction_grace]
        if not stale:
            return False
        victim = min(stale, key=lambda c: c.created)
        self._evicted(victim)
        self._conns.discard(victim)
        abort(victim.writer)
        victim.task.cancel()
        return True
