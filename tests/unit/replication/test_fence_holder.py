"""LeaseHolder: majority counting, leases measured from the send time with the drift margin,
expiry, fencing by a higher epoch, slow and failing voters, the run loop and on_change;
request_promotion and StreamVoter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection

import pytest
from harness import eventually

from vaultraft.replication import fence
from vaultraft.replication.fence import (
    LeaseGrant,
    LeaseHolder,
    LeaseVoter,
    LocalVoter,
    StreamVoter,
    VoterUnavailable,
    request_promotion,
)
from vaultraft.replication.wire import ThrottledLog


@pytest.fixture(autouse=True)
def unthrottled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fence, "_throttled", ThrottledLog(0))


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeVoter:
    """Answers with ``answer`` (a grant, an exception to raise, or a callable of the request),
    after ``delay`` fake seconds (advancing the clock) or ``sleep`` real seconds."""

    def __init__(self, answer: LeaseGrant | BaseException | Callable[[str, int, float], LeaseGrant],
                 clock: FakeClock | None = None, delay: float = 0.0, sleep: float = 0.0) -> None:
        self.answer = answer
        self.clock = clock
        self.delay = delay
        self.sleep = sleep
        self.calls: list[tuple[str, int, float]] = []
        self.promotions: list[tuple[str, int]] = []

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        self.calls.append((holder, epoch, duration))
        if self.clock is not None:
            self.clock.now += self.delay
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if isinstance(self.answer, BaseException):
            raise self.answer
        if callable(self.answer):
            return self.answer(holder, epoch, duration)
        return self.answer

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        self.promotions.append((candidate, new_epoch))
        if isinstance(self.answer, BaseException):
            raise self.answer
        if self.sleep:
            await asyncio.sleep(self.sleep)
        return LeaseGrant(True, new_epoch, candidate, "granted") if not callable(self.answer) else \
            self.answer(candidate, new_epoch, 0.0)


YES = LeaseGrant(True, 1, "P", "granted")
NO = LeaseGrant(False, 1, "other", "held_by_other")


async def test_self_plus_one_of_two_voters_is_a_majority() -> None:
    clock = FakeClock()
    holder = LeaseHolder("P", 1, 9.0, [FakeVoter(YES), FakeVoter(NO)], clock=clock)
    assert not holder.valid() and holder.remaining() == 0 and holder.participants == 3
    assert await holder.renew_once()
    assert holder.valid_until == pytest.approx(500 + 9.0 * 0.9)
    assert holder.remaining() == pytest.approx(8.1)
    assert not await LeaseHolder("P", 1, 9.0, [FakeVoter(NO), FakeVoter(NO)], clock=clock).renew_once()


async def test_five_participants_need_two_voter_grants() -> None:
    clock = FakeClock()
    one = LeaseHolder("P", 1, 9.0, [FakeVoter(YES), FakeVoter(NO), FakeVoter(NO), FakeVoter(NO)], clock=clock)
    assert not await one.renew_once()
    two = LeaseHolder("P", 1, 9.0, [FakeVoter(YES), FakeVoter(YES), FakeVoter(NO), FakeVoter(NO)], clock=clock)
    assert await two.renew_once()
    # two participants (one voter): the voter must grant
    assert not await LeaseHolder("P", 1, 9.0, [FakeVoter(NO)], clock=clock).renew_once()


async def test_grants_for_another_holder_or_epoch_are_not_votes() -> None:
    clock = FakeClock()
    wrong = [LeaseGrant(True, 1, "Q", "granted"), LeaseGrant(True, 0, "P", "granted")]
    for grant in wrong:
        assert not await LeaseHolder("P", 1, 9.0, [FakeVoter(grant), FakeVoter(NO)], clock=clock).renew_once()


async def test_the_lease_counts_from_the_send_time_not_the_reply() -> None:
    clock = FakeClock()
    slow = FakeVoter(YES, clock=clock, delay=3.0)  # the reply arrives 3 s after the request went out
    holder = LeaseHolder("P", 1, 9.0, [slow, FakeVoter(NO)], clock=clock, drift=0.1)
    assert await holder.renew_once()
    assert holder.valid_until == pytest.approx(500 + 8.1)
    assert holder.remaining() == pytest.approx(8.1 - 3.0)
    assert slow.calls == [("P", 1, 9.0)]


async def test_expiry_and_no_shortening() -> None:
    clock = FakeClock()
    answers = [YES]
    holder = LeaseHolder("P", 1, 10.0, [FakeVoter(lambda *_: answers[0]), FakeVoter(NO)], clock=clock, drift=0.2)
    assert await holder.renew_once()
    until = holder.valid_until
    assert until == pytest.approx(508.0)
    answers[0] = NO
    clock.now += 5
    assert await holder.renew_once()  # a failed round does not end the lease early ...
    assert holder.valid_until == until
    clock.now = 508.0
    assert not holder.valid() and holder.remaining() == 0  # ... but it ends on time
    answers[0] = YES
    assert await holder.renew_once() and holder.valid_until == pytest.approx(516.0)


async def test_a_higher_epoch_fences_the_holder_forever() -> None:
    clock = FakeClock()
    answers = [YES]
    holder = LeaseHolder("P", 1, 9.0, [FakeVoter(lambda *_: answers[0]), FakeVoter(YES)], clock=clock)
    assert await holder.renew_once()
    answers[0] = LeaseGrant(False, 2, "S", "stale_epoch")
    assert not await holder.renew_once()  # the other voter still granted: fenced anyway
    assert holder.fenced_epoch == 2 and not holder.valid() and holder.remaining() == 0
    answers[0] = YES
    assert not await holder.renew_once()
    assert holder.fenced_epoch == 2
    await asyncio.wait_for(holder.run(), 1)  # run returns at once when fenced
    assert holder.status()["fenced_epoch"] == 2


async def test_unreachable_failing_and_slow_voters_are_no_votes() -> None:
    ok = FakeVoter(YES)
    broken = FakeVoter(VoterUnavailable("down"))
    hung = FakeVoter(YES, sleep=30)
    holder = LeaseHolder("P", 1, 0.9, [broken, hung], renew_every=0.2, request_timeout=0.1)
    started = time.monotonic()
    assert not await holder.renew_once()
    assert time.monotonic() - started < 0.5
    holder = LeaseHolder("P", 1, 0.9, [ok, broken, hung, FakeVoter(RuntimeError("bug"))],
                         renew_every=0.2, request_timeout=0.1)
    assert not await holder.renew_once()  # 2 of 5 votes
    holder = LeaseHolder("P", 1, 0.9, [ok, ok, broken, hung], renew_every=0.2, request_timeout=0.1)
    assert await holder.renew_once()  # 3 of 5


async def test_run_renews_and_reports_changes() -> None:
    changes: list[bool] = []
    grant = [YES]
    voter = FakeVoter(lambda *_: grant[0])
    holder = LeaseHolder("P", 1, 0.6, [voter], renew_every=0.05, request_timeout=0.04, on_change=changes.append)
    task = asyncio.create_task(holder.run())
    try:
        await eventually(lambda: len(voter.calls) >= 3, what="three rounds")
        assert holder.valid() and changes == [True]
        grant[0] = NO
        await eventually(lambda: changes == [True, False], what="loss reported")  # at expiry, between rounds
        assert holder.valid_until is not None and time.monotonic() >= holder.valid_until
        grant[0] = YES
        await eventually(lambda: changes == [True, False, True], what="regained")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_on_change_failures_do_not_stop_renewals() -> None:
    def boom(valid: bool) -> None:
        raise RuntimeError("callback bug")

    holder = LeaseHolder("P", 1, 0.3, [FakeVoter(YES)], renew_every=0.05, on_change=boom)
    assert await holder.renew_once()


@pytest.mark.parametrize("kwargs", [
    {"holder": ""}, {"epoch": -1}, {"duration": 0}, {"voters": []}, {"drift": 1.0}, {"drift": -0.1},
    {"renew_every": 0.0}, {"renew_every": 9.0}, {"renew_every": 1.0, "request_timeout": 1.0},
])
def test_holder_arguments_are_checked(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"holder": "P", "epoch": 1, "duration": 10.0, "voters": [FakeVoter(YES)]}
    args.update(kwargs)
    with pytest.raises(ValueError):
        LeaseHolder(**args)  # type: ignore[arg-type]


# -- promotion ------------------------------------------------------------------------------------

async def test_promotion_needs_both_the_local_voter_and_the_witness() -> None:
    clock = FakeClock()
    local = LeaseVoter(None, clock=clock, max_lease=5.0)
    witness = LeaseVoter(None, clock=clock, max_lease=5.0)
    clock.now += 5  # past both quarantines
    assert local.renew("P", 1, 5.0).granted  # P's lease is live at the local voter only
    result = await request_promotion("S", 2, [LocalVoter(local), LocalVoter(witness)])
    assert not result.promoted and result.votes == 1 and result.needed == 2
    assert [g.reason if g else None for g in result.grants] == ["lease_active", "granted"]
    assert result.highest_epoch == 2  # the witness moved: retry above it
    clock.now += 5
    retry = await request_promotion("S", result.highest_epoch + 1, [LocalVoter(local), LocalVoter(witness)])
    assert retry.promoted and retry.epoch == 3 and local.epoch == witness.epoch == 3


async def test_promotion_counts_unreachable_voters_as_no_votes() -> None:
    down = FakeVoter(VoterUnavailable("down"))
    result = await request_promotion("S", 2, [FakeVoter(YES), down], timeout=0.5)
    assert not result.promoted and result.grants[1] is None
    hung = FakeVoter(YES, sleep=30)
    result = await request_promotion("S", 2, [FakeVoter(YES), FakeVoter(YES), hung], participants=5, timeout=0.1)
    assert not result.promoted and result.votes == 2 and result.needed == 3
    with pytest.raises(ValueError):
        await request_promotion("S", 2, [FakeVoter(YES)])  # 1 voter can never make 2 of 2


class FakeRequester:
    def __init__(self, grants: list[LeaseGrant]) -> None:
        self.grants = grants
        self.asked: list[tuple[str, int, float, float, Collection[str] | None]] = []

    async def request_lease(self, holder: str, epoch: int, duration: float, timeout: float, *,
                            secondary_ids: Collection[str] | None = None) -> list[LeaseGrant]:
        self.asked.append((holder, epoch, duration, timeout, secondary_ids))
        return self.grants


async def test_stream_voter_asks_its_secondary_and_reduces_replies() -> None:
    requester = FakeRequester([])
    voter = StreamVoter(requester, "sec-a", timeout=0.7)
    with pytest.raises(VoterUnavailable):
        await voter.renew("P", 1, 5.0)
    assert requester.asked == [("P", 1, 5.0, 0.7, ("sec-a",))]
    requester.grants = [NO, YES]
    assert await voter.renew("P", 1, 5.0) == YES
    fencing = LeaseGrant(False, 2, "S", "stale_epoch")
    requester.grants = [YES, fencing]
    assert await voter.renew("P", 1, 5.0) == fencing  # a fencing refusal wins
    assert (await voter.promote("S", 2)).reason == "not_supported"
