"""Three in-process RaftPhysical nodes on loopback, talking through the mutual-TLS transport.

Each test builds its own cluster (fresh ports and data dirs). Timing follows RaftTuning
(election 0.2–0.5 s, heartbeat 30 ms), so a leader emerges in well under a second.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import vaultraft.raft.node as raft_node
from vaultraft.raft.node import (
    CommitTimeout,
    ConsensusStopped,
    NotLeaderError,
    RaftError,
    RaftPhysical,
    RaftTuning,
)
from vaultraft.raft.rebuild import rebuild_from_local_log
from vaultraft.raft.tls import ClusterCA, NodeCert
from vaultraft.raft.transport import make_transport_class, node_id_is_address
from vaultraft.storage import ApplyResult, Batch, Op, os_crash
from vaultraft.storage.lmdb_store import LMDBStore

FAST = RaftTuning(election_min=0.3, election_max=0.8, heartbeat=0.03, commit_timeout=5.0)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    """One node: its address, data dir, certificate and (while open) its RaftPhysical."""

    addr: str
    data_dir: Path
    cert: NodeCert
    tuning: RaftTuning
    written: list[tuple[int, list[str]]] = field(default_factory=list)
    phys: RaftPhysical | None = None

    @property
    def p(self) -> RaftPhysical:
        assert self.phys is not None
        return self.phys

    def open(self) -> None:
        """Open the store and the RaftPhysical (a process start)."""
        store = LMDBStore(str(self.data_dir / "store"), map_size=1 << 26, rebuildable=True)  # as server.py
        self.phys = RaftPhysical(store, data_dir=str(self.data_dir), self_addr=self.addr, node_id=self.addr,
                                 tuning=self.tuning, observer=lambda i, keys: self.written.append((i, list(keys))))

    async def start(self, peers: Sequence[str] | None) -> None:
        """Join consensus through the TLS transport."""
        transport = make_transport_class(self.cert, expected_peer_id=node_id_is_address)
        await self.p.start_consensus(transport_class=transport, peers=peers)

    async def close(self) -> None:
        """Stop consensus and close the store (a process exit)."""
        if self.phys is not None:
            await self.phys.close()
            self.phys = None


class Cluster:
    def __init__(self, root: Path, tuning: RaftTuning, n: int = 3) -> None:
        ca = ClusterCA.create("raft-test")
        self.members = []
        for i, port in enumerate(free_ports(n)):
            addr = f"127.0.0.1:{port}"
            self.members.append(Member(addr, root / f"node{i}", ca.issue(addr), tuning))
        self.addrs = [m.addr for m in self.members]

    async def start(self) -> None:
        for m in self.members:
            m.open()
        await asyncio.gather(*(m.start([a for a in self.addrs if a != m.addr]) for m in self.members))

    async def leader(self, among: Sequence[Member] | None = None, timeout: float = 5.0) -> Member:
        """The one member holding a lease (raises on timeout or if two hold one)."""
        among = list(among if among is not None else self.members)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holders = [m for m in among if m.phys is not None and m.p.running and m.p.has_lease()]
            assert len(holders) <= 1, f"two leases at once: {[m.addr for m in holders]}"
            if holders:
                return holders[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no leader with a lease")

    async def converge(self, members: Sequence[Member], timeout: float = 10.0) -> None:
        """Wait until every member applied what the first one applied and all stores are equal."""
        target = members[0].p.applied_index()
        for m in members[1:]:
            assert await m.p.wait_applied(target, timeout), f"{m.addr} stuck at {m.p.applied_index()} < {target}"
        first = list(members[0].p.store.all_items())
        for m in members[1:]:
            assert list(m.p.store.all_items()) == first, f"{m.addr} diverged"

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, FAST)
    await c.start()
    yield c
    await c.close()


def put(key: str, value: bytes, rid: bytes | None = None) -> Batch:
    return Batch((Op.put(key, value),), os.urandom(16) if rid is None else rid)


async def eventually(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def write_all(m: Member, batches: Sequence[Batch]) -> list[ApplyResult]:
    return list(await asyncio.gather(*(m.p.apply(b) for b in batches)))


# -- tests -----------------------------------------------------------------------------------


async def test_leader_lease_group_commit_and_follower_redirect(cluster: Cluster) -> None:
    leader = await cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    assert leader.p.is_leader()
    assert not any(f.p.has_lease() or f.p.is_leader() for f in followers)
    # (a lease needs only a quorum: the last follower may hear its first heartbeat a bit later)
    assert await eventually(lambda: all(f.p.leader_addr() == leader.addr for f in followers))

    # a follower refuses writes and names the leader's cluster address
    for f in followers:
        with pytest.raises(NotLeaderError) as exc:
            await f.p.apply(put("nope", b"x"))
        assert exc.value.leader_cluster_addr == leader.addr
    assert await leader.p.get("nope") is None

    # 2,000 concurrent writes: all acknowledged, coalesced into far fewer log entries
    before = leader.p.applied_index()
    batches = [put(f"k/{i:04d}", f"v{i}".encode()) for i in range(2000)]
    t0 = time.monotonic()
    results = await write_all(leader, batches)
    elapsed = time.monotonic() - t0
    assert [r for r in results if r.error is not None] == []
    entries = {r.index for r in results}
    assert len(entries) <= 40, f"2000 writes took {len(entries)} log entries"
    assert leader.p.applied_index() - before <= 40
    assert min(entries) > before and max(entries) <= leader.p.applied_index()
    assert elapsed < 10
    assert await leader.p.get("k/1999") == b"v1999" and len(await leader.p.list("k/")) == 2000

    # every node ends with the same store, and the observer saw every key once
    await cluster.converge([leader, *followers])
    for m in cluster.members:
        assert await m.p.get("k/0000") == b"v0"
        seen = [k for i, keys in m.written for k in keys if i in entries]
        assert sorted(seen) == sorted(b.ops[0].key for b in batches)
    # an empty entry proves the quorum and advances every node's applied index (by one, or
    # more if CPU starvation made the leader step down and pysyncobj logged an election no-op)
    leader = await cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    before_noop = leader.p.applied_index()
    await leader.p.noop()
    assert leader.p.applied_index() > before_noop
    await cluster.converge([leader, *followers])
    assert await eventually(lambda: [m.p.status().leader_addr for m in cluster.members] == [leader.addr] * 3)
    st = leader.p.status()
    assert st.is_leader and sorted(st.peers) == sorted(f.addr for f in followers)
    assert st.connected == {f.addr for f in followers}


async def test_failover_then_restart_catches_up(cluster: Cluster) -> None:
    old = await cluster.leader()
    acked: dict[str, bytes] = {}
    stop_writing = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        while not stop_writing.is_set():
            key, value = f"w{w}/{i}", os.urandom(8)
            try:
                r = await old.p.apply(put(key, value))
            except (RaftError, ConsensusStopped):
                return  # not acknowledged: no promise made
            assert r.error is None
            acked[key] = value
            i += 1

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    assert await eventually(lambda: len(acked) >= 50)
    t0 = time.monotonic()
    await old.p.stop_consensus()  # the leader leaves while writes are in flight
    stop_writing.set()
    # no write may hang because its node left consensus
    await asyncio.wait_for(asyncio.gather(*writers), timeout=2.0)
    assert not old.p.running and not old.p.has_lease()
    with pytest.raises(ConsensusStopped):
        await old.p.apply(put("late", b"x"))

    survivors = [m for m in cluster.members if m is not old]
    new = await cluster.leader(among=survivors, timeout=3.0)
    failover = time.monotonic() - t0
    assert failover < 3.0
    # a lease implies the new leader's no-op is applied, so every committed entry is too
    for key, value in acked.items():
        assert await new.p.get(key) == value, f"acknowledged write {key} lost"
    r = await new.p.apply(put("after-failover", b"1"))
    assert r.error is None
    await cluster.converge([new, *[m for m in survivors if m is not new]])

    # writes while the old node is away, then it rejoins with the same data dir
    more = await write_all(new, [put(f"more/{i}", b"m") for i in range(200)])
    assert all(r.error is None for r in more)
    await old.start(peers=None)  # the recorded membership
    assert sorted(old.p.known_peers()) == sorted(m.addr for m in survivors)
    await cluster.converge([new, old, *[m for m in survivors if m is not new]])
    assert await old.p.get("after-failover") == b"1" and await old.p.get("more/199") == b"m"
    assert not old.p.has_lease() and old.p.leader_addr() == new.addr
    for key, value in acked.items():
        assert await old.p.get(key) == value


async def test_stopped_node_catches_up_through_snapshot(tmp_path: Path) -> None:
    tuning = RaftTuning(election_min=0.3, election_max=0.8, heartbeat=0.03, commit_timeout=5.0,
                        log_compaction_entries=50)
    c = Cluster(tmp_path, tuning)
    await c.start()
    try:
        leader = await c.leader()
        lagging = next(m for m in c.members if m is not leader)
        await write_all(leader, [put("early", b"1")])
        await c.converge([leader, lagging])
        await lagging.close()  # process exit

        # well over 50 entries (sequential writes: one entry each) so the survivors compact
        for i in range(90):
            r = await leader.p.apply(put(f"s/{i:03d}", str(i).encode(), rid=f"snap-{i}".encode()))
            assert r.error is None
        others = [m for m in c.members if m is not lagging]
        deadline = time.monotonic() + 5
        while not all(os.path.exists(m.data_dir / "raft" / "snapshot") for m in others):
            assert time.monotonic() < deadline, "log was never compacted"
            await asyncio.sleep(0.02)
        obj = leader.p._obj
        assert obj is not None
        # the leader no longer holds the entries the lagging node misses
        assert obj._SyncObj__raftLog[0][1] > lagging_applied(lagging)

        lagging.open()  # process start: same data dir, recorded peers
        await lagging.start(peers=None)
        await c.converge([leader, *[m for m in c.members if m is not leader]])
        assert await lagging.p.get("s/089") == b"89" and await lagging.p.get("early") == b"1"
        assert os.path.exists(lagging.data_dir / "raft" / "snapshot")  # it received the leader's snapshot
        # dedup state arrived with the snapshot: a retried request id is not applied again
        # (leadership may have moved while the lagging node rejoined: ask the current leader)
        leader = await c.leader()
        r = await leader.p.apply(put("s/000", b"changed", rid=b"snap-0"))
        assert r.error is None and r.index < leader.p.applied_index()
        await c.converge([leader, lagging])
        assert await lagging.p.get("s/000") == b"0"
    finally:
        await c.close()


async def test_store_torn_by_an_os_crash_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    """A node's store commits without fsync; after an OS crash it is set aside and the
    node's snapshot, journal and the leader rebuild it (storage/os_crash.py)."""
    tuning = RaftTuning(election_min=0.3, election_max=0.8, heartbeat=0.03, commit_timeout=5.0,
                        log_compaction_entries=50)
    c = Cluster(tmp_path, tuning)
    await c.start()
    try:
        leader = await c.leader()
        victim = next(m for m in c.members if m is not leader)
        for i in range(80):  # sequential: one entry each, so every node compacts once
            assert (await leader.p.apply(put(f"k/{i:03d}", str(i).encode()))).error is None
        await c.converge([leader, victim])
        await victim.close()
        store_dir = victim.data_dir / "store"
        assert os.path.exists(victim.data_dir / "raft" / "snapshot")  # its own snapshot + journal tail
        # the OS went down: the marker names another boot and the pages may be torn
        (store_dir / os_crash.MARKER).write_text("an-earlier-boot")
        (store_dir / "data.mdb").write_bytes(os.urandom(16384))
        for i in range(80, 90):  # and the cluster moved on meanwhile
            assert (await leader.p.apply(put(f"k/{i:03d}", str(i).encode()))).error is None

        victim.open()
        assert victim.p.store.rebuilt and victim.p.applied_index() == 0
        # what server.py does next, before unsealing: replay its own snapshot and journal
        rebuilt = rebuild_from_local_log(victim.p.store, str(victim.data_dir / "raft"))
        assert rebuilt.snapshot_index >= 50 and rebuilt.applied_index >= rebuilt.snapshot_index
        assert await victim.p.get("k/000") == b"0"
        await victim.start(peers=None)
        leader = await c.leader()
        await c.converge([leader, *[m for m in c.members if m is not leader]])
        for i in range(90):
            assert await victim.p.get(f"k/{i:03d}") == str(i).encode()
        assert (store_dir / os_crash.UNTRUSTED).exists()
    finally:
        await c.close()


