"""Fenced automatic DR promotion: a lease held by the primary, granted by a majority of voters.

Participants: the primary cluster's active node P (the *holder*), the DR secondary's active
node S and a witness W. P may acknowledge writes only while :meth:`LeaseHolder.valid`; S may
promote only when :func:`request_promotion` got a majority of promotion grants (its own
:class:`LeaseVoter` and W). The argument for why the two never overlap is in DESIGN.md
("Fencing"); in short:

* the holder measures its lease from the moment it *sent* the renewal and shortens it by a
  drift margin, a voter measures its grant from when it *received* the renewal, so the
  holder's lease always ends first (given bounded clock-rate drift);
* a voter grants a promotion only once every renewal it granted has expired, so any holder
  majority and any promotion majority share a voter that refuses one of the two;
* every promotion raises the epoch, voters persist it (fsync + atomic rename) and refuse
  older epochs, and a holder that sees a higher epoch is fenced for good;
* a voter forgets grant times when it restarts, so it refuses promotions for one maximum
  lease duration after it starts.

Only monotonic durations are used; clocks are injected so tests can drive time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from vaultraft.replication.wire import ThrottledLog

__all__ = ["FenceStateError", "LeaseGrant", "LeaseHolder", "LeaseRequester", "LeaseVoter", "LocalVoter",
           "PromotionResult", "StreamVoter", "VoterClient", "VoterUnavailable", "request_promotion"]

log = structlog.get_logger("vaultraft.replication.fence")
_throttled = ThrottledLog()

Clock = Callable[[], float]
MAX_EPOCH: Final = (1 << 63) - 1
#: Upper bound on any lease duration (seconds); voters also refuse anything above their max_lease.
MAX_DURATION: Final = 86400.0
MAX_NAME: Final = 256
_STATE_VERSION: Final = 1


class FenceStateError(ValueError):
    """The persisted voter state is unreadable: refuse to start (a voter that lost its epoch
    could grant an old, fenced holder again)."""


class VoterUnavailable(ConnectionError):
    """A remote voter could not be asked or did not answer (counts as no vote)."""


@dataclass(frozen=True)
class LeaseGrant:
    """A voter's answer to a renewal or a promotion.

    ``epoch`` is the voter's epoch after handling the request (a fenced holder learns the
    epoch that fenced it); ``holder`` is who the voter currently grants to ("" if nobody);
    ``reason`` is a snake_case word: granted, stale_epoch, held_by_other, lease_active,
    restart_quarantine, bad_request, persist_failed, no_voter, not_supported.
    """

    granted: bool
    epoch: int
    holder: str
    reason: str


def valid_name(name: object) -> bool:
    """A holder or candidate name: a non-empty string of at most MAX_NAME characters."""
    return type(name) is str and 0 < len(name) <= MAX_NAME


def valid_epoch(epoch: object) -> bool:
    """A non-negative int (not a bool) that fits in 63 bits."""
    return type(epoch) is int and 0 <= epoch <= MAX_EPOCH


def valid_duration(duration: object) -> bool:
    """A finite, positive number of seconds, at most MAX_DURATION."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return False
    return math.isfinite(duration) and 0 < duration <= MAX_DURATION


# -- the voter -----------------------------------------------------------------------------------

