"""The mutual-TLS listener both the replication server and the witness are built on.

It owns one task per connection (cancelled and awaited by :meth:`TlsListener.aclose`),
caps connections (evicting the oldest connection still unauthenticated after a grace
period), and hands each accepted socket to the subclass's ``_serve`` before a single byte
is read: the subclass calls :meth:`TlsListener._start_tls`, which wraps the untouched socket
in TLS with the context that requires a client certificate.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from vaultraft.raft.tls import NodeCert, server_context
from vaultraft.replication.wire import format_addr

log = structlog.get_logger("vaultraft.replication")

#: Back-off after accept() failed (e.g. out of file descriptors).
_ACCEPT_RETRY = 0.1


@dataclass(eq=False)
class ListenerConn:
    """One accepted connection (subclasses add their own state). ``writer`` exists once
    :meth:`TlsListener._start_tls` has completed the handshake; ``task`` is set at accept."""

    sock: socket.socket
    peer: str
    created: float = field(default_factory=time.monotonic)
    authenticated: bool = False
    task: asyncio.Task[None] = field(init=False)
    writer: asyncio.StreamWriter = field(init=False)

    def abort(self) -> None:
        """Drop the connection at once (no TLS close_notify, no flush)."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            abort(writer)
        with contextlib.suppress(OSError):
            self.sock.close()


C = TypeVar("C", bound=ListenerConn)


def _format_peer(addr: Any) -> str:
    """``host:port`` of a socket address, or "?"."""
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
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._conns: set[C] = set()
        self._closing = False

    @property
    def bound_address(self) -> str:
        """The listening ``host:port`` (the real port when started with port 0)."""
        if self._sock is None:
            raise RuntimeError(f"{self._what} is not started")
        host, port = self._sock.getsockname()[:2]
        return format_addr(str(host), int(port))

    def connection_count(self) -> int:
        """Open connections, handshaking ones included."""
        return len(self._conns)

    async def _listen(self) -> None:
        if self._sock is not None:
            raise RuntimeError(f"{self._what} already started")
        self._ctx = await asyncio.to_thread(server_context, self._cert)
        self._closing = False
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        # Our own accept loop, not asyncio.start_server: the socket must reach TLS with no
        # byte read, and a loop's start_tls() loses what its stream already buffered (uvloop
        # reads a ClientHello before the connection's task runs).
        self._sock = socket.create_server(addr[:2], family=family, backlog=128)
        self._sock.setblocking(False)
        self._acceptor = loop.create_task(self._accept_loop(self._sock), name=f"{self._what} accept")

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as e:
                log.warning("listener_accept_failed", listener=self._what, error=type(e).__name__)
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            self._on_accept(sock, _format_peer(addr))

    async def aclose(self) -> None:
        """Stop listening, close every connection and wait for their tasks to finish."""
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.cancel()
            await asyncio.gather(self._acceptor, return_exceptions=True)
            self._acceptor = None
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
            conn.task.cancel()
        await asyncio.gather(*(c.task for c in conns), return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._stopped()

    # -- for subclasses -----------------------------------------------------------------------

    @abc.abstractmethod
    def _make_conn(self, sock: socket.socket, peer: str) -> C:
        """The state object for a newly accepted connection."""

    @abc.abstractmethod
    async def _serve(self, conn: C) -> None:
        """Start TLS (:meth:`_start_tls`), authenticate and serve ``conn`` until it ends."""

    def _conn_closed(self, conn: C) -> None:
        """After a connection ended (its socket is already aborted)."""

    def _refused(self, peer: str) -> None:
        """A connection refused at the cap."""

    def _evicted(self, conn: C) -> None:
        """An unauthenticated connection evicted to make room."""

    def _stopped(self) -> None:
        """The listener closed."""

    # -- shared machinery ---------------------------------------------------------------------

    def _on_accept(self, sock: socket.socket, peer: str) -> None:
        if self._closing or self._ctx is None:
            sock.close()
            return
        if len(self._conns) >= self._max_connections and not self._evict():
            self._refused(peer)
            sock.close()
            return
        sock.setblocking(False)
        conn = self._make_conn(sock, peer)
        conn.task = asyncio.get_running_loop().create_task(self._run(conn), name=f"{self._what} {peer}")
        self._conns.add(conn)

    async def _run(self, conn: C) -> None:
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            pass  # aclose() (or a subclass's disconnect): this is the connection's top-level task
        finally:
            self._conns.discard(conn)
            conn.abort()
            self._conn_closed(conn)

    async def _start_tls(self, conn: C, handshake_timeout: float) -> asyncio.StreamReader:
        """Run the TLS handshake (client certificate required) on ``conn``'s socket, set
        ``conn.writer`` and return the reader; raises OSError, ssl.SSLError or TimeoutError."""
        assert self._ctx is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self._frame_limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn.sock, ssl=self._ctx,
                                                          ssl_handshake_timeout=handshake_timeout)
        conn.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader

    def _evict(self) -> bool:
        """Close the oldest unauthenticated connection past its grace period, if any."""
        now = time.monotonic()
        stale = [c for c in self._conns if not c.authenticated and now - c.created >= self._eviction_grace]
        if not stale:
            return False
        victim = min(stale, key=lambda c: c.created)
        self._evicted(victim)
        self._conns.discard(victim)
        victim.abort()
        victim.task.cancel()
        return True
