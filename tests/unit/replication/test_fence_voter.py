"""LeaseVoter rules with a fake clock: grants and refusals, epochs, promotion only after
expiry, the restart quarantine, and durable epoch persistence."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from vaultraft.replication import fence
from vaultraft.replication.fence import FenceStateError, LeaseGrant, LeaseVoter

MAX = 10.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def voter(path: Path | None, clock: FakeClock, *, settled: bool = True) -> LeaseVoter:
    """A voter; ``settled`` moves the clock past its restart quarantine."""
    v = LeaseVoter(str(path) if path else None, clock=clock, max_lease=MAX)
    if settled:
        clock.advance(MAX)
    return v


def test_grant_records_the_holder_and_adopts_a_higher_epoch(tmp_path: Path) -> None:
    clock = FakeClock()
    v = voter(tmp_path / "state.json", clock)
    assert v.epoch == 0
    assert v.renew("A", 3, 5.0) == LeaseGrant(True, 3, "A", "granted")
    assert v.epoch == 3
    st = v.status()
    assert st["holder"] == "A" and st["lease_remaining"] == 5.0 and st["quarantine_remaining"] == 0
    # the same holder renews at the same epoch any time
    clock.advance(4)
    assert v.renew("A", 3, 5.0).granted
    assert v.status()["lease_remaining"] == 5.0


def test_another_holder_is_refused_until_the_grant_expires() -> None:
    clock = FakeClock()
    v = voter(None, clock)
    assert v.renew("A", 1, 5.0).granted
    clock.advance(4.999)
    assert v.renew("B", 1, 5.0) == LeaseGrant(False, 1, "A", "held_by_other")
    assert v.renew("B", 2, 5.0) == LeaseGrant(False, 1, "A", "held_by_other")  # a higher epoch does not help
    clock.advance(0.001)  # now == expiry: expired
    assert v.renew("B", 1, 5.0) == LeaseGrant(True, 1, "B", "granted")


def test_a_shorter_renewal_never_shortens_the_promise() -> None:
    clock = FakeClock()
    v = voter(None, clock)
    assert v.renew("A", 1, 8.0).granted
    assert v.renew("A", 1, 1.0).granted
    clock.advance(7.9)
    assert v.promote("B", 2).reason == "lease_active"
    assert v.renew("B", 1, 1.0).reason == "held_by_other"


def test_older_epochs_are_refused_with_the_voters_epoch() -> None:
    clock = FakeClock()
    v = voter(None, clock)
    assert v.renew("A", 5, 1.0).granted
    assert v.renew("A", 4, 1.0) == LeaseGrant(False, 5, "A", "stale_epoch")


@pytest.mark.parametrize(("holder", "epoch", "duration"), [
    ("", 1, 1.0), ("x" * 257, 1, 1.0), (7, 1, 1.0),  # names
    ("A", -1, 1.0), ("A", True, 1.0), ("A", 1.5, 1.0), ("A", 1 << 63, 1.0),  # epochs
    ("A", 1, 0.0), ("A", 1, -1.0), ("A", 1, math.nan), ("A", 1, math.inf), ("A", 1, MAX + 0.1),  # durations
    ("A", 1, True),
])
def test_malformed_renewals_are_refused(holder: object, epoch: object, duration: object) -> None:
    v = voter(None, FakeClock())
    grant = v.renew(holder, epoch, duration)  # type: ignore[arg-type]
    assert grant == LeaseGrant(False, 0, "", "bad_request")


@pytest.mark.parametrize(("candidate", "epoch"), [("", 1), ("x" * 257, 1), (None, 1), ("B", -1), ("B", True),
                                                  ("B", 2.0), ("B", 1 << 63)])
def test_malformed_promotions_are_refused(candidate: object, epoch: object) -> None:
    v = voter(None, FakeClock())
    assert v.promote(candidate, epoch) == LeaseGrant(False, 0, "", "bad_request")  # type: ignore[arg-type]


def test_promote_only_after_every_grant_expired() -> None:
    clock = FakeClock()
    v = voter(None, clock)
    assert v.renew("A", 1, 5.0).granted
    clock.advance(2)
    assert v.renew("A", 1, 5.0).granted  # expires 5 s from now
    clock.advance(4.9)
    assert v.promote("B", 2) == LeaseGrant(False, 1, "A", "lease_active")
    clock.advance(0.1)
    assert v.promote("B", 2) == LeaseGrant(True, 2, "B", "granted")
    assert v.epoch == 2 and v.status()["holder"] == "B"
    # the old holder is fenced: it learns epoch 2
    assert v.renew("A", 1, 5.0) == LeaseGrant(False, 2, "B", "stale_epoch")
    # the promoted candidate renews at its epoch
    assert v.renew("B", 2, 5.0) == LeaseGrant(True, 2, "B", "granted")


def test_promote_needs_a_higher_epoch() -> None:
    v = voter(None, FakeClock())
    assert v.renew("A", 4, 1.0).granted
    v2 = voter(None, FakeClock())
    assert v2.promote("B", 0).reason == "stale_epoch"
    assert v.promote("B", 4) == LeaseGrant(False, 4, "A", "stale_epoch")


def test_two_candidates_cannot_both_win_the_same_voter() -> None:
    v = voter(None, FakeClock())
    assert v.promote("B", 2).granted
    assert v.promote("C", 2).reason == "stale_epoch"
    assert v.promote("C", 3).granted  # a later promotion (no lease granted in between)


def test_restart_quarantine_blocks_promotions_for_max_lease(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    clock = FakeClock()
    v = voter(path, clock)
    assert v.renew("A", 1, MAX).granted  # then the voter "crashes" and forgets this grant
    restarted = LeaseVoter(str(path), clock=clock, max_lease=MAX)
    assert restarted.epoch == 1  # persisted
    assert restarted.status()["lease_remaining"] == 0  # forgotten ...
    assert restarted.promote("B", 2) == LeaseGrant(False, 1, "", "restart_quarantine")  # ... but covered
    clock.advance(MAX - 0.5)  # 0.5 s of quarantine left (binary-exact steps)
    assert restarted.promote("B", 2).reason == "restart_quarantine"
    clock.advance(0.5)
    assert restarted.promote("B", 2).granted
    # renewals are answered during the quarantine (and recorded)
    other = LeaseVoter(str(path), clock=clock, max_lease=MAX)
    assert other.renew("B", 2, 1.0).granted and other.renew("A", 1, 1.0).reason == "stale_epoch"


def test_epoch_persistence_is_atomic_private_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    v = voter(path, FakeClock())
    assert not path.exists()  # nothing to persist at epoch 0
    assert v.renew("A", 7, 1.0).granted
    assert json.loads(path.read_text()) == {"version": 1, "epoch": 7}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]  # no temp files left behind
    assert LeaseVoter(str(path), clock=FakeClock(), max_lease=MAX).epoch == 7


def test_a_failed_persist_refuses_and_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    v = voter(tmp_path / "state.json", clock)
    assert v.renew("A", 1, 1.0).granted

    def broken(path: str, epoch: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fence, "_store_epoch", broken)
    assert v.renew("A", 2, 1.0) == LeaseGrant(False, 1, "A", "persist_failed")
    clock.advance(1)
    assert v.promote("B", 2) == LeaseGrant(False, 1, "A", "persist_failed")
    assert v.renew("A", 1, 1.0).granted  # same epoch: nothing to persist


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 2, "epoch": 1}', b'{"version": 1, "epoch": -1}',
                                     b'{"version": 1, "epoch": true}', b'{"version": 1}'])
def test_unreadable_state_refuses_to_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(FenceStateError):
        LeaseVoter(str(path), max_lease=MAX)


def test_max_lease_is_checked() -> None:
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError):
            LeaseVoter(None, max_lease=bad)


def test_min_epoch_raises_the_start_epoch_durably(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    v = LeaseVoter(str(path), clock=FakeClock(), max_lease=MAX, min_epoch=5)
    assert v.epoch == 5 and json.loads(path.read_text())["epoch"] == 5
    assert v.renew("A", 4, 1.0).reason == "stale_epoch"
    assert LeaseVoter(str(path), max_lease=MAX, min_epoch=2).epoch == 5  # a floor, never lowers
    with pytest.raises(ValueError):
        LeaseVoter(None, max_lease=MAX, min_epoch=-1)
