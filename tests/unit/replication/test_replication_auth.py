"""Who may connect: mutual TLS before any frame, authorization, redirects, revocation, limits,
malformed input."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from typing import Any

import pytest
import structlog
from harness import Harness, eventually, frame, raw_connect, raw_context, read_to_close
from memory import MemoryRegistry, MemorySink, MemoryWalSource

from vaultraft.raft.tls import ClusterCA
from vaultraft.replication import server as server_mod
from vaultraft.replication.registry import PrimaryState
from vaultraft.replication.wire import (
    Error,
    Hello,
    Message,
    Welcome,
    decode_message,
    read_message,
    unpack,
)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every message the server reads (to prove it reads nothing from some peers)."""
    calls: list[int] = []

    async def counting_read(*args: Any, **kwargs: Any) -> Message:
        calls.append(1)
        return await read_message(*args, **kwargs)

    monkeypatch.setattr(server_mod, "read_message", counting_read)
    return calls


def messages(data: bytes) -> list[Message]:
    """Split raw bytes from the server into messages."""
    out = []
    while data:
        size = int.from_bytes(data[:4], "big")
        out.append(decode_message(unpack(data[4:4 + size])))
        data = data[4 + size:]
    return out


async def test_standby_redirects_to_the_active_node(harness: Harness) -> None:
    source, sink = MemoryWalSource(), MemorySink()
    source.put("a", b"1")
    active_registry = MemoryRegistry({"sec-a": "dr"})
    active = await harness.server(source, active_registry, node_id="primary-2")
    standby_registry = MemoryRegistry({"sec-a": "dr"}, PrimaryState(False, "L1", 1, active.bound_address))
    standby = await harness.server(MemoryWalSource(), standby_registry, node_id="primary-1")
    client = harness.client(sink, [standby.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming from the active node")
    assert client.status().primary_cluster_addr == active.bound_address
    assert client.status().known_primary_cluster_addrs == (standby.bound_address,)
    assert sink.data == {"a": b"1"}
    assert standby_registry.contacts == [] and standby.connection_count() == 0


async def test_standby_without_known_active_refuses(harness: Harness, ca: ClusterCA) -> None:
    registry = MemoryRegistry({"sec-a": "dr"}, PrimaryState(False, "L1", 1, None))
    srv = await harness.server(MemoryWalSource(), registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write(frame(Hello("sec-a", "dr", "", 0, False)))
    assert messages(await read_to_close(reader)) == [Error("not_active", "this node is not the active node")]
    writer.close()


@pytest.mark.parametrize("hello,allowed,code", [
    (Hello("sec-a", "dr", "", 0, False), {}, "unauthorized"),  # unknown or revoked
    (Hello("sec-b", "dr", "", 0, False), {"sec-a": "dr", "sec-b": "dr"}, "unauthorized"),  # not its certificate
    (Hello("sec-a", "performance", "", 0, False), {"sec-a": "dr"}, "mode_mismatch"),
])
async def test_refusals(harness: Harness, ca: ClusterCA, hello: Hello, allowed: dict[str, Any], code: str) -> None:
    registry = MemoryRegistry(allowed)
    srv = await harness.server(MemoryWalSource(), registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write(frame(hello))
    got = messages(await read_to_close(reader))
    assert len(got) == 1 and isinstance(got[0], Error) and got[0].code == code
    assert registry.contacts == []
    writer.close()


async def test_unknown_secondary_client_keeps_retrying_without_data(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry(), MemorySink()
    source.put("a", b"1")
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    with structlog.testing.capture_logs() as logs:
        harness.run(client)
        await eventually(lambda: registry.authorize_calls.count("sec-a") >= 2, what="two attempts")
    refusals = [e for e in logs if e["event"] == "replication_refused_by_primary"]
    assert refusals and refusals[0]["code"] == "unauthorized"
    assert sink.data == {} and sink.bulk_begins == [] and registry.contacts == []
    assert client.status().connection_state != "connected"
    # the status says why (a staged activation shows it as last_error)
    assert client.status().last_error == (f"the primary at {srv.bound_address} refused this secondary: "
                                          "unauthorized: unknown or revoked secondary")


async def test_unreachable_primary_is_the_last_error_until_a_session_starts(harness: Harness) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    client = harness.client(sink, [dead])
    assert client.status().last_error == ""
    harness.run(client)
    await eventually(lambda: client.status().last_error != "", what="a failed attempt")
    assert client.status().last_error == f"cannot reach the primary at {dead}: ConnectionRefusedError"
    srv = await harness.server(source, registry)
    client.update_addrs([srv.bound_address])
    await eventually(lambda: client.status().state == "stream-wals", timeout=10, what="streaming")
    assert client.status().last_error == ""


async def test_revocation_and_disconnect(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    source.put("a", b"1")
    srv = await harness.server(source, registry, state_check_interval=60)
    client = harness.client(sink, [srv.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    del registry.allowed["sec-a"]
    assert srv.disconnect("sec-a") == 1
    await eventually(lambda: registry.disconnects("sec-a") == 1, what="disconnect contact")
    assert srv.connection_count() == 0 or client.status().connection_state != "connected"
    calls = len(registry.authorize_calls)
    source.put("b", b"2")
    await eventually(lambda: len(registry.authorize_calls) > calls + 1, what="refused reconnects")
    assert "b" not in sink.data and client.status().connection_state != "connected"
    assert srv.disconnect("sec-a") == 0


async def test_revocation_is_noticed_by_a_running_stream(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    registry.allowed.clear()
    await eventually(lambda: registry.disconnects("sec-a") == 1, what="stream closed on revocation")


async def test_stream_moves_when_the_node_loses_leadership(harness: Harness) -> None:
    source, sink = MemoryWalSource(), MemorySink()
    old_registry, new_registry = MemoryRegistry({"sec-a": "dr"}), MemoryRegistry({"sec-a": "dr"})
    old = await harness.server(source, old_registry, node_id="primary-1")
    new = await harness.server(source, new_registry, node_id="primary-2")
    client = harness.client(sink, [old.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    assert client.status().primary_cluster_addr == old.bound_address
    # The old node learns that primary-2 is now active: the stream is redirected there.
    old_registry.state = PrimaryState(False, "L1", 2, new.bound_address)
    new_registry.state = PrimaryState(True, "L1", 2)
    await eventually(lambda: client.status().primary_cluster_addr == new.bound_address, what="redirected")
    assert old_registry.disconnects("sec-a") == 1
    source.put("after", b"1")
    await eventually(lambda: sink.data.get("after") == b"1", what="streaming from the new active node")
    assert client.status().primary_epoch == 2 and sink.bulk_begins == [("L1", 0)]
    # Nobody knows the active node: the stream just closes.
    new_registry.state = PrimaryState(False, "L1", 3, None)
    await eventually(lambda: new_registry.disconnects("sec-a") == 1, what="stream closed")
    await eventually(lambda: client.status().connection_state != "connected", what="client disconnected")


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_unauthenticated_peer_gets_nothing_and_is_not_read(
        harness: Harness, ca: ClusterCA, other_ca: ClusterCA, reads: list[int], who: str) -> None:
    registry = MemoryRegistry({"sec-a": "dr"})
    srv = await harness.server(MemoryWalSource(), registry)
    cert = None if who == "no certificate" else other_ca.issue("sec-a")
    try:
        reader, writer = await raw_connect(srv.bound_address, raw_context(cert, ca.cert_pem))
    except (TimeoutError, OSError):
        pass  # refused during the handshake (TLS 1.2 style): nothing was exchanged at all
    else:
        writer.write(frame(Hello("sec-a", "dr", "", 0, False)))  # TLS 1.3: the client may write first
        assert await read_to_close(reader) == b""
        writer.close()
    await eventually(lambda: srv.connection_count() == 0, what="connection closed")
    assert reads == [] and registry.authorize_calls == [] and registry.contacts == []


async def test_client_refuses_a_server_of_another_ca(harness: Harness, ca: ClusterCA, other_ca: ClusterCA) -> None:
    registry, sink = MemoryRegistry({"sec-a": "dr"}), MemorySink()
    # The server trusts our CA for client certificates but presents one from another CA.
    imposter = dataclasses.replace(other_ca.issue("primary-1"), ca_pem=ca.cert_pem)
    srv = await harness.server(MemoryWalSource(), registry, cert=imposter)
    client = harness.client(sink, [srv.bound_address])
    with structlog.testing.capture_logs() as logs:
        harness.run(client)
        await eventually(lambda: sum(e["event"] == "replication_connection_failed" for e in logs) >= 2,
                         what="failed attempts")
    assert registry.authorize_calls == [] and client.status().connection_state != "connected"


async def test_oversized_frame_closes_before_the_body(harness: Harness, ca: ClusterCA) -> None:
    registry = MemoryRegistry({"sec-a": "dr"})
    srv = await harness.server(MemoryWalSource(), registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write((33 << 20).to_bytes(4, "big"))  # announces 33 MiB, sends none of it
    started = time.monotonic()
    assert await read_to_close(reader) == b""
    assert time.monotonic() - started < 2.5
    assert registry.authorize_calls == []
    writer.close()


@pytest.mark.parametrize("payload", [
    b"\x00\x00\x00\x03\xc1\xc1\xc1",  # not msgpack
    frame([2, "hello", {}]),  # unknown version
    frame([1, "pickle", {}]),  # unknown type
    frame([1, "hello", {"secondary_id": "sec-a", "mode": "dr", "lineage": "", "remote_index": -1,
                        "complete": False}]),
    frame([1, "hello", {"secondary_id": "sec-a", "mode": "dr", "lineage": "", "remote_index": 0,
                        "complete": False, "extra": 1}]),
    frame({"type": "hello"}),
    b"\x00\x00\x00\x00",  # empty frame
])
async def test_garbage_before_hello_closes(harness: Harness, ca: ClusterCA, payload: bytes) -> None:
    registry = MemoryRegistry({"sec-a": "dr"})
    srv = await harness.server(MemoryWalSource(), registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write(payload)
    assert await read_to_close(reader) == b""
    assert registry.authorize_calls == [] and registry.contacts == []
    writer.close()


async def test_garbage_after_hello_closes_the_stream(harness: Harness, ca: ClusterCA) -> None:
    source, registry = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"})
    source.put("a", b"1")
    srv = await harness.server(source, registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write(frame(Hello("sec-a", "dr", "", 0, False)))
    first = await asyncio.wait_for(read_message(reader), 3)
    assert first == Welcome("L1", 1, True)
    writer.write(frame([1, "ack", {"remote_index": "not a number"}]))
    got = messages(await read_to_close(reader))
    assert isinstance(got[-1], Error) and got[-1].code == "protocol"
    await eventually(lambda: registry.disconnects("sec-a") == 1, what="disconnect contact")
    writer.close()


async def test_handshake_timeout_and_connection_cap(harness: Harness) -> None:
    srv = await harness.server(MemoryWalSource(), MemoryRegistry(), handshake_timeout=0.3,
                               max_connections=2, eviction_grace=10)
    idle = [await raw_connect(srv.bound_address, None) for _ in range(2)]
    await eventually(lambda: srv.connection_count() == 2, what="two connections")
    reader, writer = await raw_connect(srv.bound_address, None)
    assert await read_to_close(reader, timeout=0.2) == b""  # refused at once: the cap is reached
    writer.close()
    started = time.monotonic()
    for r, w in idle:
        assert await read_to_close(r) == b""  # silent peers are dropped after the handshake timeout
        w.close()
    assert time.monotonic() - started < 2


async def test_full_server_evicts_the_oldest_unauthenticated_connection(harness: Harness) -> None:
    srv = await harness.server(MemoryWalSource(), MemoryRegistry(), max_connections=1, eviction_grace=0)
    old_reader, old_writer = await raw_connect(srv.bound_address, None)
    await eventually(lambda: srv.connection_count() == 1, what="first connection")
    _, new_writer = await raw_connect(srv.bound_address, None)
    assert await read_to_close(old_reader, timeout=2) == b""
    assert srv.connection_count() == 1
    old_writer.close()
    new_writer.close()

