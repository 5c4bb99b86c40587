"""The witness over real mutual TLS: its CA and bundles, renew/promote/status, who is refused
(without anything being read), malformed frames, and WitnessClient's failure handling."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import eventually, raw_connect, raw_context, read_to_close

from vaultraft.raft.tls import ClusterCA, NodeCert
from vaultraft.replication import fence, witness
from vaultraft.replication.fence import (
    LeaseGrant,
    LeaseHolder,
    LeaseVoter,
    LocalVoter,
    VoterUnavailable,
    request_promotion,
)
from vaultraft.replication.wire import Hello, ThrottledLog, encode_message, pack, read_frame
from vaultraft.replication.witness import (
    WITNESS_CN,
    Grant,
    Promote,
    Renew,
    Status,
    StatusReply,
    WitnessClient,
    WitnessConfig,
    WitnessServer,
    decode_witness_message,
    issue_client_bundle,
    load_or_create_ca,
    prepare_data_dir,
    server_cert,
    write_bundle,
)


@pytest.fixture(autouse=True)
def unthrottled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(witness, "_throttled", ThrottledLog(0))
    monkeypatch.setattr(fence, "_throttled", ThrottledLog(0))


@pytest.fixture(scope="module")
def wca(tmp_path_factory: pytest.TempPathFactory) -> ClusterCA:
    data_dir = tmp_path_factory.mktemp("witness") / "data"
    prepare_data_dir(str(data_dir))
    return load_or_create_ca(str(data_dir))


@pytest.fixture(scope="module")
def bundle(wca: ClusterCA) -> NodeCert:
    return NodeCert.from_bundle(issue_client_bundle(wca, "node-a").to_bundle())


@dataclasses.dataclass
class Running:
    server: WitnessServer
    voter: LeaseVoter
    clock: list[float]

    @property
    def addr(self) -> str:
        return self.server.bound_address


@pytest.fixture
async def running(wca: ClusterCA, tmp_path: Path) -> AsyncIterator[Running]:
    clock = [100.0]
    voter = LeaseVoter(str(tmp_path / "state.json"), clock=lambda: clock[0], max_lease=30.0)
    clock[0] += 30  # past the start quarantine
    srv = WitnessServer(voter, server_cert(wca, "127.0.0.1"), "127.0.0.1", 0,
                        config=WitnessConfig(handshake_timeout=1.0, idle_timeout=5.0))
    await srv.start()
    try:
        yield Running(srv, voter, clock)
    finally:
        await srv.aclose()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every frame the witness server reads."""
    calls: list[int] = []

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await read_frame(*args, **kwargs)

    monkeypatch.setattr(witness, "read_frame", counting)
    return calls


def frame(obj: Any) -> bytes:
    body = pack(encode_message(obj) if hasattr(obj, "TYPE") else obj)
    return len(body).to_bytes(4, "big") + body


# -- the protocol over TLS -------------------------------------------------------------------------

async def test_renew_promote_and_status(running: Running, bundle: NodeCert) -> None:
    client = WitnessClient(running.addr, bundle, timeout=2.0)
    try:
        with structlog.testing.capture_logs() as logs:
            assert await client.renew("cluster-a", 1, 10.0) == LeaseGrant(True, 1, "cluster-a", "granted")
            assert await client.promote("cluster-b", 2) == LeaseGrant(False, 1, "cluster-a", "lease_active")
            running.clock[0] += 10
            assert await client.promote("cluster-b", 2) == LeaseGrant(True, 2, "cluster-b", "granted")
            assert await client.renew("cluster-a", 1, 10.0) == LeaseGrant(False, 2, "cluster-b", "stale_epoch")
            status = await client.status()
        assert status == {"epoch": 2, "holder": "cluster-b", "lease_remaining": 0.0, "quarantine_remaining": 0.0,
                          "max_lease": 30.0}
        requests = [e for e in logs if e["event"].startswith("witness_")]
        assert [e["event"] for e in requests] == ["witness_renew", "witness_promote", "witness_promote",
                                                  "witness_renew", "witness_status"]
        assert all(e["client"] == "node-a" for e in requests)
        assert requests[2]["granted"] is True and requests[2]["log_level"] == "warning"
        assert running.server.connection_count() == 1  # one connection for all requests
    finally:
        await client.aclose()


