"""The storage a backend sees: an async key/value view scoped to its own prefix.

A view is already behind the barrier: values are plaintext bytes to the backend and
ciphertext below. Writes that must be atomic go through :meth:`StorageView.write_batch`;
each call becomes one storage batch (one Raft log entry in a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence


@dataclass(frozen=True)
class StorageEntry:
    """A key and its plaintext value, as a backend sees it."""

    key: str
    value: bytes


@dataclass(frozen=True)
class WriteOp:
    """One operation of an atomic batch: ``value`` None means delete."""

    key: str
    value: bytes | None


class StorageView(Protocol):
    """Async, prefix-scoped storage. Keys are relative to the view; ``list`` returns
    immediate children (a trailing ``/`` marks a folder), sorted, as Vault's ``List``."""

    async def get(self, key: str) -> StorageEntry | None:
        """The entry at ``key``, or None."""
        ...

    async def put(self, entry: StorageEntry) -> None:
        """Write one entry (a batch of one)."""
        ...

    async def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (which is empty or ends in ``/``)."""
        ...

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        """Apply all ops atomically, in order."""
        ...


class SubView:
    """A view of another view under a fixed prefix (e.g. a cubbyhole per token)."""

    def __init__(self, parent: StorageView, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError("a sub-view prefix ends in '/'")
        self._parent = parent
        self._prefix = prefix

    async def get(self, key: str) -> StorageEntry | None:
        e = await self._parent.get(self._prefix + key)
        return None if e is None else StorageEntry(key, e.value)

    async def put(self, entry: StorageEntry) -> None:
        await self._parent.put(StorageEntry(self._prefix + entry.key, entry.value))

    async def delete(self, key: str) -> None:
        await self._parent.delete(self._prefix + key)

    async def list(self, prefix: str) -> list[str]:
        return await self._parent.list(self._prefix + prefix)

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        await self._parent.write_batch([WriteOp(self._prefix + o.key, o.value) for o in ops])


async def collect_keys(view: StorageView, prefix: str = "") -> list[str]:
    """Every key under ``prefix``, depth first (for deletes of a whole subtree)."""
    out: list[str] = []
    for child in await view.list(prefix):
        if child.endswith("/"):
            out.extend(await collect_keys(view, prefix + child))
        else:
            out.append(prefix + child)
    return out


class MemoryView:
    """A plain in-memory view for unit tests of engines and stores (no barrier)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> StorageEntry | None:
        v = self.data.get(key)
        return None if v is None else StorageEntry(key, v)

    async def put(self, entry: StorageEntry) -> None:
        self.data[entry.key] = entry.value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def list(self, prefix: str) -> list[str]:
        return list_children(self.data.keys(), prefix)

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        for o in ops:
            if o.value is None:
                self.data.pop(o.key, None)
            else:
                self.data[o.key] = o.value


def list_children(keys: Iterable[str], prefix: str) -> list[str]:
    """Immediate children of ``prefix`` among ``keys`` (folders end in ``/``), sorted."""
    out: set[str] = set()
    for k in keys:
        if not k.startswith(prefix) or k == prefix:
            continue
        rest = k[len(prefix):]
        i = rest.find("/")
        out.add(rest if i < 0 else rest[: i + 1])
    return sorted(out)

