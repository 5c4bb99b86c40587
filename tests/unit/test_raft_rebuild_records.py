"""Journal records are read for a rebuild without unpickling: only the exact call shape
pysyncobj writes for our one replicated method is accepted."""

from __future__ import annotations

import pickle

import pytest
import pysyncobj.pickle as pysyncobj_pickle

import vaultraft.raft.node  # noqa: F401  (sets pysyncobj's pickle protocol, as the server does)
from vaultraft.raft.rebuild import _our_command


@pytest.mark.parametrize("size", [0, 3, 300, 70_000])
def test_a_call_of_apply_command_gives_its_bytes(size: int) -> None:
    raw = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert _our_command(b"\x00" + pysyncobj_pickle.dumps((0, (raw,)))) == raw


def test_pysyncobj_entries_are_skipped() -> None:
    assert _our_command(b"\x01") is None  # its no-op
    assert _our_command(b"\x02" + pickle.dumps(["add", "127.0.0.1:1"])) is None  # membership
    assert _our_command(b"") is None


@pytest.mark.parametrize("payload", [
    (0, (b"cmd",), {"k": 1}),          # keyword arguments
    (0, ("text",)),                     # not bytes
    (0, (b"a", b"b")),                  # two arguments
    ("name", (b"cmd",)),                # not a method id
])
def test_any_other_shape_is_refused(payload: object) -> None:
    with pytest.raises(ValueError):
        _our_command(b"\x00" + pickle.dumps(payload, protocol=5))


def test_nothing_is_built_or_called() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("executed",))

    with pytest.raises(ValueError):
        _our_command(b"\x00" + pickle.dumps((0, (Boom(),)), protocol=5))
    with pytest.raises(ValueError):
        _our_command(b"\x00" + b"\x80\x05garbage")
