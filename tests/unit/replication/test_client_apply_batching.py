"""The secondary merges Wal frames that queued up behind each other into one apply and one Ack,
and still applies what came before a bad frame. A scripted primary (real mutual TLS on
loopback) writes all its frames at once, so they are queued before the first apply ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from harness import Harness, eventually
from memory import MemorySink

from vaultraft.raft.tls import ClusterCA, server_context
from vaultraft.replication.wire import (
    Ack,
    Heartbeat,
    Hello,
    Message,
    Wal,
    Welcome,
    encode_message,
    pack,
    read_message,
)
from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.wal import WalEntry


def entry(index: int) -> WalEntry:
    return WalEntry(index, 1_700_000_000_000 + index, (Batch((Op.put(f"k{index}", b"v%d" % index),), b"r" * 16).encode(),))


def wire(*msgs: Message) -> bytes:
    out = b""
    for m in msgs:
        body = pack(encode_message(m))
        out += len(body).to_bytes(4, "big") + body
    return out


class CountingSink(MemorySink):
    """Records how many entries each apply_wal call carried."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []
        self.lineage, self.complete = "L1", True

    async def apply_wal(self, lineage: str, entries: Sequence[WalEntry]) -> None:
        self.calls.append([e.index for e in entries])
        await super().apply_wal(lineage, entries)


class ScriptedPrimary:
    """Accepts one secondary, answers its Hello with ``script`` in one write, records Acks."""

    def __init__(self, ca: ClusterCA, script: Sequence[Message]) -> None:
        self.ca, self.script = ca, script
        self.acks: list[int] = []
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def addr(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await read_message(reader, 1 << 16)
            assert isinstance(hello, Hello)
            writer.write(wire(*self.script))
            await writer.drain()
            while True:
                msg = await read_message(reader, 1 << 16)
                if isinstance(msg, Ack):
                    self.acks.append(msg.remote_index)
        except Exception:  # noqa: BLE001 - the secondary hung up: the script is over
            pass
        finally:
            writer.close()
            self.closed.set()

    async def __aenter__(self) -> ScriptedPrimary:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                 ssl=server_context(self.ca.issue("primary-1")))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def sink() -> AsyncIterator[CountingSink]:
    yield CountingSink()


async def test_queued_wal_frames_are_applied_and_acknowledged_as_one(harness: Harness, ca: ClusterCA,
                                                                     sink: CountingSink) -> None:
    script = [Welcome("L1", 3, False)] + [Wal(3, (entry(i),)) for i in range(1, 6)] + [Wal(3, (entry(6), entry(7)))]
    async with ScriptedPrimary(ca, script) as primary:
        client = harness.client(sink, [primary.addr])
        harness.run(client)
        await eventually(lambda: sink.remote_index == 7, what="all entries applied")
        await eventually(lambda: primary.acks == [7], what="one ack")
    assert sink.calls == [[1, 2, 3, 4, 5, 6, 7]]
    assert sink.data == {f"k{i}": b"v%d" % i for i in range(1, 8)}
    assert client.status().last_remote_wal == 7 and client.status().primary_epoch == 3


async def test_merging_stops_at_other_messages_and_at_the_byte_bound(harness: Harness, ca: ClusterCA,
                                                                     sink: CountingSink) -> None:
    script = [Welcome("L1", 1, False), Wal(1, (entry(1),)), Wal(1, (entry(2),)),
              Heartbeat(9, 1, 0.0), Wal(1, (entry(3),)), Wal(1, (entry(4),)), Wal(1, (entry(5),))]
    async with ScriptedPrimary(ca, script) as primary:
        client = harness.client(sink, [primary.addr], max_apply_bytes=1)  # every frame reaches the bound
        harness.run(client)
        await eventually(lambda: sink.remote_index == 5, what="all entries applied")
        await eventually(lambda: len(primary.acks) == 6, what="an ack per apply and for the heartbeat")
    assert sink.calls == [[1], [2], [3], [4], [5]]
    assert primary.acks == [1, 2, 2, 3, 4, 5]


async def test_a_bad_frame_ends_the_session_after_the_frames_before_it(harness: Harness, ca: ClusterCA,
                                                                        sink: CountingSink) -> None:
    # The third frame's epoch goes backwards, the fourth repeats an index: neither is merged.
    script = [Welcome("L1", 5, False), Wal(5, (entry(1),)), Wal(5, (entry(2),)), Wal(4, (entry(3),)),
              Wal(5, (entry(4),))]
    async with ScriptedPrimary(ca, script) as primary:
        client = harness.client(sink, [primary.addr])
        harness.run(client)
        await asyncio.wait_for(primary.closed.wait(), 5)
        await eventually(lambda: "epoch went backwards" in client.status().last_error, what="session failure")
    assert sink.calls[0] == [1, 2]
    assert sink.remote_index == 2 and 3 not in sink.received
    assert primary.acks[:1] == [2]
