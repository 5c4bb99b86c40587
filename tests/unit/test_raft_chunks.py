"""Large log entries (pysyncobj's chunked AppendEntries): mislabelled chunks are relabelled by
content before pysyncobj sees them, and chunks that do not belong together are never joined."""

from __future__ import annotations

import hashlib
import pickle as std_pickle
import pickletools
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated

from vaultraft.raft.chunks import ChunkSequencer, PickleScanner
from vaultraft.raft.tls import ClusterCA
from vaultraft.raft.transport import TlsTransport, check_message, make_transport_class

BATCH = 64 << 10


def pysyncobj_chunks(entry: tuple[bytes, int, int], batch: int = BATCH, term: int = 3,
                     prev: tuple[int, int] = (9, 3)) -> list[dict[str, Any]]:
    """The messages pysyncobj 0.3.17's leader sends for one large entry (``__sendAppendEntries``)."""
    data = pysyncobj_pickle.dumps(entry)
    messages = []
    for pos in range(0, len(data), batch):
        if pos == 0:
            transmission = "start"
        elif pos + batch >= len(entry[0]):  # sic: the command's length, not the pickle's
            transmission = "finish"
        else:
            transmission = "process"
        messages.append({"type": "append_entries", "transmission": transmission, "data": data[pos:pos + batch],
                         "term": term, "commit_index": 1, "prevLogIdx": prev[0], "prevLogTerm": prev[1]})
    return messages


def pysyncobj_command(blob: bytes) -> bytes:
    """A log entry's command as pysyncobj builds it for ``@replicated`` ``method(blob)``."""
    return b"\x00" + bytes(pysyncobj_pickle.dumps((0, (blob,))))


class Receiver:
    """pysyncobj 0.3.17's receiving side of a transmission (``__onMessageReceived``)."""

    def __init__(self) -> None:
        self.buffer: Any = ""
        self.entries: list[Any] = []
        self.errors: list[str] = []

    def handle(self, message: dict[str, Any]) -> None:
        t = message["transmission"]
        try:
            if t == "start":
                self.buffer = message["data"]
            elif t == "process":
                self.buffer += message["data"]
            else:
                self.buffer += message["data"]
                self.entries.append(pysyncobj_pickle.loads(self.buffer))
                self.buffer = ""
        except Exception as e:  # noqa: BLE001 - what the transport catches and logs
            self.errors.append(type(e).__name__)


