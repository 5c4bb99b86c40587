"""A mutual-TLS, msgpack-framed pysyncobj transport (``SyncObj(..., transportClass=...)``).

It keeps pysyncobj's TCPTransport bookkeeping (one connection per pair of nodes, dialled by
the node with the greater address; the dialler's first message is its own address) and runs
in pysyncobj's poller thread. What differs is what a peer must do before it is heard:

1. complete a TLS handshake (>= 1.2) presenting a certificate signed by the cluster CA;
2. on incoming connections, announce an address that is a known cluster node, not one this
   node dials itself, and (with ``expected_peer_id``) matching the certificate's node id;
3. do both within ``handshake_timeout``.

Only then are frames delivered to pysyncobj, and only if they have the shape pysyncobj's own
messages have (``check_message``). pysyncobj's utility/admin messages (``syncobj_admin``:
status, add, remove, set_version, transfer) are refused. The chunks of a large entry reach
pysyncobj labelled by what they hold, never by pysyncobj's own labels (``chunks.py``).

**Non-voters** are pysyncobj read-only nodes (``SyncObj(None, voters)``): they receive the
log and never vote or count towards a quorum. A non-voter runs no listener and dials every
voter; its hello is ``READONLY_HELLO`` followed by its own address, which must match its
certificate, must not be a voter's, and must pass ``accept_readonly`` (the registered
non-voters). From a non-voter only ``next_node_idx`` answers are accepted.
"""

from __future__ import annotations

import functools
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport, TransportNotReadyError

from vaultraft.raft.chunks import ChunkSequencer
from vaultraft.raft.connection import (
    ConnState,
    SocketOptions,
    TlsConnection,
    TlsServer,
    throttled_log,
)
from vaultraft.raft.tls import NodeCert, client_context, server_context

#: Largest hello (the peer's address string) accepted on a fresh incoming connection.
HELLO_FRAME_LIMIT = 1024
MIN_BACKLOG = 128
#: The listener's answer to an accepted hello; the dialler reports the peer connected only then.
HELLO_ACCEPTED = True

#: Maps the address a peer announces to the node id its certificate must carry (None: any).
PeerIdPolicy = Callable[[str], "str | None"]
#: Whether a non-voter announcing this address may follow the log from this node.
ReadonlyPolicy = Callable[[str], bool]
#: A non-voter's hello: this prefix, then its own address.
READONLY_HELLO = "readonly:"
#: What a non-voter may send: its answers to AppendEntries.
_READONLY_MESSAGES = frozenset({"next_node_idx"})


def node_id_is_address(address: str) -> str:
    """Policy for clusters whose node ids are their Raft addresses ("host:port")."""
    return address


@dataclass(frozen=True, eq=False)
class TransportSettings:
    """Everything a transport class is bound to (built by ``make_transport_class``)."""

    node_id: str
    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    max_frame_bytes: int
    handshake_timeout: float
    idle_timeout: float
    keepalive_interval: float
    max_incoming: int
    backlog: int
    expected_peer_id: PeerIdPolicy | None
    accept_readonly: ReadonlyPolicy | None = None


def make_transport_class(tls: NodeCert, *, max_frame_bytes: int = 16 << 20, handshake_timeout: float = 5.0,
                         idle_timeout: float = 30.0, max_incoming: int = 64,
                         expected_peer_id: PeerIdPolicy | None = None,
                         keepalive_interval: float | None = None,
                         backlog: int = MIN_BACKLOG,
                         accept_readonly: ReadonlyPolicy | None = None) -> type[TlsTransport]:
    """Build a pysyncobj Transport subclass bound to this node's certificate and limits.

    ``expected_peer_id(address)`` returns the node id (certificate CN) required of the peer at
    ``address``, or None to accept any certificate signed by the cluster CA (the default).
    Authenticated connections send a keepalive frame after ``keepalive_interval`` seconds of
    silence (default: min(1 s, idle_timeout / 4)) and are closed after ``idle_timeout`` seconds
    without receiving anything. ``accept_readonly(address)`` admits non-voters (default:
    none). Raises PKIError if the certificate or key is unusable.
    """
    if max_frame_bytes < HELLO_FRAME_LIMIT:
        raise ValueError(f"max_frame_bytes must be at least {HELLO_FRAME_LIMIT}")
    if handshake_timeout <= 0 or idle_timeout <= 0 or max_incoming < 1:
        raise ValueError("timeouts must be positive and max_incoming at least 1")
    interval = min(1.0, idle_timeout / 4) if keepalive_interval is None else keepalive_interval
    if not 0 < interval < idle_timeout:
        raise ValueError("keepalive_interval must be positive and below idle_timeout")
    tls.validate()
    settings = TransportSettings(
        node_id=tls.node_id, server_ctx=server_context(tls), client_ctx=client_context(tls),
        max_frame_bytes=max_frame_bytes, handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
        keepalive_interval=interval, max_incoming=max_incoming, backlog=max(MIN_BACKLOG, backlog),
        expected_peer_id=expected_peer_id, accept_readonly=accept_readonly,
    )
    return cast("type[TlsTransport]", type("TlsTransport", (TlsTransport,), {"settings": settings}))