async def test_client_reconnects_after_the_witness_restarts(running: Running, bundle: NodeCert,
                                                           wca: ClusterCA) -> None:
    client = WitnessClient(running.addr, bundle, timeout=2.0)
    port = int(running.addr.rsplit(":", 1)[1])
    assert (await client.renew("cluster-a", 1, 5.0)).granted
    await running.server.aclose()
    with pytest.raises(VoterUnavailable):
        await client.renew("cluster-a", 1, 5.0)
    again = WitnessServer(running.voter, server_cert(wca, "127.0.0.1"), "127.0.0.1", port)
    await again.start()
    try:
        assert (await client.renew("cluster-a", 1, 5.0)).granted
    finally:
        await client.aclose()
        await again.aclose()


async def test_lease_holder_and_promotion_with_a_real_witness(running: Running, bundle: NodeCert) -> None:
    secondary = LeaseVoter(None, clock=lambda: running.clock[0], max_lease=30.0)
    running.clock[0] += 30
    client = WitnessClient(running.addr, bundle, timeout=1.0)
    try:
        holder = LeaseHolder("cluster-a", 1, 10.0, [client, LocalVoter(secondary)], renew_every=3.0)
        assert await holder.renew_once() and holder.remaining() > 8.5
        refused = await request_promotion("cluster-b", 2, [LocalVoter(secondary), client], timeout=1.0)
        assert not refused.promoted and {g.reason for g in refused.grants if g} == {"lease_active"}
        running.clock[0] += 10  # P stopped renewing; the voters' grants expired
        promoted = await request_promotion("cluster-b", 2, [LocalVoter(secondary), client], timeout=1.0)
        assert promoted.promoted and running.voter.epoch == secondary.epoch == 2
        assert not await holder.renew_once() and holder.fenced_epoch == 2
    finally:
        await client.aclose()


# -- who is refused -----------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_unauthenticated_peers_are_not_read(running: Running, wca: ClusterCA, reads: list[int],
                                                  who: str) -> None:
    cert = None if who == "no certificate" else ClusterCA.create("elsewhere").issue("node-a")
    try:
        reader, writer = await raw_connect(running.addr, raw_context(cert, wca.cert_pem))
    except (TimeoutError, OSError):
        pass  # refused during the handshake
    else:
        writer.write(frame(Renew(1, "cluster-a", 1, 5.0)))  # TLS 1.3: the client may write first
        assert await read_to_close(reader) == b""
        writer.close()
    await eventually(lambda: running.server.connection_count() == 0, what="connection closed")
    assert reads == [] and running.voter.epoch == 0 and running.voter.status()["holder"] == ""


async def test_client_refuses_a_server_that_is_not_the_witness(running: Running, wca: ClusterCA,
                                                               bundle: NodeCert) -> None:
    # A cluster node's bundle (same CA, CN node-b) presented as a server certificate.
    imposter = WitnessServer(LeaseVoter(None, max_lease=5.0), issue_client_bundle(wca, "node-b"), "127.0.0.1", 0)
    foreign = ClusterCA.create("elsewhere")
    other = WitnessServer(LeaseVoter(None, max_lease=5.0),
                          dataclasses.replace(server_cert(foreign, "127.0.0.1"), ca_pem=wca.cert_pem), "127.0.0.1", 0)
    await imposter.start()
    await other.start()
    try:
        for srv in (imposter, other):
            client = WitnessClient(srv.bound_address, bundle, timeout=1.0)
            with pytest.raises(VoterUnavailable):
                await client.renew("cluster-a", 1, 1.0)
            await client.aclose()
    finally:
        await imposter.aclose()
        await other.aclose()
    with pytest.raises(ValueError):
        issue_client_bundle(wca, WITNESS_CN)  # the witness's name is never handed out


