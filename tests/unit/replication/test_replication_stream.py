"""WAL streaming, resume, bulk syncs, performance filtering, heartbeats and merkle checks over
real loopback mutual TLS."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from harness import Harness, eventually
from memory import MemoryRegistry, MemorySink, MemoryWalSource

from vaultraft.replication.client import ReplicationError
from vaultraft.replication.registry import PrimaryState
from vaultraft.storage.batch import Batch, Op


def fill(source: MemoryWalSource, n: int, prefix: str = "k") -> None:
    for i in range(n):
        source.put(f"{prefix}{source.applied + 1:04d}-{i}", f"v{i}".encode())


def strictly_increasing(xs: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(xs))


async def caught_up(sink: MemorySink, source: MemoryWalSource, mode: str = "dr") -> None:
    await eventually(lambda: sink.data == source.replicated(mode)  # type: ignore[arg-type]
                     and sink.remote_index == source.wal[-1].index, what="secondary caught up")


async def test_new_secondary_bulk_syncs_then_streams_in_order(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 10)
    source.put("core/raft/members", b"never shipped")
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    assert sink.bulk_begins == [("L1", 11)]
    assert sink.position().complete and sink.position().lineage == "L1"
    fill(source, 25)
    source.noop()  # a gap in the WAL
    source.commit(Batch((Op.put("multi-1", b"1"), Op.delete("k0001-0"))), Batch((Op.put("multi-2", b"2"),)))
    await caught_up(sink, source)
    assert "core/raft/members" not in sink.data
    assert sink.received == [e.index for e in source.wal if e.index > 11]
    assert strictly_increasing(sink.received)
    status = client.status()
    assert status.connection_state == "connected" and status.primary_cluster_addr == srv.bound_address
    assert status.last_remote_wal == source.wal[-1].index
    await eventually(lambda: registry.contacts[-1].remote_index == source.wal[-1].index, what="ack")
    assert registry.contacts[-1].connected and registry.contacts[-1].mode == "dr"


async def test_wal_frames_are_paced_only_while_entries_are_group_commits(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    source.put("k0", b"v")
    srv = await harness.server(source, registry, stream_interval=0.1)
    harness.run(harness.client(sink, [srv.bound_address]))
    await caught_up(sink, source)
    # light load, one write per entry: every entry is shipped as soon as it is applied
    start = len(sink.applies)
    for i in range(10):
        source.put(f"light-{i}", b"v")
        await asyncio.sleep(0.02)
    await caught_up(sink, source)
    light = sink.applies[start:]
    assert sum(light) == 10 and len(light) >= 8, light
    # busy: five writes per entry, an entry every 10 ms for 0.5 s; at most one frame per
    # 100 ms once the first busy frame went out (unpaced: ~50 frames)
    start = len(sink.applies)
    for i in range(50):
        source.commit(*(Batch((Op.put(f"busy-{i}-{j}", b"v"),)) for j in range(5)))
        await asyncio.sleep(0.01)
    await caught_up(sink, source)
    busy = sink.applies[start:]
    assert sum(busy) == 50 and len(busy) <= 12, busy


async def test_resume_after_reconnect_without_duplicates(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 5)
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    task = harness.run(client)
    await caught_up(sink, source)
    fill(source, 5)
    await caught_up(sink, source)
    # The secondary stops; the primary moves on; the secondary resumes where it stood.
    await harness.stop(task)
    assert client.status().state == "idle" and client.status().connection_state == "disconnected"
    fill(source, 7)
    harness.run(client)
    await caught_up(sink, source)
    # The primary drops the (still authorized) secondary: it reconnects and resumes again.
    assert srv.disconnect("sec-a") == 1
    fill(source, 3)
    await caught_up(sink, source)
    await eventually(lambda: registry.disconnects("sec-a") == 2, what="two disconnects")
    assert sink.bulk_begins == [("L1", 5)]
    assert source.snapshots == 1
    assert sink.received == list(range(6, source.applied + 1))  # each entry exactly once


async def test_secondary_behind_the_retained_window_bulk_syncs(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 3)
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    task = harness.run(client)
    await caught_up(sink, source)
    await harness.stop(task)
    fill(source, 20)
    source.put("k0001-0", b"overwritten")
    source.truncate(10)  # entries 4..10 are gone: the secondary at 3 cannot stream
    harness.run(client)
    await caught_up(sink, source)
    assert sink.bulk_begins == [("L1", 3), ("L1", 24)]
    assert sink.data["k0001-0"] == b"overwritten"


async def test_other_lineage_or_incomplete_position_bulk_syncs(harness: Harness) -> None:
    source, registry = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"})
    fill(source, 4)
    srv = await harness.server(source, registry)
    for lineage, complete in (("OLD", True), ("L1", False)):
        sink = MemorySink()
        sink.lineage, sink.remote_index, sink.complete = lineage, 2, complete
        sink.data = {"stale": b"x", "core/replication/self": b"own"}
        task = harness.run(harness.client(sink, [srv.bound_address]))
        await eventually(lambda s=sink: s.bulk_begins == [("L1", 4)] and s.complete,  # type: ignore[misc]
                         what="bulk sync")
        assert sink.data == {**source.replicated("dr"), "core/replication/self": b"own"}
        await harness.stop(task)


async def test_mid_stream_fall_behind_switches_to_bulk_on_the_same_connection(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 3)
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    harness.run(client)
    await caught_up(sink, source)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    # Without yielding to the event loop: 10 writes, then the WAL keeps only the last two.
    fill(source, 10)
    source.truncate(source.applied - 2)
    await caught_up(sink, source)
    fill(source, 2)
    await caught_up(sink, source)
    assert sink.bulk_begins == [("L1", 3), ("L1", 13)]
    assert registry.disconnects("sec-a") == 0 and srv.connection_count() == 1
    assert sink.received == [14, 15]


async def test_performance_mode_drops_local_ops(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-p": "performance"}), MemorySink()
    source.put("shared/a", b"1")
    source.put("sys/token/id/t1", b"tok", local=True)
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address], "performance", secondary_id="sec-p")
    harness.run(client)
    await caught_up(sink, source, "performance")
    assert "sys/token/id/t1" not in sink.data  # the snapshot already excludes local keys
    mixed = source.commit(Batch((Op.put("shared/b", b"2"), Op.put("sys/token/id/t2", b"tok", local=True),
                                 Op.delete("shared/a")), request_id=b"req-1"),
                          Batch((Op.put("sys/lease/l1", b"lease", local=True),)))
    only_local = source.put("sys/token/id/t3", b"tok", local=True)
    await caught_up(sink, source, "performance")
    assert sink.data == {"shared/b": b"2"}
    assert sink.received == [mixed, only_local]  # the all-local entry still advances the index
    assert sink.remote_index == only_local
    assert [b.ops for b in sink.received_batches] == [(Op.put("shared/b", b"2"),  Op.delete("shared/a"))]
    assert sink.received_batches[0].request_id == b"req-1"
    result = await client.merkle_check(timeout=5)
    assert result.equal


async def test_heartbeats_update_status_and_contacts(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 2)
    source.noop()
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    harness.run(client)
    await eventually(lambda: client.status().last_heartbeat is not None
                     and client.status().primary_applied_index == 3, what="a heartbeat")
    first = client.status().last_heartbeat
    assert first is not None
    await eventually(lambda: (client.status().last_heartbeat or 0) > first, what="another heartbeat")
    status = client.status()
    assert status.primary_epoch == 1 and status.last_remote_wal == 3  # the bulk sync was at 3
    assert status.known_primary_cluster_addrs == (srv.bound_address,)
    seen = len(registry.contacts)
    await eventually(lambda: len(registry.contacts) > seen + 2, what="acks of heartbeats")
    assert registry.contacts[-1].last_heartbeat >= registry.contacts[seen].last_heartbeat
    # A new epoch (the primary's active node changed) reaches the secondary in heartbeats.
    registry.state = PrimaryState(True, "L1", 7)
    await eventually(lambda: client.status().primary_epoch == 7, what="new epoch")


async def test_merkle_check_equal_and_detects_a_tampered_sink(harness: Harness) -> None:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"}), MemorySink()
    fill(source, 5)
    srv = await harness.server(source, registry)
    client = harness.client(sink, [srv.bound_address])
    with pytest.raises(ReplicationError):
        await client.merkle_check(timeout=1)
    harness.run(client)
    await caught_up(sink, source)
    # Entries written just before the check are shipped before the reply.
    fill(source, 5)
    # Entries written right after the primary's digest must not reach the secondary before the reply.
    source.after_digest = lambda: fill(source, 3)
    result = await client.merkle_check(timeout=5)
    assert result.equal and result.primary_index == 10 and result.secondary_index == 10
    assert result.primary_root == result.secondary_root
    source.after_digest = None
    await caught_up(sink, source)
    sink.data["k0001-0"] = b"tampered"
    result = await client.merkle_check(timeout=5)
    assert not result.equal and result.primary_index == source.applied