class TlsTransport(Transport):  # type: ignore[misc]  # pysyncobj ships no type information
    """pysyncobj transport over mutual TLS; use ``make_transport_class`` to obtain a subclass."""

    settings: ClassVar[TransportSettings]

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Iterable[Any]) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        if not hasattr(type(self), "settings"):
            raise TypeError("use make_transport_class() to build a bound TlsTransport")
        conf = syncObj.conf
        self._syncObj = syncObj
        self._selfNode = selfNode
        self._readonlySelf = selfNode is None  # a non-voter: no listener, dials every voter
        self._opts = SocketOptions(
            send_buffer=conf.sendBufferSize, recv_buffer=conf.recvBufferSize,
            handshake_timeout=self.settings.handshake_timeout, idle_timeout=self.settings.idle_timeout,
            keepalive_interval=self.settings.keepalive_interval, tcp_keepalive=conf.tcp_keepalive,
        )
        self._server: TlsServer | None = None
        self._connections: dict[Any, TlsConnection] = {}  # node -> authenticated/dialled connection
        self._outgoing: set[TlsConnection] = set()
        self._incoming: dict[TlsConnection, None] = {}  # insertion-ordered: oldest first
        self._unknown: set[TlsConnection] = set()  # incoming, not yet bound to a node
        self._nodes: set[Any] = set()
        self._nodeAddrToNode: dict[str, Any] = {}
        self._readonlyPeers: dict[str, Any] = {}  # address -> node, non-voters following us
        self._chunks: dict[TlsConnection, ChunkSequencer] = {}  # large entries arriving, per connection
        self._lastConnectAttempt: dict[Any, float] = {}
        self._preventConnectNodes: set[Any] = set()
        self._lastBindAttemptTime = 0.0
        self._bindAttempts = 0
        self._bindOverEvent = threading.Event()
        self._ready = False
        syncObj.addOnTickCallback(self._onTick)
        for node in otherNodes:
            self.addNode(node)
        if self._readonlySelf:
            self._ready = True
            self._bindOverEvent.set()
        else:
            self._createServer()

    # -- readiness (as TCPTransport) ----------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the listening socket is bound."""
        return self._ready

    def tryGetReady(self) -> None:
        """Bind the server if needed; raise TransportNotReadyError after maxBindRetries failures."""
        self._maybeBind()

    def waitReady(self) -> None:
        """Block until bound (call from a thread other than the tick thread)."""
        self._bindOverEvent.wait()
        if not self._ready:
            raise TransportNotReadyError

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        if conf.bindAddress is not None:
            host, port = conf.bindAddress.rsplit(":", 1)
        else:
            host, port = self._selfNode.address.rsplit(":", 1)
            host = "::" if ":" in host else "0.0.0.0"
        if host not in ("0.0.0.0", "::"):
            host = globalDnsResolver().resolve(host)
        self._server = TlsServer(self._syncObj._poller, host, int(port), self.settings.backlog,
                                 self._onAccept, self._opts)

    def _maybeBind(self) -> None:
        conf = self._syncObj.conf
        if self._readonlySelf or self._ready or monotonic_time() < self._lastBindAttemptTime + conf.bindRetryTime:
            return
        self._lastBindAttemptTime = monotonic_time()
        try:
            if self._server is None:
                raise OSError("no server")
            self._server.bind()
        except OSError:
            self._bindAttempts += 1
            if conf.maxBindRetries and self._bindAttempts >= conf.maxBindRetries:
                self._bindOverEvent.set()
                raise TransportNotReadyError from None
        else:
            self._ready = True
            self._bindOverEvent.set()

    def _onTick(self) -> None:
        try:
            self._maybeBind()
        except TransportNotReadyError:
            pass
        self._connectIfNecessary()
        self._dropUnregisteredReadonly()
        now = monotonic_time()
        for conn in [*self._outgoing, *self._incoming]:
            conn.check_timers(now)

    # -- incoming connections ------------------------------------------------------------

    def _onAccept(self, sock: Any) -> None:
        if len(self._incoming) >= self.settings.max_incoming and not self._evictStalest():
            throttled_log("warning", "raft_incoming_limit", limit=self.settings.max_incoming)
            sock.close()
            return
        conn = TlsConnection(self._syncObj._poller, self.settings.server_ctx, self._opts,
                             frame_limit=HELLO_FRAME_LIMIT, server_side=True)
        conn.on_message = functools.partial(self._onHello, conn)
        conn.on_close = functools.partial(self._onDisconnected, conn)
        self._incoming[conn] = None
        self._unknown.add(conn)
        conn.start_server(sock)

    def _evictStalest(self) -> bool:
        """Make room by closing the oldest unauthenticated incoming connection that has had a
        fair chance to authenticate; False (refuse the newcomer) if every one is fresh."""
        grace = min(0.5, self.settings.handshake_timeout / 4)
        now = monotonic_time()
        for conn in self._incoming:
            if conn in self._unknown and now - conn.created >= grace:
                conn.disconnect()
                return True
        return False

    def _onHello(self, conn: TlsConnection, message: Any) -> None:
        if isinstance(message, str) and message.startswith(READONLY_HELLO):
            self._onReadonlyHello(conn, message[len(READONLY_HELLO):])
            return
        node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
        reason = None
        if message == "readonly":
            reason = "anonymous read-only nodes are not accepted"
        elif node is None:
            reason = "not a cluster member address"  # also utility/admin commands
        elif self._shouldConnect(node):
            reason = "this node dials that peer itself"
        elif not self._peerMatches(conn, node.address):
            reason = "certificate node id does not match the announced address"
        if reason is not None:
            self._reject(conn, reason)
            return
        self._accept(conn, node, self._onPeerMessage, self._onNodeConnected)

    def _reject(self, conn: TlsConnection, reason: str) -> None:
        throttled_log("warning", "raft_peer_rejected", peer=conn.peer_id, remote=conn.remote, reason=reason)
        conn.disconnect()

    def _accept(self, conn: TlsConnection, node: Any, on_message: Callable[[TlsConnection, Any, Any], None],
                on_connected: Callable[[Any], None]) -> None:
        """Bind an authenticated hello's connection to ``node`` (replacing an older one)."""
        old = self._connections.get(node)
        self._unknown.discard(conn)
        self._connections[node] = conn
        conn.deadline = None
        conn.frame_limit = self.settings.max_frame_bytes
        conn.on_message = functools.partial(on_message, conn, node)
        if old is not None and old is not conn:
            old.disconnect()  # superseded: the peer reconnected
        conn.send(HELLO_ACCEPTED)
        if conn.authenticated:
            on_connected(node)

    def _onReadonlyHello(self, conn: TlsConnection, address: str) -> None:
        policy = self.settings.accept_readonly
        reason = None
        if self._readonlySelf:
            reason = "a non-voter accepts no connections"
        elif address in self._nodeAddrToNode or (self._selfNode is not None and address == self._selfNode.address):
            reason = "a voter's address announced as a non-voter"
        elif not self._peerMatches(conn, address):
            reason = "certificate node id does not match the announced address"
        else:
            try:
                if policy is None or not policy(address):
                    reason = "not a registered non-voter"
            except Exception:  # noqa: BLE001 - a failing policy fails closed
                reason = "not a registered non-voter"
        if reason is not None:
            self._reject(conn, reason)
            return
        node = self._readonlyPeers.get(address)
        if node is None:
            node = self._readonlyPeers[address] = TCPNode(address)
        self._accept(conn, node, self._onReadonlyMessage, self._onReadonlyNodeConnected)

    def _dropUnregisteredReadonly(self) -> None:
        """Close the connection of every non-voter no longer registered (removed peers)."""
        policy = self.settings.accept_readonly
        for address, node in list(self._readonlyPeers.items()):
            try:
                allowed = policy is not None and policy(address)
            except Exception:  # noqa: BLE001 - a failing policy fails closed
                allowed = False
            conn = self._connections.get(node)
            if not allowed and conn is not None:
                throttled_log("info", "raft_non_voter_dropped", peer=address)
                conn.disconnect()

    def _onReadonlyMessage(self, conn: TlsConnection, node: Any, message: Any) -> None:
        if not isinstance(message, dict) or message.get("type") not in _READONLY_MESSAGES:
            throttled_log("warning", "raft_peer_message_rejected", peer=conn.peer_id,
                          reason="a non-voter may only answer AppendEntries")
            conn.disconnect()
            return
        self._onPeerMessage(conn, node, message)

    def _peerMatches(self, conn: TlsConnection, address: str) -> bool:
        policy = self.settings.expected_peer_id
        if policy is None:
            return True
        try:
            expected = policy(address)
        except Exception:  # noqa: BLE001 - a failing policy must fail closed, not wedge the Raft thread
            return False
        return expected is None or conn.peer_id == expected

    # -- outgoing connections ------------------------------------------------------------

    def _shouldConnect(self, node: Any) -> bool:
        return (isinstance(node, TCPNode) and node not in self._preventConnectNodes
                and (self._readonlySelf or self._selfNode.address > node.address))

    def _connectIfNecessarySingle(self, node: Any) -> bool:
        conn = self._connections.get(node)
        if conn is not None and conn.state != ConnState.DISCONNECTED:
            return True
        if conn is None or not self._shouldConnect(node):
            return False
        last = self._lastConnectAttempt.get(node)
        if last is not None and monotonic_time() - last < self._syncObj.conf.connectionRetryTime:
            return False
        self._lastConnectAttempt[node] = monotonic_time()
        return conn.connect(node.ip, node.port)

    def _connectIfNecessary(self) -> None:
        for node in list(self._nodes):
            self._connectIfNecessarySingle(node)

    def _onOutgoingOpen(self, conn: TlsConnection, node: Any) -> None:
        if not self._peerMatches(conn, node.address):
            throttled_log("warning", "raft_peer_rejected", peer=conn.peer_id, remote=conn.remote,
                          reason="certificate node id does not match the dialled address")
            conn.disconnect()
            return
        # Announce ourselves, then wait (still under the deadline) for the peer's acceptance:
        # with TLS 1.3 a rejected client certificate only shows up after our handshake ends.
        conn.on_message = functools.partial(self._onAccepted, conn, node)
        conn.send(READONLY_HELLO + self.settings.node_id if self._readonlySelf else self._selfNode.address)

    def _onAccepted(self, conn: TlsConnection, node: Any, message: Any) -> None:
        if message is not HELLO_ACCEPTED:
            throttled_log("warning", "raft_peer_rejected", peer=conn.peer_id, remote=conn.remote,
                          reason="peer did not acknowledge the hello")
            conn.disconnect()
            return
        conn.deadline = None
        conn.on_message = functools.partial(self._onPeerMessage, conn, node)
        self._onNodeConnected(node)

    # -- shared --------------------------------------------------------------------------

    def _onPeerMessage(self, conn: TlsConnection, node: Any, message: Any) -> None:
        problem = check_message(message)
        if problem is not None:
            throttled_log("warning", "raft_peer_message_rejected", peer=conn.peer_id, reason=problem)
            conn.disconnect()
            return
        messages = [message]
        if message["type"] == "append_entries" and "prevLogIdx" in message:
            # Chunks of a large entry reach pysyncobj labelled by what they hold (see chunks.py:
            # pysyncobj 0.3.17 labels many of them 'finish' and unpickles truncated buffers).
            sequencer = self._chunks.get(conn)
            if sequencer is None and "transmission" in message:
                sequencer = self._chunks[conn] = ChunkSequencer()
            if sequencer is not None:
                messages, dropped = sequencer.deliver(message)
                if dropped is not None:
                    throttled_log("warning", "raft_large_entry_chunk_dropped", peer=conn.peer_id, reason=dropped)
        for m in messages:
            try:
                self._onMessageReceived(node, m)
            except Exception as e:  # noqa: BLE001
                # pysyncobj raised while handling a well-formed message. Keep the connection's
                # frame loop intact; log only types, never the exception text, which may quote
                # replicated data.
                throttled_log("error", "raft_message_handler_failed", peer=conn.peer_id,
                              message_type=m["type"], error=type(e).__name__)

    def _onDisconnected(self, conn: TlsConnection) -> None:
        self._unknown.discard(conn)
        self._chunks.pop(conn, None)
        incoming = conn not in self._outgoing
        self._incoming.pop(conn, None)
        node = next((n for n, c in self._connections.items() if c is conn), None)
        if node is None:
            return
        if incoming:
            del self._connections[node]
        address = str(getattr(node, "address", ""))
        if self._readonlyPeers.get(address) is node:
            del self._readonlyPeers[address]
            self._onReadonlyNodeDisconnected(node)
            return
        if node in self._nodes:
            self._onNodeDisconnected(node)
            self._connectIfNecessarySingle(node)

    def addNode(self, node: Any) -> None:
        """Add a cluster node; dial it if this node is the one that connects."""
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node) and node not in self._connections:
            conn = TlsConnection(self._syncObj._poller, self.settings.client_ctx, self._opts,
                                 frame_limit=self.settings.max_frame_bytes, server_side=False)
            conn.on_open = functools.partial(self._onOutgoingOpen, conn, node)
            conn.on_close = functools.partial(self._onDisconnected, conn)
            self._outgoing.add(conn)
            self._connections[node] = conn

    def dropNode(self, node: Any) -> None:
        """Forget a node and close its connection without reconnecting."""
        conn = self._connections.pop(node, None)
        if conn is not None:
            self._preventConnectNodes.add(node)
            conn.disconnect()
            self._preventConnectNodes.discard(node)
            self._outgoing.discard(conn)
        self._nodes.discard(node)
        self._nodeAddrToNode.pop(str(getattr(node, "address", "")), None)
        self._lastConnectAttempt.pop(node, None)

    def send(self, node: Any, message: Any) -> bool:
        """Send a message to an authenticated peer; False if there is none or the send failed."""
        conn = self._connections.get(node)
        if conn is None or not conn.authenticated:
            return False
        conn.send(message)
        return conn.state == ConnState.CONNECTED

    def destroy(self) -> None:
        """Close every connection and the listening socket."""
        self.setOnMessageReceivedCallback(None)
        self.setOnNodeConnectedCallback(None)
        self.setOnNodeDisconnectedCallback(None)
        self.setOnReadonlyNodeConnectedCallback(None)
        self.setOnReadonlyNodeDisconnectedCallback(None)
        for node in list(self._nodes):
            self.dropNode(node)
        if self._server is not None:
            self._server.unbind()
        for conn in [*self._incoming, *self._outgoing]:
            conn.disconnect()
        self._incoming.clear()
        self._unknown.clear()
        self._chunks.clear()


