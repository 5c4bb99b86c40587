"""Storage batches: versioned msgpack round trips, and what a decoder must refuse."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultraft.storage.batch import MAX_KEY_BYTES, Batch, BatchDecodeError, Op

_keys = st.text(min_size=1, max_size=40)
_ops = st.one_of(st.builds(lambda k, v, loc: Op.put(k, v, local=loc), _keys, st.binary(max_size=64), st.booleans()),
                 st.builds(lambda k, loc: Op.delete(k, local=loc), _keys, st.booleans()))


@given(st.lists(_ops, max_size=6), st.binary(max_size=16))
def test_decode_gives_back_what_encode_wrote(ops: list[Op], rid: bytes) -> None:
    batch = Batch(tuple(ops), rid)
    assert Batch.decode(batch.encode()) == batch


@pytest.mark.parametrize("op", [
    [3, "k", b"v", False],  # unknown kind
    [True, "k", b"v", False],  # a bool is not a kind
    [1.0, "k", b"v", False],
    [1, "", b"v", False],  # empty key
    [1, "k" * (MAX_KEY_BYTES + 1), b"v", False],
    [1, "é" * (MAX_KEY_BYTES // 2 + 1), b"v", False],  # over the limit in UTF-8 bytes only
    [1, "k", None, False],  # a put without a value
    [2, "k", b"v", False],  # a delete with one
    [1, "k", b"v"],  # short
])
def test_malformed_operations_are_refused(op: list[object]) -> None:
    with pytest.raises(BatchDecodeError):
        Batch.decode(msgpack.packb([1, b"", [op]], use_bin_type=True))


def test_a_key_at_the_limit_in_utf8_bytes_is_accepted() -> None:
    key = "é" * (MAX_KEY_BYTES // 2)
    assert Batch.decode(Batch((Op.put(key, b"v"),)).encode()).ops[0].key == key
