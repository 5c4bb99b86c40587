"""Large log entries: pysyncobj 0.3.17's chunked AppendEntries, labelled by what they hold.

A log entry whose command is at least ``appendEntriesBatchSizeBytes`` is sent as the chunks of
``pickle.dumps(entry)`` (protocol 2), each in an ``append_entries`` message whose
``transmission`` is ``start``, ``process`` or ``finish``. The receiver concatenates them and
unpickles the buffer on every ``finish``. pysyncobj's sender labels a chunk ``finish`` when
``pos + batch >= len(command)``: it compares with the *command*, not with the pickled entry,
and protocol 2 pickles ``bytes`` as their latin-1 text encoded as UTF-8, so the pickled
entry is up to twice the command (~1.67x for a command holding ciphertext). The last ~40 %
of the chunks of every chunked entry thus say ``finish``; the receiver unpickles each
truncated prefix, ``pysyncobj.pickle.loads`` retries with the pure-Python unpickler, and that
raises (UnicodeDecodeError when the cut splits a UTF-8 sequence, else EOFError,
struct.error, ...). Only the real last chunk completes the entry.

:class:`ChunkSequencer` sits in front of pysyncobj (one per connection) and relabels each
chunk by content: ``finish`` exactly when the chunks so far form one complete pickle
(:class:`PickleScanner` follows the opcode stream and builds no objects), ``process``
otherwise. It also never lets pysyncobj join chunks that do not belong together: a
``process`` or ``finish`` is delivered only after a ``start`` on the same connection with the
same term and previous log position, a transmission ends with the chunk that completes it,
and one with bytes after the pickle's end or an unknown opcode is dropped.
"""

from __future__ import annotations

import pickletools
from typing import Any

__all__ = ["ChunkSequencer", "PickleScanner"]

_STOP = ord(".")
_NEWLINE = ord("\n")
_MAX_LINE = 1 << 16  # text arguments (GLOBAL's module and name...) are short

#: opcode byte -> (fixed header bytes after the opcode, or a negative pickletools length kind;
#: newlines ending a text argument). From pickletools' table, so every protocol (0-5) is known.
_OPCODES: dict[int, tuple[int, int]] = {
    ord(op.code): (0 if op.arg is None else op.arg.n,
                   2 if op.arg is not None and op.arg.name == "stringnl_noescape_pair" else 1)
    for op in pickletools.opcodes
}
_LENGTH_FIELD = {  # length-prefixed argument: (bytes of the length field, signed)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


class PickleScanner:
    """Finds where a pickle ends while its bytes arrive, without keeping or decoding them.

    It walks the opcode stream (each opcode's argument length comes from pickletools'
    table) and skips argument bytes, so a multi-MiB string costs O(1); nothing is imported,
    called or built. ``end`` is the length of the pickle once its STOP opcode was fed;
    ``error`` says why the bytes are not one pickle (an unknown opcode, a negative length, an
    overlong text argument, bytes after STOP). A strict prefix of a pickle never reaches STOP:
    parsing stays in step with the full stream and STOP is its last byte.
    """

    def __init__(self) -> None:
        self.fed = 0
        self.end: int | None = None
        self.error: str | None = None
        self._skip = 0  # argument bytes still to skip
        self._head = bytearray()  # the opcode being read: opcode byte + length field or text

    def feed(self, data: bytes) -> None:
        """Scan the next bytes."""
        pos, size, base = 0, len(data), self.fed
        self.fed += size
        while pos < size and self.error is None:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                continue
            if self.end is not None:
                self.error = "bytes after the end of the pickle"
                break
            if not self._head:
                opcode = data[pos]
                pos += 1
                if opcode not in _OPCODES:
                    self.error = "unknown pickle opcode"  # (its value is replicated data: not logged)
                    break
                self._head.append(opcode)
                if _OPCODES[opcode][0] == 0:  # no argument
                    self._done(0, base + pos)
                continue
            kind, lines = _OPCODES[self._head[0]]
            if kind == pickletools.UP_TO_NEWLINE:
                nl = data.find(b"\n", pos)
                stop = size if nl < 0 else nl + 1
                self._head += data[pos:stop]
                pos = stop
                if len(self._head) > _MAX_LINE:
                    self.error = "overlong text argument in pickle"
                elif nl >= 0 and self._head.count(_NEWLINE) == lines:
                    self._done(0, base + pos)
                continue
            field, signed = _LENGTH_FIELD.get(kind, (kind, False))
            take = min(1 + field - len(self._head), size - pos)
            self._head += data[pos:pos + take]
            pos += take
            if len(self._head) < 1 + field:
                continue
            length = int.from_bytes(self._head[1:], "little", signed=signed) if kind < 0 else 0
            if length < 0:
                self.error = "negative length in pickle"
                break
            self._done(length, base + pos)

    def _done(self, skip: int, offset: int) -> None:
        if self._head[0] == _STOP:
            self.end = offset
        self._skip = skip
        self._head = bytearray()


class ChunkSequencer:
    """One connection's chunked entry in progress.

    :meth:`deliver` takes each well-formed ``append_entries`` message with ``prevLogIdx``
    from the connection, in order, and returns what to hand pysyncobj instead: the messages
    (``transmission`` corrected), and why a chunk was dropped. It keeps no copy of the data.
    """

    def __init__(self) -> None:
        self._key: tuple[int, int, int] | None = None
        self._scan = PickleScanner()

    def reset(self) -> None:
        """Forget the entry in progress."""
        self._key = None
        self._scan = PickleScanner()

    def deliver(self, message: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """``(messages for pysyncobj, reason a chunk was dropped or None)``."""
        transmission = message.get("transmission")
        if transmission is None:
            self.reset()  # the leader moved on (a 0.3.17 leader never interleaves)
            return [message], None
        key = (message["term"], message["prevLogIdx"], message["prevLogTerm"])
        if transmission == "start":
            self.reset()
            self._key = key
        elif self._key != key:
            return [], "a large-entry chunk that continues no transmission"
        scan = self._scan
        scan.feed(message["data"])
        if scan.error is not None:
            self.reset()  # pysyncobj keeps its partial buffer; only a new start continues
            return [], scan.error
        complete = scan.end is not None
        if complete:
            self.reset()
        if transmission == "start":
            # pysyncobj unpickles only on a finish: an entry in one chunk needs an empty one
            return ([message, {**message, "transmission": "finish", "data": b""}] if complete else [message]), None
        label = "finish" if complete else "process"
        return [message if transmission == label else {**message, "transmission": label}], None
