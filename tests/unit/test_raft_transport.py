"""The cluster PKI and the mutual-TLS pysyncobj transport, on real loopback sockets."""

from __future__ import annotations

import dataclasses
import datetime
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pysyncobj import SyncObj, SyncObjConf, SyncObjException, replicated

from vaultraft.raft.connection import decode_body, encode_frame
from vaultraft.raft.tls import (
    ClusterCA,
    NodeCert,
    PKIError,
    client_context,
    generate_key_pair,
    make_csr,
    peer_node_id,
    server_context,
)
from vaultraft.raft.transport import (
    HELLO_ACCEPTED,
    TlsTransport,
    check_message,
    make_transport_class,
    node_id_is_address,
)

RAFT_CONF: dict[str, Any] = {"autoTick": True, "raftMinTimeout": 0.2, "raftMaxTimeout": 0.5,
                              "appendEntriesPeriod": 0.05, "connectionRetryTime": 0.2}


class Counter(SyncObj):  # type: ignore[misc]
    """A test state machine: one replicated integer."""

    def __init__(self, addr: str, others: list[str], transport: type[TlsTransport], **conf: Any) -> None:
        super().__init__(addr, others, conf=SyncObjConf(**{**RAFT_CONF, **conf}), transportClass=transport)
        self.value = 0

    @replicated  # type: ignore[untyped-decorator]
    def incr(self, n: int, pad: bytes = b"") -> int:
        self.value += n
        return self.value


def free_addrs(n: int) -> list[str]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    addrs = sorted(f"127.0.0.1:{s.getsockname()[1]}" for s in socks)
    for s in socks:
        s.close()
    return addrs


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def connected(node: Counter, peer: str) -> bool:
    return bool(node.getStatus()[f"partner_node_status_server_{peer}"] == 2)


def transport_of(node: Counter) -> TlsTransport:
    t = node._SyncObj__transport
    assert isinstance(t, TlsTransport)
    return t


def as_tuples(value: Any) -> Any:
    """What a msgpack round trip should give back: lists become tuples, recursively."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: as_tuples(v) for k, v in value.items()}
    return value


class Recorder:
    """Wraps a transport class so every message pysyncobj sends is round-tripped and checked."""

    def __init__(self) -> None:
        self.types: set[str] = set()
        self.snapshot_chunks = 0
        self.transmissions = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def wrap(self, cls: type[TlsTransport]) -> type[TlsTransport]:
        rec = self

        class Recording(cls):  # type: ignore[valid-type,misc]
            def send(self, node: Any, message: Any) -> bool:
                rec.check(message)
                return bool(super().send(node, message))

        return Recording

    def check(self, message: Any) -> None:
        decoded = decode_body(encode_frame(message, 1 << 30)[4:])
        with self.lock:
            if decoded != as_tuples(message):
                self.errors.append(f"round trip changed {message!r:.200}")
            problem = check_message(decoded)
            if problem is not None:
                self.errors.append(problem)
            self.types.add(message["type"])
            if message.get("serialized") is not None:
                self.snapshot_chunks += 1
            if "transmission" in message:
                self.transmissions += 1


@pytest.fixture
def ca() -> ClusterCA:
    return ClusterCA.create("test-cluster")


@pytest.fixture
def spawn() -> Iterator[Callable[..., Counter]]:
    started: list[Counter] = []

    def start(addr: str, members: list[str], cert: NodeCert, recorder: Recorder | None = None,
              conf: dict[str, Any] | None = None, **transport: Any) -> Counter:
        cls = make_transport_class(cert, **transport)
        if recorder is not None:
            cls = recorder.wrap(cls)
        node = Counter(addr, [m for m in members if m != addr], cls, **(conf or {}))
        started.append(node)
        return node

    yield start
    for node in started:
        node.destroy()


def leader_of(nodes: list[Counter]) -> Counter:
    assert wait_for(lambda: sum(n._isLeader() for n in nodes) == 1 and all(
        n._getLeader() is not None for n in nodes)), "no leader elected"
    return next(n for n in nodes if n._isLeader())


def commit_latency(node: Counter, n: int = 3) -> float:
    worst = 0.0
    for _ in range(n):
        t = time.monotonic()
        node.incr(1, sync=True, timeout=1.0)
        worst = max(worst, time.monotonic() - t)
    return worst


def read_until_closed(sock: socket.socket, timeout: float = 1.0) -> bytes:
    """Everything the peer sends before it closes the connection, which must happen in ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    try:
        while data := sock.recv(1 << 16):
            received += data
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    return received