def lagging_applied(m: Member) -> int:
    store = LMDBStore(str(m.data_dir / "store"))
    try:
        return store.applied_index()
    finally:
        store.close()


async def test_lost_callback_retry_applies_exactly_once(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_node, "ATTEMPT_TIMEOUT", 1.0)
    leader = await cluster.leader()
    obj = leader.p._obj
    assert obj is not None
    original = obj.apply_command
    dropped: list[bytes] = []

    def drop_once(raw: bytes, callback: Any = None) -> None:
        if not dropped:
            dropped.append(raw)
            original(raw, callback=None)  # committed and applied, but nobody hears about it
        else:
            original(raw, callback=callback)

    monkeypatch.setattr(obj, "apply_command", drop_once)
    first = asyncio.gather(*(leader.p.apply(put(f"lost/{i}", b"v1", rid=f"lost-{i}".encode()))
                             for i in range(5)))
    # the dropped entry is committed and applied (well before the retry is due)
    assert await eventually(lambda: leader.p.store.get("lost/4") == b"v1", timeout=0.8)
    assert dropped
    applied_after_first = leader.p.applied_index()
    # another client overwrites a key before the retry: a double apply would undo this
    r2 = await leader.p.apply(put("lost/0", b"v2"))
    assert r2.error is None
    results = await asyncio.wait_for(first, timeout=3.0)
    assert all(r.error is None for r in results)
    # the retry was deduplicated: every result names the original entry
    (orig_index,) = {r.index for r in results}
    assert orig_index == applied_after_first < r2.index < leader.p.applied_index()
    await cluster.converge([leader, *[m for m in cluster.members if m is not leader]])
    for m in cluster.members:
        assert await m.p.get("lost/0") == b"v2"
        hits = [i for i, keys in m.written for k in keys if k == "lost/1"]
        assert hits == [orig_index]

    # every group in flight loses its callback; leaving consensus must fail all their writers
    # (including groups still waiting for one of the MAX_INFLIGHT slots), never leave them hanging
    monkeypatch.setattr(obj, "apply_command", lambda raw, callback=None: original(raw, callback=None))
    stuck = []
    for wave in range(raft_node.MAX_INFLIGHT + 4):
        stuck.append(asyncio.ensure_future(leader.p.apply(put(f"stuck/{wave}", b"x"))))
        await asyncio.sleep(0.005)  # one group per wave
    await leader.p.stop_consensus()
    outcomes = await asyncio.wait_for(asyncio.gather(*stuck, return_exceptions=True), timeout=2.0)
    assert all(isinstance(o, ConsensusStopped) for o in outcomes), outcomes


