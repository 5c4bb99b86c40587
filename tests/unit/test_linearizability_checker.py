"""The single-register linearizability checker used by the system tests (tests/system).

Handcrafted histories that must pass and that must fail, then a cross-check against an
exhaustive (Wing & Gong style) search on many small random histories.
"""

from __future__ import annotations

import math
import random
import sys
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from linearizability import Op, check_register  # noqa: E402  (tests/system is not a package)


def W(value: str, invoke: float, complete: float | None) -> Op:
    return Op("write", value, invoke, complete)


def R(value: str | None, invoke: float, complete: float) -> Op:
    return Op("read", value, invoke, complete)


def rules(history: Sequence[Op], initial: str | None = None) -> list[str]:
    return [v.rule for v in check_register(history, initial)]


# ---- histories that are linearizable ----------------------------------------------------------

PASSING = {
    "empty": [],
    "sequential": [W("a", 0, 1), R("a", 2, 3), W("b", 4, 5), R("b", 6, 7)],
    "read of the initial value before any write": [R(None, 0, 1), W("a", 2, 3), R("a", 4, 5)],
    "read overlapping a write may see the old value": [W("a", 0, 1), W("b", 2, 6), R("a", 3, 4), R("b", 7, 8)],
    "read overlapping a write may see the new value": [W("a", 0, 1), W("b", 2, 6), R("b", 3, 4), R("b", 5, 5.5)],
    "concurrent writes, reads agree on one order": [W("a", 0, 5), W("b", 0, 5), R("b", 1, 2), R("a", 3, 4),
                                                     R("a", 6, 7)],
    "unknown-outcome write never seen": [W("a", 0, 1), W("b", 2, None), R("a", 3, 4), R("a", 9, 10)],
    "unknown-outcome write seen later": [W("a", 0, 1), W("b", 2, None), R("a", 3, 4), R("b", 9, 10),
                                         R("b", 11, 12)],
    "read concurrent with the write it sees": [R("a", 0, 3), W("a", 1, 2)],
    "failover gap: slow write, old value until it lands": [W("a", 0, 1), R("a", 2, 3), W("b", 2.5, 9),
                                                           R("a", 4, 5), R("b", 8, 8.5), R("b", 10, 11)],
}


@pytest.mark.parametrize("name", sorted(PASSING))
def test_linearizable_histories_pass(name: str) -> None:
    assert check_register(PASSING[name]) == []


# ---- histories that are not ---------------------------------------------------------------------

FAILING = {
    # an acknowledged write that a read starting after it completed does not see
    "stale read after an acknowledged write": ([W("a", 0, 1), W("b", 2, 3), R("a", 4, 5)], "stale-read"),
    "lost write: initial value read after a write completed": ([W("a", 0, 1), R(None, 2, 3)], "stale-read"),
    # a read returns a value older than one a completed read already returned
    "read goes back in time": ([W("a", 0, 1), W("b", 2, 10), R("b", 3, 4), R("a", 5, 6)], "hidden-value"),
    "same, with the newer write of unknown outcome": ([W("a", 0, 1), W("b", 2, None), R("b", 3, 4),
                                                       R("a", 5, 6)], "hidden-value"),
    "two values alternate": ([W("a", 0, 1), W("b", 0, 1), R("a", 2, 3), R("b", 4, 5), R("a", 6, 7)],
                             "overlapping-values"),
    "read of a value nobody wrote": ([W("a", 0, 1), R("zzz", 2, 3)], "phantom"),
    "read from the future": ([R("a", 0, 1), W("a", 2, 3)], "future-read"),
    "deposed leader serves its old value": ([W("a", 0, 1), R("a", 1.5, 2), W("b", 3, 4), R("b", 4.5, 5),
                                             R("a", 6, 7)], "overlapping-values"),
}


