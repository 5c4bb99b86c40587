"""A linearizability checker for one read/write register whose writes carry unique values.

A history is a list of :class:`Op`: each has an invocation and a completion time from
one clock. A write whose outcome is unknown (timeout, connection reset, 5xx) has
``complete=None``: it may have taken effect at any time after its invocation, or never.
Failed reads carry no information and are left out by the caller.

With unique written values every read names the write it saw, and linearizability is
decided in O(n log n) by the zone conditions (Gibbons & Korach 1997; Golab, Li & Shah
2011). Group the operations by value into clusters (the write and the reads of it). A
cluster whose earliest completion ``f`` precedes its latest invocation ``s`` has a
*forward zone* (f, s): its value must be the register's value for that whole span. A
cluster with ``s <= f`` has a *backward zone* [s, f]: all its operations overlap, and it
can take effect at one instant anywhere in it. The history is linearizable iff

1. no read returns a value that was never written, or whose write began only after the
   read completed;
2. no two forward zones intersect (two values cannot both hold over the same span);
3. no backward zone lies inside a forward zone (e.g. an acknowledged write that a later
   read does not see: a stale read, or a lost write).

Writes of unknown outcome that nobody read are dropped (they may never have happened).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

INITIAL = "<initial>"


@dataclass(frozen=True)
class Op:
    """One completed (or, for a write, possibly indeterminate) operation."""

    kind: Literal["write", "read"]
    value: str | None  # the value written, or the value read (None: the initial/absent value)
    invoke: float
    complete: float | None  # None: a write whose outcome is unknown
    client: str = ""

    def __str__(self) -> str:
        end = "?" if self.complete is None else f"{self.complete:.4f}"
        who = f"{self.client} " if self.client else ""
        return f"{who}{self.kind}({self.value!r}) [{self.invoke:.4f}, {end}]"


@dataclass(frozen=True)
class Violation:
    """Why a history is not linearizable, with the operations involved."""

    rule: str
    message: str
    ops: tuple[Op, ...]

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}\n    " + "\n    ".join(str(o) for o in self.ops)


@dataclass(frozen=True)
class _Zone:
    value: str | None
    f: float  # earliest completion in the cluster
    s: float  # latest invocation in the cluster
    ops: tuple[Op, ...]

    @property
    def forward(self) -> bool:
        return self.f < self.s


def check_register(history: Sequence[Op], initial: str | None = None) -> list[Violation]:
    """All violations of linearizability in ``history`` (empty: it is linearizable).

    ``initial`` is the register's value before the first write. Written values must be
    unique and differ from ``initial`` (ValueError otherwise).
    """
    writes: dict[str | None, Op] = {}
    reads: dict[str | None, list[Op]] = {}
    for op in history:
        if op.kind == "write":
            if op.value in writes or op.value == initial:
                raise ValueError(f"written values must be unique: {op.value!r} written twice")
            writes[op.value] = op
        elif op.complete is not None:
            reads.setdefault(op.value, []).append(op)
    virtual = Op("write", initial, -math.inf, -math.inf, INITIAL)
    violations: list[Violation] = []
    zones: list[_Zone] = []
    for value, rs in reads.items():
        w = virtual if value == initial else writes.get(value)
        if w is None:
            violations.append(Violation("phantom", f"read {value!r}, which no write wrote", tuple(rs)))
            continue
        early = [r for r in rs if _end(r) < w.invoke]
        if early:
            violations.append(Violation("future-read", f"read {value!r} before its write was invoked",
                                        (w, *early)))
    for value, w in [*writes.items(), (initial, virtual)]:
        rs = reads.get(value, [])
        if w.complete is None and not rs:
            continue  # unknown outcome and never observed: it may never have happened
        cluster = (w, *rs)
        zones.append(_Zone(value, min(_end(o) for o in cluster), max(o.invoke for o in cluster), cluster))
    forward = sorted((z for z in zones if z.forward), key=lambda z: z.f)
    backward = sorted((z for z in zones if not z.forward), key=lambda z: z.s)
    violations += _overlapping_forward(forward)
    violations += _backward_inside_forward(forward, backward)
    return violations


def _end(op: Op) -> float:
    return math.inf if op.complete is None else op.complete


def _overlapping_forward(forward: list[_Zone]) -> list[Violation]:
    out: list[Violation] = []
    widest: _Zone | None = None  # among zones seen so far, the one reaching furthest right
    for z in forward:
        if widest is not None and z.f < widest.s:
            lo, hi = z.f, min(z.s, widest.s)
            out.append(Violation(
                "overlapping-values",
                f"{widest.value!r} and {z.value!r} must both be the register's value during "
                f"({lo:.4f}, {hi:.4f}): each was written or read before the other's span ended",
                widest.ops + z.ops))
        if widest is None or z.s > widest.s:
            widest = z
    return out


def _backward_inside_forward(forward: list[_Zone], backward: list[_Zone]) -> list[Violation]:
    out: list[Violation] = []
    # For each backward zone [s, f], find a forward zone (F, S) with F < s and f < S. Among
    # the forward zones starting before s, the one with the largest S decides.
    i, best = 0, None
    for b in backward:
        while i < len(forward) and forward[i].f < b.s:
            if best is None or forward[i].s > best.s:
                best = forward[i]
            i += 1
        if best is not None and b.f < best.s:
            lone_write = len(b.ops) == 1
            what = (f"the write of {b.value!r} completed at {b.f:.4f}" if lone_write
                    else f"every operation on {b.value!r} overlaps [{b.s:.4f}, {b.f:.4f}]")
            out.append(Violation(
                "stale-read" if lone_write else "hidden-value",
                f"{what}, yet {best.value!r} must hold throughout ({best.f:.4f}, {best.s:.4f}): "
                f"a read starting at {best.s:.4f} still returned {best.value!r}",
                best.ops + b.ops))
    return out


@dataclass
class History:
    """A thread-safe recorder of operations on one register, timed by time.monotonic()."""

    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: Op) -> None:
        """Append one operation."""
        with self._lock:
            self.ops.append(op)

    @staticmethod
    def now() -> float:
        """The clock every invocation and completion must be taken from."""
        return time.monotonic()

    def snapshot(self) -> list[Op]:
        """A copy of the operations so far."""
        with self._lock:
            return list(self.ops)
