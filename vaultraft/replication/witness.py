"""The fencing witness: a :class:`LeaseVoter` at a third site, over mutual TLS.

Transport: asyncio TLS with client certificates *required*, both sides trusting only the
witness's own CA (created on first start in its data dir). The listener wraps each accepted
socket in TLS before reading a byte of it, so nothing a peer sends is read before OpenSSL
verified its certificate. Frames are replication frames (4-byte length + msgpack, 64 KiB cap); messages
are ``[1, type, {fields}]`` with their own type names (a replication peer's messages are
unknown here and vice versa): ``renew``/``promote`` → ``grant``, ``status`` →
``status_reply``. Anything malformed closes the connection.

Trust: every certificate the witness CA issued may renew and promote (issue bundles only to
cluster nodes). The witness's server certificate carries the reserved CN ``vaultraft-witness``,
which is never issued to a client, and :class:`WitnessClient` checks it: a cluster node's
bundle cannot impersonate the witness.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import re
import shutil
import ssl
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import structlog

from vaultraft.raft.tls import ClusterCA, NodeCert, PKIError, client_context, peer_node_id
from vaultraft.replication.fence import (
    MAX_NAME,
    LeaseGrant,
    LeaseVoter,
    VoterUnavailable,
    valid_duration,
    valid_epoch,
    valid_name,
)
from vaultraft.replication.listener import ListenerConn, TlsListener, abort
from vaultraft.replication.wire import (
    PROTOCOL_VERSION,
    Message,
    PeerClosed,
    ThrottledLog,
    WireError,
    encode_message,
    format_addr,
    parse_addr,
    read_frame,
    write_frame,
)

__all__ = ["WITNESS_CN", "Grant", "Promote", "Renew", "Status", "StatusReply", "WitnessClient", "WitnessConfig",
           "WitnessServer", "decode_witness_message", "issue_client_bundle", "load_or_create_ca",
           "prepare_data_dir", "server_cert", "valid_client_name"]

log = structlog.get_logger("vaultraft.replication.witness")
_throttled = ThrottledLog()

WITNESS_CN: Final = "vaultraft-witness"
FRAME_LIMIT: Final = 64 << 10
CA_DIR: Final = "ca"
STATE_FILE: Final = "fence-state.json"
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")


# -- messages ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Renew(Message):
    """Holder → witness: renew ``holder``'s lease at ``epoch`` for ``duration`` seconds."""

    TYPE: ClassVar[str] = "renew"
    request_id: int
    holder: str
    epoch: int
    duration: float


@dataclass(frozen=True)
class Promote(Message):
    """Candidate → witness: promote ``candidate`` to ``epoch``."""

    TYPE: ClassVar[str] = "promote"
    request_id: int
    candidate: str
    epoch: int


@dataclass(frozen=True)
class Status(Message):
    """Anyone authenticated → witness: report the voter's state."""

    TYPE: ClassVar[str] = "status"
    request_id: int


@dataclass(frozen=True)
class Grant(Message):
    """Witness → client: the voter's :class:`LeaseGrant` for request ``request_id``."""

    TYPE: ClassVar[str] = "grant"
    request_id: int
    granted: bool
    epoch: int
    holder: str
    reason: str


@dataclass(frozen=True)
class StatusReply(Message):
    """Witness → client: :meth:`LeaseVoter.status`."""

    TYPE: ClassVar[str] = "status_reply"
    request_id: int
    epoch: int
    holder: str
    lease_remaining: float
    quarantine_remaining: float
    max_lease: float