async def test_minority_loses_lease_and_fails_fast(tmp_path: Path) -> None:
    tuning = RaftTuning(election_min=0.3, election_max=0.8, heartbeat=0.03, commit_timeout=1.0)
    c = Cluster(tmp_path, tuning)
    await c.start()
    try:
        leader = await c.leader()
        assert (await leader.p.apply(put("before", b"1"))).error is None
        others = [m for m in c.members if m is not leader]
        await asyncio.gather(*(m.p.stop_consensus() for m in others))
        t0 = time.monotonic()
        # a write submitted right away, while the node still believes it leads
        pending = asyncio.create_task(leader.p.apply(put("minority", b"x")))
        while leader.p.has_lease():
            await asyncio.sleep(0.005)
        lost = time.monotonic() - t0
        assert lost <= 2 * tuning.election_min, f"lease held {lost:.3f}s without a quorum"
        with pytest.raises((CommitTimeout, NotLeaderError)):
            await asyncio.wait_for(pending, timeout=tuning.commit_timeout + 1.0)
        assert time.monotonic() - t0 <= tuning.commit_timeout + 0.5
        # later writes fail at once: the node stepped down and knows no leader
        t1 = time.monotonic()
        with pytest.raises(NotLeaderError) as exc:
            await leader.p.apply(put("minority2", b"x"))
        assert time.monotonic() - t1 < 0.5
        assert exc.value.leader_cluster_addr is None
        assert not leader.p.is_leader() and not leader.p.has_lease()
        assert await leader.p.get("before") == b"1"
    finally:
        await c.close()


