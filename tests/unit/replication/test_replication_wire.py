"""Frames and message schemas of the replication protocol."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from vaultraft.replication.server import filter_local
from vaultraft.replication.wire import (
    Ack,
    BulkBegin,
    BulkChunk,
    BulkEnd,
    DigestReply,
    DigestRequest,
    Error,
    Heartbeat,
    Hello,
    Message,
    PeerClosed,
    Redirect,
    Wal,
    Welcome,
    WireError,
    decode_message,
    encode_message,
    format_addr,
    pack,
    parse_addr,
    read_frame,
    read_message,
    unpack,
    write_message,
)
from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.wal import WalEntry

ALL_MESSAGES: list[Message] = [
    Hello("sec-a", "performance", "L1", 42, True),
    Welcome("L1", 3, False),
    Redirect("[::1]:8201"),
    Error("unauthorized", "unknown or revoked secondary"),
    BulkBegin("L1", 9),
    BulkChunk((("a", b"\x00\xff"), ("b/c", b""))),
    BulkEnd(9),
    Wal(3, (WalEntry(10, 1700000000000, (b"batch",)), WalEntry(12, 1700000000001, ()))),
    Heartbeat(12, 3, 1700000000.25),
    Ack(12),
    DigestRequest(1),
    DigestReply(1, 12, "ab" * 32),
]


def reader_with(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def frame_of(obj: Any) -> bytes:
    body = pack(obj)
    return len(body).to_bytes(4, "big") + body


class FakeWriter:
    """Collects written bytes (the StreamWriter surface write_frame uses)."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: m.TYPE)
async def test_every_message_round_trips_through_a_frame(msg: Message) -> None:
    writer = FakeWriter()
    await write_message(writer, msg)  # type: ignore[arg-type]
    assert await read_message(reader_with(writer.data)) == msg


async def test_large_frames_round_trip_off_the_loop() -> None:
    msg = BulkChunk(tuple((f"k{i}", b"x" * 4096) for i in range(400)))  # ~1.6 MiB
    writer = FakeWriter()
    await write_message(writer, msg)  # type: ignore[arg-type]
    assert await read_message(reader_with(writer.data)) == msg


async def test_oversized_header_is_rejected_before_the_body() -> None:
    reader = reader_with((33 << 20).to_bytes(4, "big"), eof=False)  # no body ever comes
    with pytest.raises(WireError):
        await asyncio.wait_for(read_frame(reader), 1)
    small = reader_with(frame_of(encode_message(BulkChunk((("k", b"v" * 100),)))), eof=False)
    with pytest.raises(WireError):
        await read_frame(small, max_frame_bytes=64)


async def test_oversized_message_is_not_written() -> None:
    writer = FakeWriter()
    with pytest.raises(WireError):
        await write_message(writer, BulkChunk((("k", b"v" * 1000),)), max_frame_bytes=512)  # type: ignore[arg-type]
    assert writer.data == b""


async def test_empty_frame_and_eof() -> None:
    with pytest.raises(WireError):
        await read_frame(reader_with(b"\x00\x00\x00\x00"))
    with pytest.raises(PeerClosed):
        await read_frame(reader_with(b""))
    with pytest.raises(PeerClosed):
        await read_frame(reader_with(b"\x00\x00\x00\x10abc"))  # closed inside a frame


@pytest.mark.parametrize("body", [
    b"\xc1",  # reserved byte
    b"\x92\x01",  # truncated array
    pack([1, "ack", {"remote_index": 1}]) + b"\x00",  # trailing bytes
    msgpack.packb(msgpack.ExtType(5, b"x")),  # extension type
    msgpack.packb([1, "ack", {"remote_index": msgpack.Timestamp(0)}]),  # timestamp extension
    b"\xa2\xff\xfe",  # invalid UTF-8 string
])
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(WireError):
        decode_message(unpack(body))


@pytest.mark.parametrize("obj", [
    None, 1, "hello", {"type": "ack"}, [], [1, "ack"],
    [2, "ack", {"remote_index": 1}],  # unknown version
    [True, "ack", {"remote_index": 1}],  # bool is not a version
    [1, "nope", {}],  # unknown type
    [1, b"ack", {"remote_index": 1}],
    [1, "ack", {}],  # missing field
    [1, "ack", {"remote_index": 1, "more": 2}],  # extra field
    [1, "ack", {"remote_index": -1}],
    [1, "ack", {"remote_index": True}],
    [1, "ack", {"remote_index": 1.0}],
    [1, "ack", {"remote_index": 1 << 63}],
    [1, "hello", {"secondary_id": "", "mode": "dr", "lineage": "", "remote_index": 0, "complete": False}],
    [1, "hello", {"secondary_id": "s", "mode": "both", "lineage": "", "remote_index": 0, "complete": False}],
    [1, "hello", {"secondary_id": "s" * 2000, "mode": "dr", "lineage": "", "remote_index": 0, "complete": False}],
    [1, "hello", {"secondary_id": "s", "mode": "dr", "lineage": "", "remote_index": 0, "complete": 0}],
    [1, "wal", {"epoch": 1, "entries": []}],
    [1, "wal", {"epoch": 1, "entries": [[2, 0, []], [2, 0, []]]}],  # not increasing
    [1, "wal", {"epoch": 1, "entries": [[0, 0, []]]}],  # index 0
    [1, "wal", {"epoch": 1, "entries": [[1, 0, ["text"]]]}],  # batches are bytes
    [1, "wal", {"epoch": 1, "entries": [[1, 0]]}],
    [1, "bulk_chunk", {"items": [["", b"v"]]}],  # empty key
    [1, "bulk_chunk", {"items": [["k", "v"]]}],  # value must be bytes
    [1, "bulk_chunk", {"items": [["k" * 5000, b"v"]]}],  # key too long
    [1, "bulk_chunk", {"items": {"k": b"v"}}],
    [1, "digest_reply", {"request_id": 1, "index": 1, "root": "XYZ"}],
    [1, "heartbeat", {"applied_index": 1, "epoch": 1, "time": "now"}],
])
def test_malformed_messages(obj: Any) -> None:
    with pytest.raises(WireError):
        decode_message(obj)


def test_unencodable_message() -> None:
    with pytest.raises(WireError):
        pack([object()])


def test_addresses() -> None:
    assert parse_addr("10.0.0.1:8201") == ("10.0.0.1", 8201)
    assert parse_addr("[::1]:8201") == ("::1", 8201)
    assert parse_addr("vault-a.example:443") == ("vault-a.example", 443)
    assert format_addr("::1", 8201) == "[::1]:8201" and format_addr("h", 1) == "h:1"
    for bad in ("", "host", "host:", ":80", "host:0", "host:65536", "host:http", "host:-1"):
        with pytest.raises(ValueError):
            parse_addr(bad)


def test_filter_local_drops_local_ops_and_keeps_entries() -> None:
    shared = Batch((Op.put("a", b"1"),), b"r1").encode()
    mixed = Batch((Op.put("b", b"2"), Op.delete("t", local=True)), b"r2").encode()
    local = Batch((Op.put("t", b"3", local=True),)).encode()
    entries = [WalEntry(1, 5, (shared,)), WalEntry(2, 6, (mixed, local)), WalEntry(4, 7, (local,))]
    out = filter_local(entries)
    assert out[0] is entries[0]  # untouched entries are passed through as they are
    assert [e.index for e in out] == [1, 2, 4] and [e.ts_ms for e in out] == [5, 6, 7]
    assert [Batch.decode(b) for b in out[1].batches] == [Batch((Op.put("b", b"2"),), b"r2")]
    assert out[2].batches == ()
