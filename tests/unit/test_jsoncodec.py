"""vaultraft.jsoncodec: orjson's speed with json's results, for every JSON value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultraft import jsoncodec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_then_json_loads_gives_the_value_back(value: object) -> None:
    assert json.loads(jsoncodec.dumps(value)) == value


@given(json_values)
def test_loads_reads_what_json_dumps_wrote(value: object) -> None:
    text = json.dumps(value)
    assert jsoncodec.loads(text) == value
    assert jsoncodec.loads(text.encode()) == value


def test_integers_beyond_64_bits_keep_every_digit() -> None:
    big = 2**100 + 1
    assert jsoncodec.loads(f'{{"n": {big}}}'.encode()) == {"n": big}
    assert jsoncodec.loads(jsoncodec.dumps({"n": -big})) == {"n": -big}


@pytest.mark.parametrize("n", [
    10**18, 10**19 - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**20,
    -(2**63), -(2**63) - 1, -(10**19) + 1, -(10**19),
])
def test_integers_at_the_64_bit_boundaries_stay_integers(n: int) -> None:
    doc = f'{{"n": {n}, "ns": [1763900000000000000, {n}]}}'
    value = jsoncodec.loads(doc.encode())
    assert value == {"n": n, "ns": [1763900000000000000, n]}
    assert type(value["n"]) is int


def test_what_only_the_standard_library_reads_still_reads() -> None:
    assert math.isnan(jsoncodec.loads(b'{"a": NaN}')["a"])
    assert jsoncodec.loads('{"s": "\\ud800"}') == {"s": "\ud800"}


def test_bad_documents_raise_what_json_raises() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(b"{bad")
    with pytest.raises(ValueError):
        jsoncodec.loads(b"")
    with pytest.raises(UnicodeDecodeError):
        jsoncodec.loads(b"\xff\xfe{")


def test_int_keys_are_written_as_strings_and_unknown_types_use_default() -> None:
    assert json.loads(jsoncodec.dumps({1: "x"})) == {"1": "x"}
    with pytest.raises(TypeError):
        jsoncodec.dumps({"x": object()})
    assert json.loads(jsoncodec.dumps({"x": object()}, default=lambda o: "obj")) == {"x": "obj"}


def test_output_is_compact_utf8() -> None:
    assert jsoncodec.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