async def test_membership_add_and_remove(tmp_path: Path) -> None:
    c = Cluster(tmp_path, FAST, n=4)
    first3, newcomer = c.members[:3], c.members[3]
    for m in first3:
        m.open()
    await asyncio.gather(*(m.start([x.addr for x in first3 if x is not m]) for m in first3))
    try:
        leader = await c.leader(among=first3)
        follower = next(m for m in first3 if m is not leader)
        assert (await leader.p.apply(put("before-join", b"1"))).error is None
        with pytest.raises(NotLeaderError):
            await follower.p.add_peer(newcomer.addr)

        await leader.p.add_peer(newcomer.addr)
        assert newcomer.addr in leader.p.known_peers()
        newcomer.open()
        await newcomer.start([m.addr for m in first3])
        assert (await leader.p.apply(put("after-join", b"2"))).error is None
        await c.converge([leader, *[m for m in c.members if m is not leader]])
        assert await newcomer.p.get("before-join") == b"1"
        assert sorted(leader.p.status().peers) == sorted(m.addr for m in c.members if m is not leader)
        assert await eventually(lambda: leader.p.status().match_index.get(newcomer.addr) == leader.p.commit_index())

        await leader.p.remove_peer(newcomer.addr)
        assert newcomer.addr not in leader.p.known_peers()
        assert newcomer.addr not in leader.p.status().peers
        await newcomer.close()
        assert (await leader.p.apply(put("after-leave", b"4"))).error is None
        await c.converge([leader, *[m for m in first3 if m is not leader]])
    finally:
        await c.close()
