"""Lease messages on the replication stream: wire schemas, request/grant between the real
ReplicationServer and ReplicationClient over loopback mutual TLS, StreamVoter + LeaseHolder."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from harness import FAST_CLIENT, Harness, eventually, frame, raw_connect, raw_context, read_to_close
from memory import MemoryRegistry, MemorySink, MemoryWalSource

from vaultraft.raft.tls import ClusterCA
from vaultraft.replication.client import ClientConfig, ReplicationClient
from vaultraft.replication.fence import LeaseGrant, LeaseHolder, LeaseVoter, LocalVoter, StreamVoter
from vaultraft.replication.server import ReplicationServer
from vaultraft.replication.wire import (
    Hello,
    LeaseReply,
    LeaseRequest,
    WireError,
    decode_message,
    encode_message,
    read_message,
)


@pytest.mark.parametrize("msg", [
    LeaseRequest(7, "cluster-a", 3, 15.0), LeaseRequest(1, "P", 0, 0.001),
    LeaseReply(7, True, 3, "cluster-a", "granted"), LeaseReply(2, False, 0, "", "no_voter"),
], ids=lambda m: m.TYPE)
def test_lease_messages_round_trip(msg: Any) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_integer_durations_decode_as_floats() -> None:
    msg = decode_message([1, "lease_request", {"request_id": 1, "holder": "P", "epoch": 1, "duration": 5}])
    assert isinstance(msg, LeaseRequest) and msg == LeaseRequest(1, "P", 1, 5.0) and type(msg.duration) is float


@pytest.mark.parametrize("body", [
    {"request_id": 1, "holder": "", "epoch": 1, "duration": 1.0},
    {"request_id": 1, "holder": "P", "epoch": -1, "duration": 1.0},
    {"request_id": 1, "holder": "P", "epoch": 1, "duration": 0},
    {"request_id": 1, "holder": "P", "epoch": 1, "duration": math.nan},
    {"request_id": 1, "holder": "P", "epoch": 1, "duration": math.inf},
    {"request_id": 1, "holder": "P", "epoch": 1, "duration": 1e9},
    {"request_id": 1, "holder": "P", "epoch": 1, "duration": True},
    {"request_id": 1, "holder": "P", "epoch": 1},
    {"request_id": True, "holder": "P", "epoch": 1, "duration": 1.0},
])
def test_malformed_lease_requests(body: dict[str, Any]) -> None:
    with pytest.raises(WireError):
        decode_message([1, "lease_request", body])


def test_malformed_lease_replies() -> None:
    good = {"request_id": 1, "granted": True, "epoch": 1, "holder": "P", "reason": "granted"}
    for key, bad in [("granted", 1), ("epoch", "1"), ("holder", None), ("reason", "x" * 2000)]:
        with pytest.raises(WireError):
            decode_message([1, "lease_reply", {**good, key: bad}])


def voting_client(harness: Harness, sink: MemorySink, addr: str, voter: LeaseVoter | None, *,
                  secondary_id: str = "sec-a", mode: Any = "dr") -> ReplicationClient:
    return ReplicationClient(sink, harness.ca.issue(secondary_id), [addr], mode, secondary_id=secondary_id,
                             config=ClientConfig(**FAST_CLIENT), voter=voter)


async def streaming(harness: Harness, voter: LeaseVoter | None, *, secondary_id: str = "sec-a",
                    mode: Any = "dr") -> tuple[ReplicationServer, MemoryWalSource, MemorySink]:
    source, registry, sink = MemoryWalSource(), MemoryRegistry({secondary_id: mode}), MemorySink()
    source.put("a", b"1")
    srv = await harness.server(source, registry)
    client = voting_client(harness, sink, srv.bound_address, voter, secondary_id=secondary_id, mode=mode)
    harness.run(client)
    await eventually(lambda: client.status().state == "stream-wals", what="streaming")
    return srv, source, sink


async def test_the_dr_secondary_votes_with_its_voter(harness: Harness) -> None:
    voter = LeaseVoter(None, max_lease=30.0)
    srv, _, _ = await streaming(harness, voter)
    grants = await srv.request_lease("cluster-a", 4, 10.0, timeout=2.0)
    assert grants == [LeaseGrant(True, 4, "cluster-a", "granted")]
    assert voter.epoch == 4 and voter.status()["holder"] == "cluster-a"
    assert await srv.request_lease("cluster-b", 4, 10.0, timeout=2.0) == [
        LeaseGrant(False, 4, "cluster-a", "held_by_other")]
    assert await srv.request_lease("cluster-a", 4, 10.0, timeout=2.0, secondary_ids={"sec-b"}) == []
    assert len(await srv.request_lease("cluster-a", 4, 10.0, timeout=2.0, secondary_ids={"sec-a"})) == 1
    with pytest.raises(ValueError):
        await srv.request_lease("", 4, 10.0, timeout=1.0)
    # the stream itself is unaffected
    assert srv.connection_count() == 1


async def test_a_secondary_without_a_voter_refuses(harness: Harness) -> None:
    srv, _, _ = await streaming(harness, None)
    assert await srv.request_lease("cluster-a", 1, 10.0, timeout=2.0) == [LeaseGrant(False, 0, "", "no_voter")]


async def test_performance_secondaries_are_not_asked(harness: Harness) -> None:
    srv, _, _ = await streaming(harness, None, secondary_id="perf-a", mode="performance")
    assert await srv.request_lease("cluster-a", 1, 10.0, timeout=0.5) == []
    with pytest.raises(ValueError):
        voting_client(harness, MemorySink(), srv.bound_address, LeaseVoter(None, max_lease=1.0),
                      secondary_id="perf-b", mode="performance")


async def test_a_missing_reply_is_no_vote(harness: Harness) -> None:
    srv, source, sink = await streaming(harness, LeaseVoter(None, max_lease=30.0))
    sink.gate = asyncio.Event()  # the secondary blocks applying the next entry ...
    source.put("b", b"2")
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await srv.request_lease("cluster-a", 1, 10.0, timeout=0.3) == []  # ... so its reply is late
    assert time.monotonic() - started < 1.0
    sink.gate.set()
    await eventually(lambda: sink.data.get("b") == b"2", what="applied")
    # the late reply is dropped; the next request is answered
    assert (await srv.request_lease("cluster-a", 1, 10.0, timeout=2.0))[0].granted


async def test_lease_holder_over_the_stream_and_fencing(harness: Harness) -> None:
    """P holds a lease through the DR secondary's vote; once the secondary's voter promoted
    (with a witness) to a higher epoch, P learns it and is fenced."""
    now = [1000.0]
    secondary_voter = LeaseVoter(None, clock=lambda: now[0], max_lease=30.0)
    witness = LeaseVoter(None, clock=lambda: now[0], max_lease=30.0)
    srv, _, _ = await streaming(harness, secondary_voter)

    class Down:
        async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
            raise ConnectionError("witness unreachable")

        async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
            raise ConnectionError("witness unreachable")

    holder = LeaseHolder("cluster-a", 1, 10.0, [StreamVoter(srv, "sec-a", timeout=2.0), Down()],
                         request_timeout=2.5, renew_every=3.0)
    assert await holder.renew_once()  # P + the secondary = 2 of 3
    now[0] += 31  # time passes for the voters (P stopped renewing), quarantine over
    assert secondary_voter.promote("cluster-b", 2).granted and witness.promote("cluster-b", 2).granted
    assert not await holder.renew_once()
    assert holder.fenced_epoch == 2 and not holder.valid()
    # the promoted side renews at its epoch through the witness
    new = LeaseHolder("cluster-b", 2, 10.0, [LocalVoter(witness)], renew_every=3.0)
    assert await new.renew_once()


async def test_unexpected_lease_frames_are_protocol_errors(harness: Harness, ca: ClusterCA) -> None:
    """A secondary must not send lease requests; a primary's stray replies are ignored."""
    source, registry = MemoryWalSource(), MemoryRegistry({"sec-a": "dr"})
    srv = await harness.server(source, registry)
    reader, writer = await raw_connect(srv.bound_address, raw_context(ca.issue("sec-a"), ca.cert_pem))
    writer.write(frame(Hello("sec-a", "dr", "", 0, False)))
    await asyncio.wait_for(read_message(reader), 3)  # welcome
    writer.write(frame(LeaseReply(99, True, 1, "x", "granted")))  # unsolicited: ignored
    writer.write(frame(LeaseRequest(1, "x", 1, 1.0)))  # not from a secondary: closes
    data = await read_to_close(reader)
    assert b"protocol" in data
    writer.close()