def relabelled(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seq = ChunkSequencer()
    out: list[dict[str, Any]] = []
    for m in messages:
        delivered, dropped = seq.deliver(m)
        assert dropped is None
        out += delivered
    return out


def entry_of(size: int, seed: int = 1) -> tuple[bytes, int, int]:
    return (pysyncobj_command(random.Random(seed).randbytes(size)), 10, 3)


# -- the scanner -----------------------------------------------------------------------------

SAMPLES: list[Any] = [
    (b"\x00\xff" * 300, 10, 3), "text é\n", 2 ** 70, -(2 ** 40), 1.5, None, True, [1, (2, 3), {"a": b"b"}],
    {1, 2}, frozenset({3}), bytearray(b"xy"), ValueError("v"), pickletools.OpcodeInfo, 255, 65536, -1,
]


@pytest.mark.parametrize("protocol", range(std_pickle.HIGHEST_PROTOCOL + 1))
def test_scanner_finds_the_end_of_every_pickle_and_never_of_a_prefix(protocol: int) -> None:
    rnd = random.Random(protocol)
    for obj in SAMPLES:
        data = std_pickle.dumps(obj, protocol=protocol)
        assert pickletools.genops(data)  # well-formed
        for cut in range(len(data)):
            scan = PickleScanner()
            scan.feed(data[:cut])
            assert (scan.end, scan.error) == (None, None), (obj, cut)
        scan = PickleScanner()
        pos = 0
        while pos < len(data):  # arbitrary chunking
            step = rnd.randint(1, 7)
            scan.feed(data[pos:pos + step])
            pos += step
        assert (scan.end, scan.error) == (len(data), None), obj


def test_scanner_refuses_what_is_not_one_pickle() -> None:
    data = std_pickle.dumps((b"x", 1, 2), protocol=2)
    for bad, why in [(data + b"\x80", "after the end"), (b"\xff", "unknown pickle opcode"),
                     (b"T\xff\xff\xff\xff", "negative length"), (b"c" + b"m" * (1 << 17), "overlong")]:
        scan = PickleScanner()
        scan.feed(bad)
        assert scan.error is not None and why in scan.error, bad[:10]
        assert scan.end is None or why == "after the end"


def test_scanner_skips_large_arguments_without_reading_them() -> None:
    data = pysyncobj_pickle.dumps(entry_of(4 << 20))
    scan = PickleScanner()
    t = time.perf_counter()
    for pos in range(0, len(data), 1 << 20):
        scan.feed(data[pos:pos + (1 << 20)])
    assert scan.end == len(data)
    assert time.perf_counter() - t < 0.05  # ~10 MiB: unpickling it takes ~50 ms


# -- pysyncobj's labels, and what the sequencer hands it ---------------------------------------

@pytest.fixture
def protocol2(monkeypatch: pytest.MonkeyPatch) -> None:
    """pysyncobj's own pickle protocol (vaultraft.raft.node sets 5; a node of an older
    vaultraft still sends protocol-2 entries, and the sequencer must handle both)."""
    monkeypatch.setattr(pysyncobj_pickle, "__protocol", 2)


@pytest.mark.usefixtures("protocol2")
def test_pysyncobj_labels_most_chunks_of_a_binary_entry_finish_and_its_receiver_fails_on_them() -> None:
    """The root cause of ``raft_message_handler_failed error=UnicodeDecodeError``: protocol 2
    pickles bytes as UTF-8 text, the pickled entry is ~1.67x the command the sender compares
    with, so several chunks say 'finish' and pysyncobj unpickles each truncated buffer."""
    entry = entry_of(300_000)
    messages = pysyncobj_chunks(entry)
    labels = [m["transmission"] for m in messages]
    assert labels.count("finish") >= 3
    plain = Receiver()
    for m in messages:
        plain.handle(m)
    assert plain.entries == [entry]  # the last chunk still completes the entry...
    assert len(plain.errors) == labels.count("finish") - 1  # ...after an exception per mislabelled one
    assert "UnicodeDecodeError" in plain.errors

    fixed = relabelled(messages)
    assert [m["transmission"] for m in fixed] == ["start"] + ["process"] * (len(messages) - 2) + ["finish"]
    assert [m["data"] for m in fixed] == [m["data"] for m in messages]
    receiver = Receiver()
    for m in fixed:
        assert check_message(m) is None
        receiver.handle(m)
    assert (receiver.entries, receiver.errors) == ([entry], [])


@pytest.mark.parametrize("size", [BATCH - 40, BATCH, 3 * BATCH + 17, 1 << 20])
def test_every_size_is_delivered_exactly_once(size: int) -> None:
    entry = (b"\x00" + b"\x7f" * size, 5, 2) if size % 2 else entry_of(size, seed=size)
    receiver = Receiver()
    for m in relabelled(pysyncobj_chunks(entry)):
        receiver.handle(m)
    assert (receiver.entries, receiver.errors) == ([entry], [])


def test_an_entry_in_one_chunk_gets_a_finish() -> None:
    entry = entry_of(100)
    data = pysyncobj_pickle.dumps(entry)
    start = {"type": "append_entries", "transmission": "start", "data": data, "term": 1, "commit_index": 0,
             "prevLogIdx": 1, "prevLogTerm": 1}
    out = relabelled([start])
    assert [m["transmission"] for m in out] == ["start", "finish"]
    receiver = Receiver()
    for m in out:
        receiver.handle(m)
    assert receiver.entries == [entry]


def test_chunks_that_do_not_belong_together_are_never_joined() -> None:
    a, b = pysyncobj_chunks(entry_of(200_000, 1)), pysyncobj_chunks(entry_of(200_000, 2), term=4, prev=(10, 4))
    seq = ChunkSequencer()
    assert seq.deliver(a[1]) == ([], "a large-entry chunk that continues no transmission")  # no start
    assert seq.deliver(a[0])[0] == [a[0]]
    assert seq.deliver(b[1])[0] == []  # another term / log position
    assert seq.deliver(b[0])[0] == [b[0]]  # a start always begins anew
    assert seq.deliver(a[2])[0] == []
    regular = {"type": "append_entries", "term": 4, "commit_index": 1, "prevLogIdx": 10, "prevLogTerm": 4,
               "entries": ()}
    assert seq.deliver(regular) == ([regular], None)  # the leader moved on
    assert seq.deliver(b[1])[0] == []
    # a complete transmission ends with the chunk that completes it
    out = relabelled(b)
    assert out[-1]["transmission"] == "finish"
    seq = ChunkSequencer()
    for m in b:
        seq.deliver(m)
    assert seq.deliver(b[-1])[0] == []


def test_a_pickle_with_bytes_after_its_end_is_dropped() -> None:
    entry = pysyncobj_pickle.dumps(entry_of(150_000))
    data = entry + b"\x80\x02K\x01."  # a second pickle behind the first: pickle.loads ignores it
    seq = ChunkSequencer()
    base = {"type": "append_entries", "term": 1, "commit_index": 0, "prevLogIdx": 1, "prevLogTerm": 1}
    cut = len(entry) - 2
    assert seq.deliver({**base, "transmission": "start", "data": data[:cut]})[1] is None
    assert seq.deliver({**base, "transmission": "finish", "data": data[cut:]}) == (
        [], "bytes after the end of the pickle")


@pytest.mark.usefixtures("protocol2")
def test_a_mislabelled_finish_alone_never_yields_an_entry() -> None:
    """Without the sequencer, pysyncobj unpickles truncated buffers: check that no strict
    prefix of a chunked entry ever loads (so it cannot apply a wrong entry, only raise), and
    that the buffer it keeps after raising is completed by the real last chunk (above)."""
    entry = (pysyncobj_command(random.Random(3).randbytes(400) + bytes(range(256))), 2 ** 40, 7)
    data = pysyncobj_pickle.dumps(entry)
    errors = set()
    for cut in range(len(data)):
        try:
            pysyncobj_pickle.loads(data[:cut])
        except Exception as e:  # noqa: BLE001
            errors.add(type(e).__name__)
        else:
            raise AssertionError(f"a {cut}-byte prefix of a {len(data)}-byte entry unpickled")
    assert "UnicodeDecodeError" in errors
    assert pysyncobj_pickle.loads(data) == entry


# -- through the TLS transport, with pysyncobj on both ends ------------------------------------

class Blobs(SyncObj):  # type: ignore[misc]
    """Replicates blobs; keeps their digests."""

    def __init__(self, addr: str, others: list[str], transport: type[TlsTransport]) -> None:
        conf = SyncObjConf(autoTick=True, raftMinTimeout=0.2, raftMaxTimeout=0.5, appendEntriesPeriod=0.05,
                           connectionRetryTime=0.2, appendEntriesBatchSizeBytes=BATCH)
        super().__init__(addr, others, conf=conf, transportClass=transport)
        self.digests: list[str] = []

    @replicated  # type: ignore[untyped-decorator]
    def put(self, blob: bytes) -> int:
        self.digests.append(hashlib.sha256(blob).hexdigest())
        return len(self.digests)


class Observed:
    """What pysyncobj is handed by the transport, and what it raised."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[str] = []
        self.received: list[str] = []
        self.errors: list[str] = []

    def wrap(self, cls: type[TlsTransport]) -> type[TlsTransport]:
        obs = self

        class Watched(cls):  # type: ignore[valid-type,misc]
            def send(self, node: Any, message: Any) -> bool:
                if isinstance(message, dict) and "transmission" in message:
                    with obs.lock:
                        obs.sent.append(message["transmission"])
                return bool(super().send(node, message))

            def _onMessageReceived(self, node: Any, message: Any) -> None:
                if isinstance(message, dict) and "transmission" in message:
                    with obs.lock:
                        obs.received.append(message["transmission"])
                try:
                    super()._onMessageReceived(node, message)
                except Exception as e:
                    with obs.lock:
                        obs.errors.append(type(e).__name__)
                    raise

        return Watched


@pytest.fixture
def pair() -> Iterator[Callable[[Observed], list[Blobs]]]:
    started: list[Blobs] = []

    def start(obs: Observed) -> list[Blobs]:
        ca = ClusterCA.create("chunks")
        addrs = []
        socks = [socket.socket() for _ in range(2)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
            addrs.append(f"127.0.0.1:{s.getsockname()[1]}")
        for s in socks:
            s.close()
        for a in addrs:
            started.append(Blobs(a, [b for b in addrs if b != a], obs.wrap(make_transport_class(ca.issue(a)))))
        return started

    yield start
    for node in started:
        node.destroy()


@pytest.mark.parametrize("protocol", [2, 5])
def test_large_binary_entries_reach_a_follower_without_handler_failures(
        pair: Callable[[Observed], list[Blobs]], protocol: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pysyncobj_pickle, "__protocol", protocol)
    obs = Observed()
    nodes = pair(obs)
    deadline = time.monotonic() + 5
    while not any(n._isLeader() for n in nodes) or not all(n._getLeader() for n in nodes):
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.02)
    leader = next(n for n in nodes if n._isLeader())
    rnd = random.Random(11)
    blobs = [rnd.randbytes(n) for n in (200_000, 70_000, 3 * BATCH)]
    for blob in blobs:
        leader.put(blob, sync=True, timeout=5)
    want = [hashlib.sha256(b).hexdigest() for b in blobs]
    deadline = time.monotonic() + 5
    while not all(n.digests == want for n in nodes):
        assert time.monotonic() < deadline, [n.digests for n in nodes]
        time.sleep(0.02)
    with obs.lock:
        if protocol == 2:
            assert obs.sent.count("finish") > 2 * len(blobs)  # pysyncobj did mislabel chunks...
        assert obs.errors == []  # ...yet it never raised on one
        assert obs.received.count("finish") == obs.received.count("start") >= len(blobs)