# -- message shapes ----------------------------------------------------------------------

_INT = int
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "request_vote": {"term": _INT, "last_log_index": _INT, "last_log_term": _INT},
    "response_vote": {"term": _INT},
    "timeout_now": {"term": _INT},
    "append_entries": {"term": _INT, "commit_index": _INT},
    "apply_command": {"command": bytes},
    "apply_command_response": {"request_id": _INT},
    "next_node_idx": {"next_node_idx": _INT, "reset": bool, "success": bool},
}
_TRANSMISSION = ("start", "process", "finish")


def check_message(message: Any) -> str | None:
    """Return why ``message`` is not a well-formed pysyncobj 0.3.17 peer message, or None."""
    if not isinstance(message, dict):
        return "message is not a map"
    kind = message.get("type")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        return "unknown message type"
    for name, typ in fields.items():
        if not isinstance(message.get(name), typ):
            return f"{kind}: bad or missing {name}"
    if kind == "append_entries":
        return _check_append_entries(message)
    if kind == "apply_command" and not isinstance(message.get("request_id", 0), int):
        return "apply_command: bad request_id"
    if kind == "apply_command_response":
        if "error" in message:
            return None if isinstance(message["error"], int) else "apply_command_response: bad error"
        if not (isinstance(message.get("log_idx"), int) and isinstance(message.get("log_term"), int)):
            return "apply_command_response: bad log position"
    return None


def _check_append_entries(message: dict[Any, Any]) -> str | None:
    if "prevLogIdx" in message:
        if not (isinstance(message["prevLogIdx"], int) and isinstance(message.get("prevLogTerm"), int)):
            return "append_entries: bad previous log position"
        if "transmission" in message:
            if message["transmission"] not in _TRANSMISSION or not isinstance(message.get("data"), bytes):
                return "append_entries: bad transmission"
            return None
        entries = message.get("entries", ())
        if not isinstance(entries, tuple):
            return "append_entries: entries is not an array"
        for entry in entries:
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], bytes)
                    and isinstance(entry[1], int) and isinstance(entry[2], int)):
                return "append_entries: malformed entry"
        return None
    serialized = message.get("serialized")
    if serialized is None:
        return None
    if not (isinstance(serialized, tuple) and len(serialized) == 3 and isinstance(serialized[0], bytes)
            and isinstance(serialized[1], bool) and isinstance(serialized[2], bool)):
        return "append_entries: malformed snapshot chunk"
    return None