def _check(pred: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not pred(v):
            raise WireError(f"expected {what}")
        return v
    return check


_id = _check(valid_epoch, "a request id")
_epoch = _check(valid_epoch, "an epoch")
_name = _check(valid_name, "a name")
_holder = _check(lambda v: type(v) is str and len(v) <= MAX_NAME, "a holder")
_reason = _check(lambda v: type(v) is str and len(v) <= 64, "a reason")
_bool = _check(lambda v: type(v) is bool, "a boolean")
_dur = _check(valid_duration, "a duration")
_secs = _check(lambda v: type(v) in (int, float) and 0 <= v <= 1e9, "seconds")

_SPECS: dict[str, tuple[type[Message], dict[str, Callable[[Any], Any]]]] = {
    Renew.TYPE: (Renew, {"request_id": _id, "holder": _name, "epoch": _epoch, "duration": _dur}),
    Promote.TYPE: (Promote, {"request_id": _id, "candidate": _name, "epoch": _epoch}),
    Status.TYPE: (Status, {"request_id": _id}),
    Grant.TYPE: (Grant, {"request_id": _id, "granted": _bool, "epoch": _epoch, "holder": _holder,
                         "reason": _reason}),
    StatusReply.TYPE: (StatusReply, {"request_id": _id, "epoch": _epoch, "holder": _holder,
                                     "lease_remaining": _secs, "quarantine_remaining": _secs,
                                     "max_lease": _secs}),
}


def decode_witness_message(obj: Any) -> Message:
    """Validate a decoded frame as a witness message; WireError for anything malformed."""
    if type(obj) is not list or len(obj) != 3:
        raise WireError("a message is a 3-element array")
    version, kind, body = obj
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WireError("unsupported protocol version")
    spec = _SPECS.get(kind) if type(kind) is str else None
    if spec is None:
        raise WireError("unknown message type")
    cls, checks = spec
    if type(body) is not dict or body.keys() != checks.keys():
        raise WireError(f"malformed {kind} message")
    values = {name: check(body[name]) for name, check in checks.items()}
    for name in ("duration", "lease_remaining", "quarantine_remaining", "max_lease"):
        if name in values:
            values[name] = float(values[name])
    return cls(**values)


# -- data dir and PKI ----------------------------------------------------------------------------

def prepare_data_dir(path: str) -> None:
    """Create ``path`` (mode 0700) or check an existing one: a directory owned by us, not
    accessible by group or others once it holds the CA (an empty one is tightened to 0700).
    Raises OSError/ValueError with a message fit for one line."""
    if not os.path.exists(path):
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)
        return
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise ValueError(f"{path} is owned by another user")
    if st.st_mode & 0o077:
        if os.path.exists(os.path.join(path, CA_DIR)):
            raise ValueError(f"{path} is accessible by group or others (chmod 700 it)")
        os.chmod(path, 0o700)


def load_or_create_ca(data_dir: str) -> ClusterCA:
    """The witness CA in ``data_dir/ca`` (cert.pem, key.pem, 0600), created on first use.

    Creation is race-free: both files are written into a temporary directory that is renamed
    into place; a concurrent creator's rename fails and it loads the winner's CA."""
    ca_dir = os.path.join(data_dir, CA_DIR)
    if not os.path.isdir(ca_dir):
        ca = ClusterCA.create(f"witness-{os.urandom(4).hex()}")
        tmp = tempfile.mkdtemp(prefix=".ca-", dir=data_dir)  # 0700
        try:
            _write_private(os.path.join(tmp, "cert.pem"), ca.cert_pem)
            _write_private(os.path.join(tmp, "key.pem"), ca.key_pem)
            try:
                os.rename(tmp, ca_dir)
            except OSError:
                if not os.path.isdir(ca_dir):
                    raise
            else:
                _fsync_dir(data_dir)
                log.info("witness_ca_created", data_dir=data_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(ca_dir, "cert.pem"), "rb") as f:
        cert_pem = f.read()
    with open(os.path.join(ca_dir, "key.pem"), "rb") as f:
        key_pem = f.read()
    return ClusterCA.from_pem("witness", cert_pem, key_pem)


def valid_client_name(name: str) -> bool:
    """A client certificate name: 1-64 of ``[A-Za-z0-9._:@-]``, not the witness's own CN."""
    return bool(_CLIENT_NAME.match(name)) and name != WITNESS_CN