class LeaseVoter:
    """One vote: the DR secondary's active node and the witness each run one.

    Contract:

    * :meth:`renew` grants iff the request is well formed, ``duration <= max_lease``,
      ``epoch >= self.epoch`` and no unexpired grant is held by a different holder. A grant
      records ``expiry = now + duration`` (now = when the request is handled, which is at or
      after its receipt) and keeps the latest expiry. A higher epoch is persisted before the
      grant is returned; if persisting fails the renewal is refused.
    * :meth:`promote` grants iff ``new_epoch > self.epoch``, every grant made since start has
      expired (``now >= expiry``) and the restart quarantine (``max_lease`` after
      construction) is over. On grant the new epoch is persisted first and the candidate
      becomes the current holder; renewals for older epochs are refused from then on.
    * Only the epoch is persisted (fsync, atomic rename, mode 0600); grant times live in
      memory, which is why a restarted voter waits out the quarantine. ``state_path=None``
      is for tests: a voter that forgets its epoch can grant a fenced holder again.
    * ``min_epoch`` raises the starting epoch (persisted before the constructor returns):
      a DR secondary cluster whose active node changes must start the new node's voter at
      the highest epoch that cluster committed, since its voter is one logical voter.

    Not thread-safe: call it from one event loop. Epoch changes fsync on the calling thread
    (they are rare: once per promotion).
    """

    def __init__(self, state_path: str | None, *, clock: Clock = time.monotonic, max_lease: float,
                 min_epoch: int = 0) -> None:
        if not valid_duration(max_lease):
            raise ValueError("max_lease must be a positive number of seconds")
        if not valid_epoch(min_epoch):
            raise ValueError("min_epoch must be a non-negative integer")
        self._path = state_path
        self._clock = clock
        self._max_lease = float(max_lease)
        self._epoch = _load_epoch(state_path)
        self._holder = ""
        self._expiry: float | None = None
        self._started = clock()
        if min_epoch > self._epoch:
            if state_path is not None:
                _store_epoch(state_path, min_epoch)  # OSError: refuse to start
            self._epoch = min_epoch

    @property
    def epoch(self) -> int:
        """The highest epoch this voter has adopted."""
        return self._epoch

    @property
    def max_lease(self) -> float:
        """The longest lease it grants (and its restart quarantine)."""
        return self._max_lease

    def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        """Grant or refuse ``holder`` a lease of ``duration`` seconds at ``epoch`` (see class)."""
        now = self._clock()
        if not (valid_name(holder) and valid_epoch(epoch) and valid_duration(duration)) \
                or duration > self._max_lease:
            return self._answer(False, "bad_request")
        if epoch < self._epoch:
            return self._answer(False, "stale_epoch")
        if self._unexpired(now) and holder != self._holder:
            return self._answer(False, "held_by_other")
        if epoch > self._epoch and not self._adopt(epoch, holder, "renewal"):
            return self._answer(False, "persist_failed")
        if holder != self._holder:
            log.info("fence_holder_changed", holder=holder, previous=self._holder or None, epoch=self._epoch)
            self._holder = holder
        expiry = now + float(duration)
        self._expiry = expiry if self._expiry is None else max(self._expiry, expiry)
        return self._answer(True, "granted")

    def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        """Grant or refuse ``candidate`` the promotion to ``new_epoch`` (see class)."""
        now = self._clock()
        if not (valid_name(candidate) and valid_epoch(new_epoch)):
            return self._answer(False, "bad_request")
        if new_epoch <= self._epoch:
            return self._answer(False, "stale_epoch")
        if now < self._started + self._max_lease:
            return self._answer(False, "restart_quarantine")
        if self._unexpired(now):
            return self._answer(False, "lease_active")
        if not self._adopt(new_epoch, candidate, "promotion"):
            return self._answer(False, "persist_failed")
        self._holder = candidate
        return self._answer(True, "granted")

    def status(self) -> dict[str, Any]:
        """Epoch, current holder, seconds left on the latest grant and on the quarantine."""
        now = self._clock()
        return {"epoch": self._epoch, "holder": self._holder,
                "lease_remaining": max(0.0, self._expiry - now) if self._expiry is not None else 0.0,
                "quarantine_remaining": max(0.0, self._started + self._max_lease - now),
                "max_lease": self._max_lease}

    def _unexpired(self, now: float) -> bool:
        return self._expiry is not None and now < self._expiry

    def _adopt(self, epoch: int, who: str, how: str) -> bool:
        """Persist ``epoch`` and adopt it; False (nothing changed) if it could not be persisted."""
        if self._path is not None:
            try:
                _store_epoch(self._path, epoch)
            except OSError as e:
                log.error("fence_epoch_persist_failed", epoch=epoch, error=type(e).__name__)
                return False
        log.warning("fence_epoch_raised", epoch=epoch, previous=self._epoch, by=who, via=how)
        self._epoch = epoch
        return True

    def _answer(self, granted: bool, reason: str) -> LeaseGrant:
        return LeaseGrant(granted, self._epoch, self._holder, reason)


