"""THE safety property, by simulation: the holder's validity and a successful promotion never
overlap in real time.

A discrete-event simulation in real time drives the real LeaseVoter and LeaseHolder (through
``record_round``) for P (holder, epoch 1, voters S and W) and S (promotion candidate, asking
its own voter and W). Each party has its own monotonic clock running at a rate within
±RHO of real time (RHO chosen so that (1 - RHO) / (1 + RHO) >= 1 - DRIFT, the documented
assumption). Messages are delayed arbitrarily or lost, rounds overlap, voters restart (with
their clock starting anywhere), the holder restarts. Every validity window of the holder
(from a round's result to ``valid_until``, mapped to real time) must end no later than the
real time at which a promotion to a higher epoch got its deciding grant.
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, given, settings

from vaultraft.replication.fence import LeaseGrant, LeaseHolder, LeaseVoter

DRIFT = 0.1
RHO = 0.045  # (1 - RHO) / (1 + RHO) = 0.914 > 1 - DRIFT
DURATION = 1.0
ROUND = 0.6  # the holder stops waiting for replies after this long
EPOCH = 1


class _Unused:
    """Voter placeholders: the simulation delivers messages itself."""

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        raise AssertionError("not called")

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        raise AssertionError("not called")


@dataclass
class Sim:
    """Real time, an event queue, the parties and what was observed."""

    state_dir: str
    rates: dict[str, float]
    drift: float = DRIFT
    now: float = 0.0
    queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    voters: dict[str, LeaseVoter] = field(default_factory=dict)
    holder: LeaseHolder | None = None
    holder_offset: float = 0.0
    windows: list[tuple[int, float]] = field(default_factory=list)  # (epoch, real end)
    promotions: list[tuple[int, float]] = field(default_factory=list)  # (epoch, real decision time)
    seen_epoch: int = 0  # the highest epoch the candidate learnt from replies (request_promotion's highest_epoch)

    def __post_init__(self) -> None:
        for name in ("S", "W"):
            self.restart_voter(name, 0.0)
        self.restart_holder(123.0)

    def clock(self, rate: float, offset: float) -> Callable[[], float]:
        return lambda: offset + rate * self.now

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), fn))

    def advance(self, dt: float) -> None:
        until = self.now + dt
        while self.queue and self.queue[0][0] <= until:
            t, _, fn = heapq.heappop(self.queue)
            self.now = t
            fn()
        self.now = until

    # -- parties ---------------------------------------------------------------------------------

    def restart_voter(self, name: str, offset: float) -> None:
        self.voters[name] = LeaseVoter(os.path.join(self.state_dir, name), clock=self.clock(self.rates[name], offset),
                                       max_lease=DURATION)

    def restart_holder(self, offset: float) -> None:
        self.holder_offset = offset
        self.holder = LeaseHolder("P", EPOCH, DURATION, [_Unused(), _Unused()], drift=self.drift,
                                  clock=self.clock(self.rates["P"], offset))

    def renew(self, delays: tuple[float | None, ...]) -> None:
        holder, offset = self.holder, self.holder_offset
        assert holder is not None
        sent_at = self.clock(self.rates["P"], offset)()  # the holder clock when the round goes out
        replies: dict[str, LeaseGrant] = {}
        for name, to, back in (("S", delays[0], delays[1]), ("W", delays[2], delays[3])):
            if to is None:
                continue

            def deliver(name: str = name, back: float | None = back) -> None:
                grant = self.voters[name].renew("P", EPOCH, DURATION)
                if back is not None:
                    self.at(back, lambda: replies.__setitem__(name, grant))

            self.at(to, deliver)

        def complete() -> None:
            if holder.record_round(sent_at, [replies.get("S"), replies.get("W")]):
                assert holder.valid_until is not None
                self.windows.append((EPOCH, (holder.valid_until - offset) / self.rates["P"]))

        self.at(ROUND, complete)

    def promote(self, bump: int, to: float | None, back: float | None) -> None:
        epoch = max(self.voters["S"].epoch, self.seen_epoch) + bump  # bump 0: a stale attempt
        local = self.voters["S"].promote("S", epoch)
        local_at = self.now
        if to is None:
            return

        def deliver() -> None:
            remote = self.voters["W"].promote("S", epoch)
            remote_at = self.now
            if back is None:
                return

            def arrive() -> None:
                self.seen_epoch = max(self.seen_epoch, remote.epoch)
                if all(g.granted and g.epoch == epoch and g.holder == "S" for g in (local, remote)):
                    self.promotions.append((epoch, max(local_at, remote_at)))

            self.at(back, arrive)

        self.at(to, deliver)

    def violations(self) -> list[tuple[int, float, int, float]]:
        return [(e, end, pe, decided) for e, end in self.windows for pe, decided in self.promotions
                if pe > e and end > decided]


# Mostly prompt messages (so leases and promotions both happen), sometimes late or lost.
delay = st.one_of(st.just(0.0), st.floats(0, 0.2), st.floats(0, 0.2), st.floats(0, 0.2), st.floats(0, 2),
                  st.none())
renew = st.tuples(st.just("renew"), delay, delay, delay, delay)
restart = st.tuples(st.just("restart"), st.sampled_from(["S", "W"]), st.floats(0, 1e4))
step = st.one_of(renew, renew, renew,
                 st.tuples(st.just("advance"), st.floats(0, 0.6)),
                 restart,
                 st.tuples(st.just("restart_holder"), st.floats(0, 1e4)))
promote = st.tuples(st.just("promote"), st.sampled_from([0, 1, 1, 2]), delay, delay)
# A phase: lease activity, a quiet gap around the lease length (the interesting race), then
# promotion attempts, possibly interleaved with renewals and voter restarts.
phase = st.tuples(st.lists(step, min_size=1, max_size=8), st.floats(0.5, 1.5),
                  st.lists(st.one_of(promote, promote, renew, restart), max_size=4))
phases = st.lists(phase, min_size=1, max_size=5)
rate = st.one_of(st.sampled_from([1 - RHO, 1 + RHO]), st.floats(1 - RHO, 1 + RHO))  # extremes often


def flatten(script: list[tuple[list[tuple[Any, ...]], float, list[tuple[Any, ...]]]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [("advance", DURATION)]  # let most starts settle
    for steps, quiet, attempts in script:
        out += [*steps, ("advance", quiet)]
        for attempt in attempts:
            out += [attempt, ("advance", 0.1)]
    return out


def play(sim: Sim, script: list[tuple[Any, ...]]) -> None:
    for op, *args in script:
        if op == "advance":
            sim.advance(args[0])
        elif op == "renew":
            sim.renew(tuple(args))
        elif op == "promote":
            sim.promote(*args)
        elif op == "restart":
            sim.restart_voter(*args)
        else:
            sim.restart_holder(args[0])
    sim.advance(1000)  # deliver everything still in flight


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=phases, p=rate, s=rate, w=rate)
def test_holder_validity_never_overlaps_a_promotion(script: list[Any], p: float, s: float, w: float) -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as state_dir:
        sim = Sim(state_dir, {"P": p, "S": s, "W": w})
        play(sim, flatten(script))
        event("lease and promotion" if sim.windows and sim.promotions else
              "lease only" if sim.windows else "promotion only" if sim.promotions else "neither")
        assert sim.violations() == []


def scenario(drift: float) -> Sim:
    """P renews with W only (instantly), its clock slow and W's fast; S promotes as soon as W's
    grant has expired."""
    with tempfile.TemporaryDirectory() as state_dir:
        sim = Sim(state_dir, {"P": 1 - RHO, "S": 1.0, "W": 1 + RHO}, drift=drift)
        sim.advance(2 * DURATION)  # past the voters' start quarantine
        sim.renew((None, None, 0.0, 0.0))
        sim.advance(DURATION / (1 + RHO) + 0.001)  # W's grant just expired
        sim.promote(2, 0.0, 0.0)  # its own voter is at 0, W at 1
        sim.advance(10)
        return sim


def test_the_simulation_succeeds_both_ways_and_has_teeth() -> None:
    ok = scenario(DRIFT)
    assert ok.windows and ok.promotions and ok.violations() == []  # lease, then a promotion: both happen
    unsafe = scenario(0.0)  # without the drift margin the holder outlives W's grant
    assert unsafe.windows and unsafe.promotions and unsafe.violations()


@pytest.mark.parametrize(("p", "w"), [(1 - RHO, 1 + RHO), (1 + RHO, 1 - RHO), (1.0, 1.0)])
def test_promotion_racing_the_lease_expiry(p: float, w: float) -> None:
    """P renews through both voters every 0.3 s (delivered at once: no slack), then stops; S
    tries to promote at every 10 ms step around the end of the lease. Never an overlap; the
    promotion does succeed once the voters' grants have expired."""
    promoted_at = []
    gaps = [0.8 + 0.01 * i for i in range(41)]  # promotion starts ``gap`` after the last renewal
    for gap in gaps:
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as state_dir:
            sim = Sim(state_dir, {"P": p, "S": 1 + RHO, "W": w})
            sim.advance(2 * DURATION)
            for _ in range(4):
                sim.renew((0.0, 0.05, 0.0, 0.05))
                sim.advance(0.3)
            sim.advance(gap - 0.3)
            sim.promote(1, 0.05, 0.05)
            sim.advance(5)
            assert sim.windows and sim.violations() == []
            if sim.promotions:
                promoted_at.append(gap)
    # S's own voter (rate 1 + RHO) lets its grant go 1 / (1 + RHO) real seconds after the last
    # renewal; W (asked 0.05 s later) after 1 / w: from then on every attempt succeeds.
    assert promoted_at and promoted_at[0] <= max(1 / (1 + RHO), 1 / w - 0.05) + 0.01
    assert promoted_at == [g for g in gaps if g >= promoted_at[0]]


def test_a_restarted_voter_does_not_forget_a_lease_it_granted() -> None:
    """P's lease stands on W alone; W restarts (forgetting the grant) and S asks at once and
    every 50 ms: refused until one max lease after W's restart, by when P's lease is over."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as state_dir:
        sim = Sim(state_dir, {"P": 1 - RHO, "S": 1.0, "W": 1 + RHO})
        sim.advance(2 * DURATION)
        sim.renew((None, None, 0.0, 0.0))
        sim.advance(0.1)
        sim.restart_voter("W", 5000.0)
        for _ in range(30):
            sim.promote(1, 0.0, 0.0)
            sim.advance(0.05)
        sim.advance(5)
        assert sim.windows and sim.promotions and sim.violations() == []