@pytest.mark.parametrize("name", sorted(FAILING))
def test_non_linearizable_histories_fail(name: str) -> None:
    history, rule = FAILING[name]
    found = check_register(history)
    assert found, f"{name}: accepted a non-linearizable history"
    assert rule in [v.rule for v in found]
    assert all(v.ops for v in found)
    assert str(found[0])  # printable for a failure message


def test_initial_value_is_configurable() -> None:
    assert check_register([R("x0", 0, 1), W("a", 2, 3), R("a", 4, 5)], initial="x0") == []
    assert rules([W("a", 0, 1), R("x0", 2, 3)], initial="x0") == ["stale-read"]


def test_duplicate_write_values_are_rejected() -> None:
    with pytest.raises(ValueError):
        check_register([W("a", 0, 1), W("a", 2, 3)])


def test_many_concurrent_writes_and_a_violation_deep_inside() -> None:
    history = []
    for i in range(500):
        history += [W(f"v{i}", 10 * i, 10 * i + 3), R(f"v{i}", 10 * i + 4, 10 * i + 5)]
    assert check_register(history) == []
    history.append(R("v100", 10 * 300, 10 * 300 + 1))  # v100 read long after v101.. were acknowledged
    found = check_register(history)
    assert {v.rule for v in found} == {"overlapping-values"}
    assert all("'v100'" in v.message for v in found)


# ---- cross-check against an exhaustive search ------------------------------------------------------


def brute_force(history: Sequence[Op], initial: str | None = None) -> bool:
    """Wing & Gong: try every order that respects real time; unknown writes are optional."""
    ops = [o for o in history if o.kind == "write" or o.complete is not None]
    end = [math.inf if o.complete is None else o.complete for o in ops]
    required = frozenset(i for i, o in enumerate(ops) if o.complete is not None)

    @lru_cache(maxsize=None)
    def search(done: frozenset[int], value: str | None) -> bool:
        if required <= done:
            return True
        remaining = [i for i in range(len(ops)) if i not in done]
        horizon = min(end[i] for i in remaining)
        for i in remaining:
            o = ops[i]
            if o.invoke > horizon:  # some remaining op completed before this one began
                continue
            if o.kind == "read":
                if o.value == value and search(done | {i}, value):
                    return True
            elif search(done | {i}, o.value):
                return True
        return False

    return search(frozenset(), initial)


def _random_history(rng: random.Random, n: int) -> list[Op]:
    times = list(range(2 * n))
    rng.shuffle(times)  # distinct instants: no ties between any two events
    history: list[Op] = []
    written: list[str] = []
    for i in range(n):
        a, b = sorted(times[2 * i: 2 * i + 2])
        if rng.random() < 0.5:
            written.append(f"v{i}")
            history.append(W(f"v{i}", a, None if rng.random() < 0.2 else b))
        else:
            history.append(R(rng.choice([None, *written, *written]) if rng.random() < 0.9 else "ghost", a, b))
    return history


def test_agrees_with_exhaustive_search_on_random_histories() -> None:
    rng = random.Random(1234)
    verdicts = {True: 0, False: 0}
    for _ in range(3000):
        h = _random_history(rng, rng.randint(1, 7))
        expected = brute_force(h)
        assert (check_register(h) == []) == expected, h
        verdicts[expected] += 1
    assert verdicts[True] > 300 and verdicts[False] > 300, verdicts


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    n = draw(st.integers(1, 7))
    times = draw(st.permutations(list(range(2 * n))))
    history: list[Op] = []
    written: list[str] = []
    for i in range(n):
        a, b = sorted(times[2 * i: 2 * i + 2])
        if draw(st.booleans()):
            written.append(f"v{i}")
            history.append(W(f"v{i}", a, None if draw(st.integers(0, 4)) == 0 else b))
        else:
            history.append(R(draw(st.sampled_from([None, *written])), a, b))
    return history


@settings(max_examples=200, deadline=None)
@given(histories())
def test_agrees_with_exhaustive_search_hypothesis(h: list[Op]) -> None:
    assert (check_register(h) == []) == brute_force(h)