def _load_epoch(path: str | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return 0
    try:
        state = json.loads(raw)
    except ValueError:
        raise FenceStateError(f"unreadable fencing state in {path}") from None
    if type(state) is not dict or state.get("version") != _STATE_VERSION or not valid_epoch(state.get("epoch")):
        raise FenceStateError(f"malformed fencing state in {path}")
    return int(state["epoch"])


def _store_epoch(path: str, epoch: int) -> None:
    """Write the epoch durably: temp file (0600) in the same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fence-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps({"version": _STATE_VERSION, "epoch": epoch}).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- asking voters -------------------------------------------------------------------------------

class VoterClient(Protocol):
    """A voter as the holder and the promotion candidate see it. Implementations may raise
    (VoterUnavailable, OSError, TimeoutError, ...) when the voter cannot be reached: the
    caller counts that as no vote."""

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        """Ask for a lease (see :meth:`LeaseVoter.renew`)."""
        ...

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        """Ask for a promotion (see :meth:`LeaseVoter.promote`)."""
        ...


class LocalVoter:
    """A :class:`LeaseVoter` in this process as a :class:`VoterClient` (the DR secondary's own
    vote when it asks for its promotion)."""

    def __init__(self, voter: LeaseVoter) -> None:
        self.voter = voter

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        """:meth:`LeaseVoter.renew`."""
        return self.voter.renew(holder, epoch, duration)

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        """:meth:`LeaseVoter.promote`."""
        return self.voter.promote(candidate, new_epoch)


class LeaseRequester(Protocol):
    """What :class:`StreamVoter` needs: ``ReplicationServer.request_lease``."""

    async def request_lease(self, holder: str, epoch: int, duration: float, timeout: float, *,
                            secondary_ids: Collection[str] | None = None) -> list[LeaseGrant]:
        """Ask connected DR secondaries for a lease; one grant per reply received in time."""
        ...


class StreamVoter:
    """One DR secondary (by id), asked over the replication stream by the primary's server.

    The participant set must be fixed, so this names one secondary rather than "whoever is
    connected". A secondary that is not connected or does not answer in ``timeout`` raises
    VoterUnavailable (no vote). Promotions are never asked over the stream (the candidate is
    the secondary itself): :meth:`promote` refuses.
    """

    def __init__(self, server: LeaseRequester, secondary_id: str, *, timeout: float = 2.0) -> None:
        self._server = server
        self._id = secondary_id
        self._timeout = timeout

    async def renew(self, holder: str, epoch: int, duration: float) -> LeaseGrant:
        """The secondary's answer; with several replies (a reconnect race) a fencing refusal
        wins, then a grant."""
        grants = await self._server.request_lease(holder, epoch, duration, self._timeout,
                                                  secondary_ids=(self._id,))
        if not grants:
            raise VoterUnavailable(f"no lease reply from secondary {self._id[:64]!r}")
        return max(grants, key=lambda g: (g.epoch > epoch, g.granted))

    async def promote(self, candidate: str, new_epoch: int) -> LeaseGrant:
        """Always refused: promotion is asked of the secondary's local voter and the witness."""
        return LeaseGrant(False, 0, "", "not_supported")


# -- the holder ----------------------------------------------------------------------------------

class LeaseHolder:
    """The primary's lease: renewed by a majority of ``1 + len(voters)`` participants (itself
    counts as one vote).

    A round records ``sent_at = clock()`` *before* asking any voter, asks all voters
    concurrently (each bounded by ``request_timeout < renew_every``) and, with a majority,
    extends ``valid_until`` to ``sent_at + duration * (1 - drift)`` (never shortens it).
    Any answer carrying an epoch above ours fences the holder: ``fenced_epoch`` is set and
    :meth:`valid` is False forever. Acknowledge a write only if :meth:`valid` holds when
    acknowledging (and :meth:`remaining` covers the time the acknowledgement takes).
    ``on_change(valid)`` is called on the event loop whenever the observed validity flips
    (including expiry between rounds while :meth:`run` is running); exceptions it raises are
    logged and ignored.
    """

    def __init__(self, holder: str, epoch: int, duration: float, voters: Sequence[VoterClient], *,
                 clock: Clock = time.monotonic, drift: float = 0.1, renew_every: float | None = None,
                 request_timeout: float | None = None, on_change: Callable[[bool], None] | None = None) -> None:
        if not valid_name(holder) or not valid_epoch(epoch) or not valid_duration(duration):
            raise ValueError("invalid holder, epoch or duration")
        if not voters:
            raise ValueError("a lease needs at least one voter")
        if not 0 <= drift < 1:
            raise ValueError("drift must be in [0, 1)")
        every = duration / 3 if renew_every is None else renew_every
        if not 0 < every < duration * (1 - drift):
            raise ValueError("renew_every must be positive and shorter than the usable lease")
        timeout = every * 0.8 if request_timeout is None else request_timeout
        if not 0 < timeout < every:
            raise ValueError("request_timeout must be positive and shorter than renew_every")
        self._holder = holder
        self._epoch = epoch
        self._duration = float(duration)
        self._voters = tuple(voters)
        self._clock = clock
        self._drift = drift
        self._every = every
        self._timeout = timeout
        self._on_change = on_change
        self._valid_until: float | None = None
        self._fenced: int | None = None
        self._reported = False

    @property
    def holder(self) -> str:
        """The holder name sent to voters."""
        return self._holder

    @property
    def epoch(self) -> int:
        """The epoch this holder renews at."""
        return self._epoch

    @property
    def participants(self) -> int:
        """1 + number of voters; a majority is more than half of this."""
        return 1 + len(self._voters)

    @property
    def fenced_epoch(self) -> int | None:
        """The highest epoch above ours that a voter reported, or None."""
        return self._fenced

    @property
    def valid_until(self) -> float | None:
        """The holder-clock time the lease ends (None before the first successful round)."""
        return self._valid_until

    def valid(self) -> bool:
        """True iff not fenced and ``clock() < valid_until``."""
        return self._fenced is None and self._valid_until is not None and self._clock() < self._valid_until

    def remaining(self) -> float:
        """Seconds of lease left (0 when not valid)."""
        if not self.valid():
            return 0.0
        assert self._valid_until is not None
        return max(0.0, self._valid_until - self._clock())

    def status(self) -> dict[str, Any]:
        """Holder, epoch, validity, remaining seconds, fenced epoch, participants."""
        return {"holder": self._holder, "epoch": self._epoch, "valid": self.valid(),
                "remaining": self.remaining(), "fenced_epoch": self._fenced, "participants": self.participants}

    def record_round(self, sent_at: float, grants: Sequence[LeaseGrant | None]) -> bool:
        """Account one round sent at holder-clock ``sent_at`` (None = no answer); returns
        :meth:`valid`. :meth:`renew_once` calls this; it is public for simulations."""
        votes = 1
        for grant in grants:
            if grant is None:
                continue
            if grant.epoch > self._epoch:
                if self._fenced is None or grant.epoch > self._fenced:
                    log.warning("fence_lease_fenced", holder=self._holder, epoch=self._epoch,
                                voter_epoch=grant.epoch)
                    self._fenced = grant.epoch
            elif grant.granted and grant.epoch == self._epoch and grant.holder == self._holder:
                votes += 1
        if self._fenced is None and 2 * votes > self.participants:
            until = sent_at + self._duration * (1 - self._drift)
            self._valid_until = until if self._valid_until is None else max(self._valid_until, until)
        self._notify()
        return self.valid()

    async def renew_once(self) -> bool:
        """One round: ask every voter concurrently; returns :meth:`valid` afterwards."""
        if self._fenced is not None:
            return False
        sent_at = self._clock()
        grants = await asyncio.gather(*(self._ask(i, v) for i, v in enumerate(self._voters)))
        return self.record_round(sent_at, grants)

    async def run(self) -> None:
        """Renew every ``renew_every`` until cancelled; returns once fenced."""
        while self._fenced is None:
            started = self._clock()
            await self.renew_once()
            next_round = started + self._every
            while self._fenced is None and (now := self._clock()) < next_round:
                wake = next_round
                if self._reported and self._valid_until is not None:
                    wake = min(wake, self._valid_until)
                await asyncio.sleep(max(0.0, wake - now))
                self._notify()
        self._notify()

    async def _ask(self, index: int, voter: VoterClient) -> LeaseGrant | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await voter.renew(self._holder, self._epoch, self._duration)
        except Exception as e:  # noqa: BLE001 - any failure of one voter is "no vote"
            _throttled("info", "fence_voter_unavailable", voter=index, reason=type(e).__name__)
            return None

    def _notify(self) -> None:
        now_valid = self.valid()
        if now_valid == self._reported:
            return
        self._reported = now_valid
        log.info("fence_lease_valid" if now_valid else "fence_lease_lost", holder=self._holder,
                 epoch=self._epoch, fenced_epoch=self._fenced)
        if self._on_change is not None:
            try:
                self._on_change(now_valid)
            except Exception as e:  # noqa: BLE001 - a callback bug must not stop renewals
                log.error("fence_on_change_failed", error=type(e).__name__)


# -- promotion -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromotionResult:
    """The outcome of :func:`request_promotion`. ``highest_epoch`` is the highest epoch any
    voter reported: a retry must ask for more than it."""

    promoted: bool
    epoch: int
    votes: int
    needed: int
    highest_epoch: int
    grants: tuple[LeaseGrant | None, ...]


async def request_promotion(candidate: str, new_epoch: int, voters: Sequence[VoterClient], *,
                            participants: int | None = None, timeout: float = 5.0) -> PromotionResult:
    """Ask ``voters`` concurrently to promote ``candidate`` to ``new_epoch``.

    Promoted iff more than ``participants / 2`` voters granted it (default participants:
    ``len(voters) + 1``, the old holder being the participant that never votes for it). For
    {P, S, W} the DR secondary passes ``[LocalVoter(its voter), witness]``: both must grant.
    The candidate's own voter must be the same :class:`LeaseVoter` that answers the holder's
    renewals over the replication stream. After a promotion, acknowledge writes only under a
    new :class:`LeaseHolder` at ``new_epoch``. A failed attempt may still have raised some
    voters' epochs (which fences the old holder there); retry above ``highest_epoch``.
    """
    n = len(voters) + 1 if participants is None else participants
    needed = n // 2 + 1
    if not valid_name(candidate) or not valid_epoch(new_epoch):
        raise ValueError("invalid candidate or epoch")
    if len(voters) < needed:
        raise ValueError(f"{len(voters)} voters can never reach the {needed} votes {n} participants need")

    async def ask(voter: VoterClient) -> LeaseGrant | None:
        try:
            async with asyncio.timeout(timeout):
                return await voter.promote(candidate, new_epoch)
        except Exception as e:  # noqa: BLE001 - an unreachable voter is no vote
            log.info("fence_promotion_voter_unavailable", reason=type(e).__name__)
            return None

    grants = tuple(await asyncio.gather(*(ask(v) for v in voters)))
    votes = sum(1 for g in grants if g is not None and g.granted and g.epoch == new_epoch and g.holder == candidate)
    highest = max((g.epoch for g in grants if g is not None), default=0)
    promoted = votes >= needed
    log.warning("fence_promotion_decided" if promoted else "fence_promotion_refused", candidate=candidate,
                epoch=new_epoch, votes=votes, needed=needed,
                reasons=[g.reason if g is not None else "no_reply" for g in grants])
    return PromotionResult(promoted, new_epoch, votes, needed, highest, grants)