@pytest.mark.parametrize("payload", [
    b"\x00\x00\x00\x03\xc1\xc1\xc1",  # not msgpack
    b"\x00\x00\x00\x00",  # empty frame
    (1 << 20).to_bytes(4, "big"),  # over the 64 KiB cap: refused before the body
    frame([2, "renew", {"request_id": 1, "holder": "P", "epoch": 1, "duration": 1.0}]),  # version
    frame(Hello("sec-a", "dr", "", 0, False)),  # a replication message
    frame([1, "renew", {"request_id": 1, "holder": "P", "epoch": 1, "duration": 1.0, "x": 1}]),
    frame([1, "renew", {"request_id": 1, "holder": "P", "epoch": -1, "duration": 1.0}]),
    frame(Grant(1, True, 1, "P", "granted")),  # a reply sent to the server
    frame({"type": "renew"}),
])
async def test_garbage_closes_without_touching_the_voter(running: Running, wca: ClusterCA, bundle: NodeCert,
                                                        payload: bytes) -> None:
    reader, writer = await raw_connect(running.addr, raw_context(bundle, wca.cert_pem))
    writer.write(payload)
    started = time.monotonic()
    assert await read_to_close(reader) == b""
    assert time.monotonic() - started < 2.0
    writer.close()
    assert running.voter.epoch == 0 and running.voter.status()["holder"] == ""


async def test_a_silent_or_stuck_witness_costs_one_timeout(bundle: NodeCert) -> None:
    async def never_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    srv = await asyncio.start_server(never_handshake, "127.0.0.1", 0)
    host, port = srv.sockets[0].getsockname()[:2]
    client = WitnessClient(f"{host}:{port}", bundle, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(VoterUnavailable):
            await client.renew("cluster-a", 1, 1.0)
        assert time.monotonic() - started < 1.5
    finally:
        await client.aclose()
        srv.close()


async def test_connection_cap_and_handshake_timeout(wca: ClusterCA, bundle: NodeCert) -> None:
    srv = WitnessServer(LeaseVoter(None, max_lease=5.0), server_cert(wca, "127.0.0.1"), "127.0.0.1", 0,
                        config=WitnessConfig(handshake_timeout=0.3, max_connections=2, eviction_grace=0.1))
    await srv.start()
    try:
        idle = [await raw_connect(srv.bound_address, None) for _ in range(2)]
        await asyncio.sleep(0.15)
        client = WitnessClient(srv.bound_address, bundle, timeout=2.0)
        assert (await client.renew("cluster-a", 1, 1.0)).granted  # evicts an idle, unauthenticated one
        await client.aclose()
        for r, w in idle:
            assert await read_to_close(r) == b""  # dropped (evicted or timed out)
            w.close()
    finally:
        await srv.aclose()


# -- messages ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("msg", [Renew(1, "P", 2, 3.5), Promote(2, "S", 3), Status(3), Grant(4, False, 2, "", "x"),
                                 StatusReply(5, 2, "P", 1.5, 0.0, 60.0)], ids=lambda m: m.TYPE)
def test_messages_round_trip(msg: Any) -> None:
    assert decode_witness_message(encode_message(msg)) == msg


# -- data dir and PKI -----------------------------------------------------------------------------------

def test_data_dir_and_ca_files_are_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "w"
    prepare_data_dir(str(data))
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    ca = load_or_create_ca(str(data))
    for name in ("cert.pem", "key.pem"):
        assert stat.S_IMODE((data / "ca" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "ca").stat().st_mode) == 0o700
    assert load_or_create_ca(str(data)).cert_pem == ca.cert_pem
    assert sorted(os.listdir(data)) == ["ca"]  # no temporary directories left


def test_concurrent_creation_yields_one_ca(tmp_path: Path) -> None:
    prepare_data_dir(str(tmp_path / "w"))
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(load_or_create_ca(str(tmp_path / "w")).cert_pem))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1


def test_loose_permissions_are_refused_once_the_ca_exists(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    os.chmod(empty, 0o755)
    prepare_data_dir(str(empty))  # nothing secret yet: tightened
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700
    load_or_create_ca(str(empty))
    os.chmod(empty, 0o750)
    with pytest.raises(ValueError, match="chmod 700"):
        prepare_data_dir(str(empty))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        prepare_data_dir(str(tmp_path / "file"))


def test_bundles(tmp_path: Path, wca: ClusterCA) -> None:
    out = tmp_path / "node.pem"
    write_bundle(str(out), issue_client_bundle(wca, "dr-node-1"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    node = NodeCert.from_bundle(out.read_bytes())  # validates against the CA inside
    assert node.node_id == "dr-node-1" and node.ca_pem == wca.cert_pem
    with pytest.raises(FileExistsError):
        write_bundle(str(out), issue_client_bundle(wca, "dr-node-1"))
    for bad in ("", "-x", "a b", "x" * 65, "ä", WITNESS_CN):
        with pytest.raises(ValueError):
            issue_client_bundle(wca, bad)