def issue_client_bundle(ca: ClusterCA, name: str) -> NodeCert:
    """A client certificate (CN = ``name``) with its key and the CA, for a cluster node."""
    if not valid_client_name(name):
        raise ValueError(f"invalid client name {name[:80]!r}: use 1-64 of A-Z a-z 0-9 . _ : @ - "
                         f"(and not {WITNESS_CN!r})")
    return ca.issue(name)


def server_cert(ca: ClusterCA, listen_host: str) -> NodeCert:
    """The witness's server certificate: CN ``vaultraft-witness``, SAN = the listen IP
    (plus loopback; none for an unspecified address)."""
    ip = ipaddress.ip_address(listen_host)
    return ca.issue(WITNESS_CN, ips=() if ip.is_unspecified else (str(ip),))


def write_bundle(path: str, bundle: NodeCert) -> None:
    """Write ``bundle.to_bundle()`` to a new file ``path`` (0600); FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.to_bundle())
        f.flush()
        os.fsync(f.fileno())


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the server ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class WitnessConfig:
    """Limits and timings of a :class:`WitnessServer`."""

    handshake_timeout: float = 10.0  # accept → TLS handshake done
    idle_timeout: float = 300.0  # close a connection that sends nothing for this long
    write_timeout: float = 10.0
    max_connections: int = 64  # handshaking and established together
    eviction_grace: float = 0.5  # an unauthenticated connection older than this may be evicted


class WitnessServer(TlsListener[ListenerConn]):
    """Serves one :class:`LeaseVoter` to certificate holders of the witness CA."""

    def __init__(self, voter: LeaseVoter, cert: NodeCert, host: str = "127.0.0.1", port: int = 0, *,
                 config: WitnessConfig | None = None) -> None:
        """``cert`` is the witness's server certificate (see :func:`server_cert`); its CA is
        the only one trusted for client certificates."""
        self._cfg = config or WitnessConfig()
        super().__init__(cert, host, port, max_connections=self._cfg.max_connections,
                         eviction_grace=self._cfg.eviction_grace, frame_limit=FRAME_LIMIT)
        self._voter = voter

    async def start(self) -> None:
        """Build the TLS context and start listening."""
        await self._listen()

    _what = "witness server"

    def _make_conn(self, sock: socket.socket, peer: str) -> ListenerConn:
        return ListenerConn(sock, peer)

    def _refused(self, peer: str) -> None:
        _throttled("warning", "witness_connection_refused", reason="connection_cap", remote=peer)

    async def _serve(self, conn: ListenerConn) -> None:
        try:
            async with asyncio.timeout(self._cfg.handshake_timeout):
                reader = await self._start_tls(conn, self._cfg.handshake_timeout)
                client = peer_node_id(conn.writer.get_extra_info("ssl_object"))
        except (OSError, ssl.SSLError, PKIError, TimeoutError) as e:
            _throttled("info", "witness_handshake_failed", remote=conn.peer, reason=type(e).__name__)
            return
        conn.authenticated = True
        try:
            while True:
                async with asyncio.timeout(self._cfg.idle_timeout):
                    msg = decode_witness_message(await read_frame(reader, FRAME_LIMIT))
                reply = self._handle(client, msg)
                await write_frame(conn.writer, encode_message(reply), FRAME_LIMIT, self._cfg.write_timeout)
        except (PeerClosed, OSError, TimeoutError):
            pass
        except WireError as e:
            _throttled("warning", "witness_protocol_error", client=client, remote=conn.peer, reason=str(e)[:200])

    def _handle(self, client: str, msg: Message) -> Message:
        """Answer one request, logging one line."""
        if isinstance(msg, Renew):
            g = self._voter.renew(msg.holder, msg.epoch, msg.duration)
            log.info("witness_renew", client=client, holder=msg.holder, epoch=msg.epoch, duration=msg.duration,
                     granted=g.granted, reason=g.reason, voter_epoch=g.epoch)
            return Grant(msg.request_id, g.granted, g.epoch, g.holder, g.reason)
        if isinstance(msg, Promote):
            g = self._voter.promote(msg.candidate, msg.epoch)
            (log.warning if g.granted else log.info)(
                "witness_promote", client=client, candidate=msg.candidate, epoch=msg.epoch, granted=g.granted,
                reason=g.reason, voter_epoch=g.epoch)
            return Grant(msg.request_id, g.granted, g.epoch, g.holder, g.reason)
        if isinstance(msg, Status):
            st = self._voter.status()
            log.info("witness_status", client=client, epoch=st["epoch"])
            return StatusReply(msg.request_id, st["epoch"], st["holder"], st["lease_remaining"],
                               st["quarantine_remaining"], st["max_lease"])
        raise WireError(f"unexpected {msg.TYPE} message from a client")


# -- the client ----------------------------------------------------------------------------------

class WitnessClient:
    """A :class:`~vaultraft.replication.fence.VoterClient` for a remote witness.

    One connection, opened on first use and reopened after any failure. Every request is
    bounded by ``timeout`` (connect + TLS + round trip); on failure the connection is closed
    and VoterUnavailable raised (no vote). The witness must present a certificate of the
    bundle's CA with CN ``witness_name``. Requests are serialized on the connection.
    """

    def __init__(self, address: str, bundle: NodeCert, *, timeout: float = 2.0,
                 witness_name: str = WITNESS_CN) -> None:
        self._host, self._port = parse_addr(address)
        self._bundle = bundle
        self._timeout = timeout
        self._name = witness_name
        self._ctx: ssl.SSLContext | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self._ids = 0

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        """The witness's :meth:`LeaseVoter.renew` answer."""
        reply = await self._request(lambda rid: Renew(rid, holder, epoch, float(duration)), Grant)
        assert isinstance(reply, Grant)
        return LeaseGrant(reply.granted, reply.epoch, reply.holder, reply.reason)

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        """The witness's :meth:`LeaseVoter.promote` answer."""
        reply = await self._request(lambda rid: Promote(rid, candidate, new_epoch), Grant)
        assert isinstance(reply, Grant)
        return LeaseGrant(reply.granted, reply.epoch, reply.holder, reply.reason)

    async def status(self) -> dict[str, Any]:
        """The witness voter's :meth:`LeaseVoter.status`."""
        reply = await self._request(Status, StatusReply)
        body = reply.body()
        body.pop("request_id")
        return body

    async def aclose(self) -> None:
        """Close the connection (the next request reopens it)."""
        self._drop()

    async def _request(self, make: Callable[[int], Message], expect: type[Message]) -> Message:
        async with self._lock:
            self._ids += 1
            msg = make(self._ids)
            try:
                async with asyncio.timeout(self._timeout):
                    reader, writer = await self._connected()
                    await write_frame(writer, encode_message(msg), FRAME_LIMIT)
                    reply = decode_witness_message(await read_frame(reader, FRAME_LIMIT))
                if not isinstance(reply, expect) or getattr(reply, "request_id", None) != self._ids:
                    raise WireError("unexpected reply from the witness")
                return reply
            except (OSError, TimeoutError, WireError, PKIError, ssl.SSLError) as e:
                self._drop()
                raise VoterUnavailable(f"witness {format_addr(self._host, self._port)}: {type(e).__name__}") from e
            except BaseException:
                self._drop()  # cancelled mid-request: the stream state is unknown
                raise

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is not None:
            return self._conn
        if self._ctx is None:
            self._ctx = await asyncio.to_thread(client_context, self._bundle)
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ctx,
                                                       ssl_handshake_timeout=self._timeout, limit=FRAME_LIMIT)
        try:
            server = peer_node_id(writer.get_extra_info("ssl_object"))
            if server != self._name:
                raise PKIError(f"unexpected witness certificate {server[:64]!r}")
        except BaseException:
            abort(writer)
            raise
        self._conn = (reader, writer)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            abort(self._conn[1])
            self._conn = None


