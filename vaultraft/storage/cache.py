"""A bounded read cache of stored bytes (barrier ciphertext), exact under concurrent writes.

The store that owns a :class:`ReadCache` is the only writer of its data, so it can keep the
cache exact with two rules (see ``storage/DESIGN.md``):

1. **No fills during a write; invalidate after commit.** A write transaction first marks the
   cache as being written (:meth:`begin_write`: fills are refused until it ends, so a value a
   reader read just before the commit cannot be inserted between the commit and the
   invalidation and be served to a reader that already saw the new one); once committed (or
   failed) it drops the keys it touched and bumps the generation (:meth:`end_write`) — before the store publishes the new
   applied index, so anything that waits for that index (a client's ack, a read barrier,
   ``X-Vault-Index``) finds the keys already dropped. A write that committed then caches
   the values it stored (write-through, in the same step under the lock): the next update
   of a key reads its metadata without a trip to the reader thread. Replacing the whole
   store (snapshot install, wipe) clears everything.
2. **Fill only if nothing was invalidated meanwhile.** A reader takes the generation *before*
   it opens its read transaction and inserts what it read only if the generation is still the
   same. A read that raced a commit may have seen the old value; the commit's invalidation
   then bumped the generation, so the old value is never inserted after its invalidation.

``None`` (a key known to be absent) is cached like any value. The cache holds what the
physical layer holds — ciphertext — never plaintext.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

#: Default bounds: entries and bytes of cached values (FIFO eviction beyond either).
DEFAULT_MAX_ENTRIES = 16_384
DEFAULT_MAX_BYTES = 32 << 20
#: Values larger than this are never cached (they would evict too much).
MAX_VALUE_BYTES = 256 << 10

_MISS = object()


class ReadCache:
    """key → bytes | None, bounded by entry count and bytes; thread-safe.

    Lookups are O(1) under a short lock; eviction is first-in-first-out (a key re-filled
    after an invalidation goes to the back).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        """An empty cache; ``max_entries`` 0 disables caching."""
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache bounds must not be negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # FIFO by insertion: OrderedDict pops its oldest entry in O(1). (A plain dict's
        # ``next(iter(d))`` walks every slot deleted at its front since the last resize:
        # ~200 µs per 16-key commit once the cache was full.)
        self._map: OrderedDict[str, bytes | None] = OrderedDict()
        self._bytes = 0
        self._gen = 0
        self._writing = 0  # write transactions in progress (fills are refused meanwhile)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._map)

    @property
    def size_bytes(self) -> int:
        """Bytes of cached values."""
        return self._bytes

    def lookup(self, key: str) -> tuple[bool, bytes | None]:
        """``(True, value)`` when ``key`` is cached (value None: known absent), else ``(False, None)``."""
        with self._lock:
            v = self._map.get(key, _MISS)
        if v is _MISS:
            self.misses += 1
            return False, None
        self.hits += 1
        return True, v  # type: ignore[return-value]

    def generation(self) -> int:
        """The current generation; take it BEFORE reading the store for :meth:`fill`."""
        with self._lock:
            return self._gen

    def fill(self, key: str, value: bytes | None, generation: int) -> bool:
        """Insert what a read that started at ``generation`` found; False (not inserted)
        when anything was invalidated since, or the value is too large to cache."""
        size = 0 if value is None else len(value)
        if self.max_entries == 0 or size > MAX_VALUE_BYTES:
            return False
        with self._lock:
            if generation != self._gen or self._writing:
                return False
            self._put_locked(key, value)
            self._evict_locked()
        return True

    def begin_write(self) -> None:
        """A write transaction starts: refuse fills until the matching :meth:`end_write`."""
        with self._lock:
            self._writing += 1
            self._gen += 1

    def end_write(self, keys: Iterable[str], *, everything: bool = False,
                  committed: Iterable[tuple[str, bytes | None]] = ()) -> None:
        """The write that :meth:`begin_write` announced committed (or failed): drop ``keys``
        (or ``everything``), bump the generation, then cache ``committed``: the (key, value)
        pairs the write stored, in order (None: deleted), when it did commit. They are what
        the store now holds, so a read after this returns them without touching the store."""
        with self._lock:
            self._writing = max(0, self._writing - 1)
            self._gen += 1
            if everything:
                self._map.clear()
                self._bytes = 0
                return
            for k in keys:
                self._drop_locked(k)
            if self.max_entries == 0:
                return
            for k, value in committed:
                if value is not None and len(value) > MAX_VALUE_BYTES:
                    self._drop_locked(k)  # too large to cache (an earlier op may have put it)
                else:
                    self._put_locked(k, value)
            self._evict_locked()

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` and bump the generation (call after the write that touched them)."""
        with self._lock:
            self._gen += 1
            for k in keys:
                self._drop_locked(k)

    def _drop_locked(self, key: str) -> None:
        gone = self._map.pop(key, _MISS)
        if gone is not _MISS and gone is not None:
            self._bytes -= len(gone)  # type: ignore[arg-type]

    def _put_locked(self, key: str, value: bytes | None) -> None:
        """Insert ``key`` at the back of the FIFO order (bounds are enforced by the caller)."""
        self._drop_locked(key)
        self._map[key] = value
        self._bytes += 0 if value is None else len(value)

    def _evict_locked(self) -> None:
        while len(self._map) > self.max_entries or self._bytes > self.max_bytes:
            gone = self._map.popitem(last=False)[1]
            if gone is not None:
                self._bytes -= len(gone)

    def clear(self) -> None:
        """Drop everything and bump the generation (the whole store was replaced)."""
        with self._lock:
            self._gen += 1
            self._map.clear()
            self._bytes = 0