# -- PKI ------------------------------------------------------------------------------------

def test_issued_certificate_shape(ca: ClusterCA) -> None:
    node = ca.issue("127.0.0.1:8201", ips=["10.1.2.3"])
    node.validate()
    cert = x509.load_pem_x509_certificate(node.cert_pem)
    assert node.node_id == "127.0.0.1:8201"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ips = {str(i) for i in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1", "10.1.2.3"}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=364) < life < datetime.timedelta(days=366)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc > datetime.timedelta(days=3649)
    dns = ca.issue("vault-1.internal")
    assert x509.load_pem_x509_certificate(dns.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["vault-1.internal"]
    assert b"PRIVATE" not in repr(node).encode() and b"PRIVATE" not in repr(ca).encode()


def test_joiner_keeps_its_private_key(ca: ClusterCA) -> None:
    private_pem, public_pem = generate_key_pair()
    issued = ca.issue("node-b", public_pem)
    assert issued.key_pem == b""
    node = dataclasses.replace(issued, key_pem=private_pem)
    node.validate()
    via_csr = NodeCert(ca.issue_for_csr("node-c", make_csr("whatever", private_pem)), private_pem, ca.cert_pem)
    assert via_csr.node_id == "node-c"  # the CA, not the CSR, names the node
    via_csr.validate()
    assert NodeCert.from_bundle(node.to_bundle()) == node
    with pytest.raises(PKIError):
        dataclasses.replace(node, key_pem=generate_key_pair()[0]).validate()
    with pytest.raises(PKIError):
        dataclasses.replace(node, ca_pem=ClusterCA.create("other").cert_pem).validate()
    with pytest.raises(PKIError):
        ca.issue_for_csr("x", b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    loaded = ClusterCA.from_pem("test-cluster", ca.cert_pem, ca.key_pem)
    assert loaded.issue("n").node_id == "n"
    with pytest.raises(PKIError):
        ClusterCA.from_pem("x", node.cert_pem, private_pem)


def test_mutual_tls_contexts(ca: ClusterCA) -> None:
    a, b = ca.issue("node-a"), ca.issue("node-b")
    srv, cli = server_context(a), client_context(b)
    for ctx in (srv, cli):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    s1, s2 = socket.socketpair()
    seen: dict[str, str] = {}

    def serve() -> None:
        with srv.wrap_socket(s1, server_side=True) as ss:
            seen["client"] = peer_node_id(ss)
            seen["version"] = str(ss.version())
            ss.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with cli.wrap_socket(s2) as cs:
        assert peer_node_id(cs) == "node-a"
        assert cs.recv(2) == b"ok"
    t.join(5)
    assert seen == {"client": "node-b", "version": "TLSv1.3"}


def test_transport_parameters_are_checked(ca: ClusterCA) -> None:
    node = ca.issue("n")
    with pytest.raises(ValueError):
        make_transport_class(node, max_frame_bytes=10)
    with pytest.raises(ValueError):
        make_transport_class(node, idle_timeout=1.0, keepalive_interval=2.0)
    with pytest.raises(PKIError):
        make_transport_class(dataclasses.replace(node, key_pem=b""))


def test_message_shapes_are_checked() -> None:
    good = {"type": "append_entries", "term": 3, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 1,
            "entries": ((b"\x00cmd", 2, 3),)}
    assert check_message(good) is None
    assert check_message({**good, "entries": ((b"x", "2", 3),)}) is not None
    assert check_message({"type": "timeout_now", "term": 1}) is None
    assert check_message({"type": "append_entries", "term": 1, "commit_index": 0,
                          "serialized": (b"chunk", True, False)}) is None
    assert check_message({"type": "append_entries", "term": 1, "commit_index": 0,
                          "serialized": [b"chunk", True, False]}) is not None
    assert check_message({"type": "append_entries", "term": 1, "commit_index": 0, "prevLogIdx": 1,
                          "prevLogTerm": 1, "transmission": "start", "data": b"\x80"}) is None
    assert check_message({"type": "apply_command_response", "request_id": 1, "error": 4}) is None
    for bad in ("127.0.0.1:1", ("status",), {"type": "pwn"}, {"type": "request_vote", "term": 1}):
        assert check_message(bad) is not None


# -- the cluster ---------------------------------------------------------------------------

def test_cluster_replicates_and_every_message_survives_msgpack(ca: ClusterCA,
                                                               spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(3)
    rec = Recorder()
    conf = {"appendEntriesBatchSizeBytes": 1024}
    nodes = [spawn(a, addrs, ca.issue(a), rec, conf, expected_peer_id=node_id_is_address) for a in addrs]
    leader = leader_of(nodes)
    follower = next(n for n in nodes if n is not leader)
    for i in range(6):
        nodes[i % 3].incr(1, sync=True, timeout=2)
    # A command larger than appendEntriesBatchSizeBytes goes through pysyncobj's chunked path.
    leader.incr(1, b"x" * 4900, sync=True, timeout=2)
    assert wait_for(lambda: all(n.value == 7 for n in nodes))
    done = threading.Event()
    leader.transferLeadership(callback=lambda res, err: done.set())  # sends timeout_now
    assert done.wait(2)
    assert wait_for(lambda: not leader._isLeader() and leader._getLeader() is not None)
    follower.incr(1, sync=True, timeout=2)
    assert wait_for(lambda: all(n.value == 8 for n in nodes))
    assert rec.errors == []
    assert rec.transmissions >= 3
    assert rec.types >= {"request_vote", "response_vote", "append_entries", "next_node_idx", "apply_command",
                         "apply_command_response", "timeout_now"}


@pytest.mark.parametrize("impostor", ["foreign_ca", "wrong_node_id"])
def test_impostor_cannot_join(ca: ClusterCA, spawn: Callable[..., Counter], impostor: str) -> None:
    addrs = free_addrs(4)
    rogue_addr = addrs[1]  # dials addrs[0], is dialled by addrs[2:]
    good = [spawn(a, addrs, ca.issue(a), expected_peer_id=node_id_is_address) for a in addrs if a != rogue_addr]
    cert = (ClusterCA.create("test-cluster").issue(rogue_addr) if impostor == "foreign_ca"
            else ca.issue("127.0.0.1:1"))
    rogue = spawn(rogue_addr, addrs, cert, expected_peer_id=node_id_is_address)
    leader = leader_of(good)
    for _ in range(5):
        leader.incr(1, sync=True, timeout=2)
    time.sleep(0.6)  # > raftMaxTimeout: the rogue has tried to elect itself by now
    assert all(n.value == 5 for n in good)
    assert rogue.value == 0 and rogue._getLeader() is None
    assert not any(connected(n, rogue_addr) for n in good)
    assert leader._isLeader() and all(n.raftCurrentTerm == leader.raftCurrentTerm for n in good)


def test_hostile_clients_are_dropped_and_commits_continue(ca: ClusterCA, spawn: Callable[..., Counter],
                                                          tmp_path: Path) -> None:
    addrs = free_addrs(3)
    nodes = [spawn(a, addrs, ca.issue(a), max_frame_bytes=1 << 20) for a in addrs]
    leader = leader_of(nodes)
    target = nodes[0]  # lowest address: dialled by both others, so its listener is the attack surface
    host, port = addrs[0].rsplit(":", 1)
    marker = tmp_path / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."  # pickle calling os.system
    legacy = zlib.compress(evil)
    payloads = [struct.pack("i", len(legacy)) + legacy, bytes(range(256)) * 16,
                (1 << 30).to_bytes(4, "big") + b"\0" * 65536]
    for payload in payloads:
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(payload)
            assert not read_until_closed(raw).startswith(b"\x00")  # at most a TLS alert, no frame
        assert commit_latency(leader) < 1.0

    # Authenticated with a cluster certificate, still no pickle and no oversized frame.
    member = ca.issue(addrs[2])
    for frames in ([struct.pack(">I", len(evil)) + evil],
                   [encode_frame(addrs[2], 1024), (1 << 30).to_bytes(4, "big") + b"\0" * 4096]):
        with client_context(member).wrap_socket(socket.create_connection((host, int(port)))) as tls_sock:
            for frame in frames:
                tls_sock.sendall(frame)
            # the hello is accepted (one ack frame); the oversized frame is not
            assert read_until_closed(tls_sock) in (b"", encode_frame(HELLO_ACCEPTED, 16))
        assert commit_latency(leader) < 1.0
    assert not marker.exists()
    assert wait_for(lambda: connected(target, addrs[2]) and connected(target, addrs[1]))
    assert wait_for(lambda: len({n.value for n in nodes}) == 1)


def test_tls_client_without_certificate_is_refused(ca: ClusterCA, spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(1)
    spawn(addrs[0], addrs, ca.issue(addrs[0]))
    host, port = addrs[0].rsplit(":", 1)
    assert wait_for(lambda: _port_open(host, int(port)))
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=ca.cert_pem.decode())
        ctx.maximum_version = version
        raw = socket.create_connection((host, int(port)))
        try:
            tls_sock = ctx.wrap_socket(raw)  # TLS 1.2 fails here; TLS 1.3 reports the alert on read
        except (ssl.SSLError, ConnectionResetError):
            raw.close()
            continue
        with tls_sock:
            try:
                tls_sock.sendall(encode_frame(addrs[0], 1024))
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                continue  # the server's alert already tore the connection down
            assert read_until_closed(tls_sock) == b""


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_idle_connections_are_capped_and_timed_out(ca: ClusterCA, spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(3)
    first = spawn(addrs[0], addrs, ca.issue(addrs[0]), handshake_timeout=1.0, max_incoming=64)
    host, port = addrs[0].rsplit(":", 1)
    assert wait_for(lambda: _port_open(host, int(port)))
    idle = []
    for _ in range(200):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        idle.append(s)
    time.sleep(0.6)  # the squatters are now older than the eviction grace period
    assert len(transport_of(first)._incoming) <= 64
    started = time.monotonic()
    others = [spawn(a, addrs, ca.issue(a)) for a in addrs[1:]]
    assert wait_for(lambda: all(connected(first, a) for a in addrs[1:]), timeout=3.0)
    assert time.monotonic() - started < 3.0
    leader_of([first, *others]).incr(1, sync=True, timeout=2)
    # Every squatter is closed (refused at once, evicted, or timed out after handshake_timeout).
    deadline = time.monotonic() + 2.0
    open_socks = set(idle)
    while open_socks and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_socks), [], [], 0.1)
        for s in readable:
            try:
                if s.recv(1024) == b"":
                    open_socks.discard(s)
            except OSError:
                open_socks.discard(s)
    for s in idle:
        s.close()
    assert not open_socks
    assert wait_for(lambda: len(transport_of(first)._incoming) == 2)  # just the two real peers


def test_keepalives_hold_quiet_peers_and_silent_ones_are_closed(ca: ClusterCA,
                                                                spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(3)
    # generous idle timeout: on a loaded 2-core box a thread can stall for a few 100 ms
    nodes = [spawn(a, addrs, ca.issue(a), idle_timeout=1.5) for a in addrs]
    leader_of(nodes)
    assert wait_for(lambda: all(connected(n, a) for n in nodes for a in addrs if a != n.selfNode.address))

    def links() -> set[tuple[int, float]]:
        return {(id(c), c.created) for n in nodes for c in transport_of(n)._connections.values()}

    before = links()
    time.sleep(3.2)  # > 2 x idle_timeout: follower<->follower links carry only keepalives
    assert links() == before

    # A member that authenticates and then says nothing is closed after idle_timeout.
    target_addr, ghost = free_addrs(2)  # nothing runs at ``ghost``: we play that member
    spawn(target_addr, [target_addr, ghost], ca.issue(target_addr), idle_timeout=0.6)
    host, port = target_addr.rsplit(":", 1)
    assert wait_for(lambda: _port_open(host, int(port)))
    with client_context(ca.issue(ghost)).wrap_socket(socket.create_connection((host, int(port)))) as quiet:
        quiet.sendall(encode_frame(ghost, 1024))
        started = time.monotonic()
        received = read_until_closed(quiet, timeout=2.0)
        assert 0.5 < time.monotonic() - started < 1.5
    assert received.startswith(encode_frame(HELLO_ACCEPTED, 16))  # then votes and keepalives
    assert encode_frame(None, 16) in received


def test_snapshot_transfer(ca: ClusterCA, spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(3)
    rec = Recorder()
    conf = {"logCompactionMinEntries": 10, "logCompactionMinTime": 0.1, "logCompactionBatchSize": 256}
    nodes = [spawn(a, addrs, ca.issue(a), rec, conf) for a in addrs[:2]]
    leader = leader_of(nodes)
    for _ in range(39):
        leader.incr(1)  # fire and forget: queued in order on the leader
    leader.incr(1, sync=True, timeout=2)
    assert wait_for(lambda: leader._getRaftLogSize() < 20), "the leader never compacted its log"
    late = spawn(addrs[2], addrs, ca.issue(addrs[2]), rec, conf)
    assert wait_for(lambda: late.value == 40)
    leader.incr(1, sync=True, timeout=2)
    assert wait_for(lambda: late.value == 41)
    assert rec.snapshot_chunks >= 2
    assert rec.errors == []


# -- non-voters (pysyncobj read-only nodes) ------------------------------------------------

def test_a_registered_non_voter_follows_and_an_unregistered_one_is_refused(ca: ClusterCA,
                                                                          spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(4)
    voters, nv_addr, stranger_addr = addrs[:2], addrs[2], addrs[3]
    registered = {nv_addr}
    nodes = [spawn(a, voters, ca.issue(a), expected_peer_id=node_id_is_address,
                   accept_readonly=lambda addr: addr in registered) for a in voters]
    nv = spawn(None, voters, ca.issue(nv_addr), expected_peer_id=node_id_is_address)
    stranger = spawn(None, voters, ca.issue(stranger_addr), expected_peer_id=node_id_is_address)
    leader = leader_of(nodes)
    for _ in range(4):
        leader.incr(1, sync=True, timeout=2)
    assert wait_for(lambda: nv.value == 4)
    assert stranger.value == 0  # not registered: every voter refuses it
    assert not nv._isLeader() and nv._getLeader() is not None
    assert {n.address for n in leader._SyncObj__readonlyNodes} == {nv_addr}
    # the non-voter does not count: with one voter gone, nothing commits
    follower = next(n for n in nodes if n is not leader)
    follower.destroy()
    with pytest.raises(SyncObjException):
        leader.incr(1, sync=True, timeout=1.0)
    # unregistered while connected: cut off on the next tick
    registered.clear()
    assert wait_for(lambda: not leader._SyncObj__readonlyNodes)


def test_readonly_hellos_that_lie_are_refused(ca: ClusterCA, spawn: Callable[..., Counter]) -> None:
    addrs = free_addrs(3)
    voters = addrs[:2]
    nodes = [spawn(a, voters, ca.issue(a), expected_peer_id=node_id_is_address,
                   accept_readonly=lambda addr: True) for a in voters]
    leader = leader_of(nodes)
    host, port = voters[0].rsplit(":", 1)
    member = ca.issue(addrs[2])
    # a voter's address announced as a non-voter, and another node's address than the certificate's
    for hello in (f"readonly:{voters[1]}", "readonly:127.0.0.1:1"):
        with client_context(member).wrap_socket(socket.create_connection((host, int(port)))) as tls_sock:
            tls_sock.sendall(encode_frame(hello, 1024))
            assert read_until_closed(tls_sock) == b""
    # an accepted non-voter that sends anything but AppendEntries answers is dropped
    with client_context(member).wrap_socket(socket.create_connection((host, int(port)))) as tls_sock:
        tls_sock.sendall(encode_frame(f"readonly:{addrs[2]}", 1024))
        tls_sock.sendall(encode_frame({"type": "request_vote", "term": 99, "last_log_index": 0,
                                       "last_log_term": 0}, 1024))
        read_until_closed(tls_sock, timeout=3.0)
    assert commit_latency(leader) < 1.0
    assert leader._isLeader() and leader.raftCurrentTerm < 99
