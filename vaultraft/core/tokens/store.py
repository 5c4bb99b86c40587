"""Service tokens in storage: create, look up, use, renew, revoke (Vault's vault/token_store.go).

Layout under the view core hands us (``sys/token/`` behind the barrier)::

    salt                          32 random bytes: the HMAC key for token ids
    id/<hash>                     msgpack TokenEntry, <hash> = HMAC-SHA256(salt, token id)
    accessor/<accessor>           <hash> of the token the accessor names
    parent/<parent hash>/<hash>   child index, walked by tree revocation

A raw token id never appears in a key. Related keys change together in one
``write_batch`` (one storage batch, one Raft entry).

Decoded entries are cached by hash, each with the stamp of the stored value it was decoded
from (see ``BarrierView.get_stamped``); a cached entry is used only while the physical read
cache still holds exactly that stored value. Every write, revocation, replicated change or
snapshot install drops the stored value there, so the cache needs no invalidation of its
own to stay exact — on the active node and on standbys alike, across role changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable, Iterable, Mapping

from vaultraft.core.tokens.backend import build_backend
from vaultraft.core.tokens.entry import (
    NON_ASSIGNABLE_POLICIES,
    REVOCATION_PENDING,
    ROOT_TOKEN_PATH,
    MountTTLs,
    TokenEntry,
    calculate_ttl,
    check_custom_id,
    display_name_for,
    new_token_id,
    random_base62,
    sanitize_policies,
)
from vaultraft.framework import Backend
from vaultraft.logical import InternalError, InvalidRequest, StorageEntry, StorageView, WriteOp

SALT_KEY = "salt"
ID_PREFIX = "id/"
ACCESSOR_PREFIX = "accessor/"
PARENT_PREFIX = "parent/"
_INDEX_VALUE = b"1"
# Deeper parent chains than this are treated as corrupt (Vault has no limit but no
# real tree gets near it).
MAX_DEPTH = 256
#: Decoded token entries kept (by hash; first in, first out beyond this).
ENTRY_CACHE_SIZE = 4096

OnRevoke = Callable[[TokenEntry], Awaitable[None]]


class _KeyLocks:
    """One asyncio lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, *keys: str) -> AsyncIterator[None]:
        """Hold the locks of ``keys`` (taken in sorted order, so never deadlocking)."""
        ordered = sorted(set(keys))
        for k in ordered:
            self._users[k] = self._users.get(k, 0) + 1
            self._locks.setdefault(k, asyncio.Lock())
        taken: list[str] = []
        try:
            for k in ordered:
                await self._locks[k].acquire()
                taken.append(k)
            yield
        finally:
            for k in taken:
                self._locks[k].release()
            for k in ordered:
                self._users[k] -= 1
                if self._users[k] == 0:
                    del self._users[k]
                    del self._locks[k]


class TokenStore:
    """Vault's token store over one storage view.

    ``now`` is the clock (Unix seconds); ``default_ttl``/``max_ttl`` are the token mount's
    lease TTLs in seconds; ``on_revoke`` runs for each token as it is revoked, before its
    entry is deleted (core destroys the cubbyhole and the token's leases there).
    """

    def __init__(
        self,
        view: StorageView,
        *,
        now: Callable[[], float],
        default_ttl: int,
        max_ttl: int,
        on_revoke: OnRevoke | None = None,
    ) -> None:
        if max_ttl <= 0:
            raise ValueError("max_ttl must be positive")
        self._view = view
        self._now = now
        self.ttls = MountTTLs(default_ttl if 0 < default_ttl <= max_ttl else max_ttl, max_ttl)
        self._on_revoke = on_revoke
        self._salt: bytes | None = None
        self._keyed: tuple[bytes, hmac.HMAC] | None = None  # the salt and HMAC keyed with it
        self._salt_lock = asyncio.Lock()
        self._locks = _KeyLocks()
        self._revoking: set[str] = set()
        self._backend: Backend | None = None
        self._entries: dict[str, tuple[object, TokenEntry]] = {}  # hash -> (stamp, decoded entry)
        self.cache_hits = 0

    def now(self) -> float:
        """The store's clock (Unix seconds)."""
        return self._now()

    # ---- hashing and raw access ---------------------------------------------------------

    async def _key(self) -> bytes:
        if self._salt is None:
            async with self._salt_lock:
                if self._salt is None:
                    found = await self._view.get(SALT_KEY)
                    if found is None:
                        salt = secrets.token_bytes(32)
                        await self._view.put(StorageEntry(SALT_KEY, salt))
                    else:
                        salt = found.value
                    self._salt = salt
        return self._salt

    async def hash_id(self, token_id: str) -> str:
        """The storage name of ``token_id``: hex HMAC-SHA256 under this store's salt."""
        keyed = self._keyed
        if keyed is None or keyed[0] is not self._salt:
            key = self._salt if self._salt is not None else await self._key()
            keyed = self._keyed = (key, hmac.new(key, digestmod=hashlib.sha256))
        # A copy of the keyed state, not hmac.digest(): the one-shot C call releases the GIL,
        # and under load the Raft thread then holds it for up to a switch interval (5 ms).
        h = keyed[1].copy()
        h.update(token_id.encode("utf-8"))
        return h.hexdigest()

    async def _load(self, h: str) -> TokenEntry | None:
        key = ID_PREFIX + h
        cached = self._entries.get(h)
        if cached is not None:
            stamp_current = getattr(self._view, "stamp_current", None)
            if stamp_current is not None and stamp_current(key, cached[0]):
                self.cache_hits += 1
                return cached[1]
        get_stamped = getattr(self._view, "get_stamped", None)
        stamp: object | None = None
        if get_stamped is not None:
            found, stamp = await get_stamped(key)
        else:
            found = await self._view.get(key)
        if found is None:
            self._entries.pop(h, None)
            return None
        try:
            entry = TokenEntry.decode(found.value)
        except ValueError:
            raise InternalError("failed to decode token entry") from None
        if stamp is not None:
            self._remember(h, stamp, entry)
        return entry

    def _remember(self, h: str, stamp: object, entry: TokenEntry) -> None:
        self._entries.pop(h, None)
        self._entries[h] = (stamp, entry)
        while len(self._entries) > ENTRY_CACHE_SIZE:
            del self._entries[next(iter(self._entries))]

    def _forget(self, ops: Iterable[WriteOp]) -> None:
        """Drop cached entries a write touches (hygiene: their stamps would fail anyway)."""
        for op in ops:
            if op.key.startswith(ID_PREFIX):
                self._entries.pop(op.key[len(ID_PREFIX):], None)

    async def _write(self, ops: list[WriteOp]) -> None:
        self._forget(ops)
        await self._view.write_batch(ops)

    async def _put(self, h: str, entry: TokenEntry) -> None:
        await self._write([WriteOp(ID_PREFIX + h, entry.encode())])

    # ---- creation -----------------------------------------------------------------------

    async def create_root_token(self, token_id: str | None = None) -> TokenEntry:
        """An orphan token with policies ``["root"]`` that never expires."""
        return await self.create(None, policies=("root",), renewable=False, token_id=token_id,
                                 path=ROOT_TOKEN_PATH)

    async def create(
        self,
        parent: TokenEntry | None,
        *,
        policies: Iterable[str],
        ttl: int = 0,
        explicit_max_ttl: int = 0,
        num_uses: int = 0,
        display_name: str = "",
        meta: Mapping[str, str] | None = None,
        period: int = 0,
        no_parent: bool = False,
        renewable: bool = True,
        token_id: str | None = None,
        path: str = "auth/token/create",
        no_default_policy: bool = False,
    ) -> TokenEntry:
        """Store a new service token and return its entry.

        ``policies`` are sanitised and get ``default`` unless ``no_default_policy`` (which
        also strips an explicit ``default``) or ``root`` is among them. Under ``auth/token/``
        the display name becomes ``token``/``token-<name>`` (``root`` for the root token);
        elsewhere it is kept as given. The token is an orphan when ``parent`` is None or
        ``no_parent``. TTLs follow Vault: ``ttl`` defaults to the default TTL (root tokens:
        none), is capped at ``explicit_max_ttl`` and the max TTL; periodic tokens live one
        ``period``. Policy-subset and privilege rules are the caller's (see the backend).
        Raises InvalidRequest for impossible values.
        """
        if num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")
        for name, value in (("ttl", ttl), ("explicit_max_ttl", explicit_max_ttl), ("period", period)):
            if value < 0:
                raise InvalidRequest(f"{name} must be positive")
        pols = sanitize_policies(policies, add_default=not no_default_policy)
        if no_default_policy:
            pols = tuple(p for p in pols if p != "default")
        for p in pols:
            if p in NON_ASSIGNABLE_POLICIES:
                raise InvalidRequest(f'cannot assign policy "{p}"')
        now = self._now()
        granted = ttl
        if period > 0 or ttl > 0 or pols != ("root",):
            granted = calculate_ttl(self.ttls, increment=0, current=ttl, period=period,
                                    explicit_max=explicit_max_ttl, start=now, now=now)
        if granted == 0 and explicit_max_ttl > 0:  # root tokens are still bound by it
            granted = explicit_max_ttl
        if granted == 0:
            if parent is not None and parent.ttl != 0:
                raise InvalidRequest("expiring root tokens cannot create non-expiring root tokens")
            renewable = False

        if token_id:
            check_custom_id(token_id)
            tid = token_id
        else:
            tid = new_token_id()
        h = await self.hash_id(tid)
        if token_id and await self._view.get(ID_PREFIX + h) is not None:
            raise InvalidRequest("cannot create a token with a duplicate ID")

        orphan = parent is None or no_parent
        parent_hash = ""
        entity_id = ""
        if parent is not None and not orphan:
            parent_hash = await self.hash_id(parent.id)
            stored_parent = await self._load(parent_hash)
            if stored_parent is None or stored_parent.revocation_pending:
                raise InvalidRequest("parent token not found")
            entity_id = parent.entity_id

        entry = TokenEntry(
            id=tid,
            accessor=random_base62(),
            parent_hash=parent_hash,
            policies=pols,
            path=path,
            meta={str(k): str(v) for k, v in (meta or {}).items()},
            display_name=display_name_for(path, display_name),
            num_uses=num_uses,
            creation_time=now,
            ttl=granted,
            explicit_max_ttl=explicit_max_ttl,
            period=period,
            expire_time=now + granted if granted else 0.0,
            orphan=orphan,
            renewable=renewable,
            cubbyhole_id=random_base62(),
            entity_id=entity_id,
        )
        ops: list[WriteOp] = []
        if parent_hash:
            # Same batch as the entry: a child never exists without the index revocation walks.
            ops.append(WriteOp(f"{PARENT_PREFIX}{parent_hash}/{h}", _INDEX_VALUE))
        ops.append(WriteOp(ACCESSOR_PREFIX + entry.accessor, h.encode("ascii")))
        ops.append(WriteOp(ID_PREFIX + h, entry.encode()))
        await self._write(ops)
        return entry

    # ---- lookup and use -----------------------------------------------------------------

    async def lookup(self, token_id: str, *, allow_pending: bool = False) -> TokenEntry | None:
        """The live entry for ``token_id``; None when missing, revoked or expired.

        An expired token is revoked (with its tree) on the way, as is a token whose
        ancestor expired or vanished: a child never outlives its parent. With
        ``allow_pending`` a token on its last use (revocation pending until the request
        that spends it ends) is still returned: ``lookup-self`` on the last use works.
        """
        if not token_id:
            return None
        return await self._lookup_hash(await self.hash_id(token_id), allow_pending=allow_pending)

    async def lookup_accessor(self, accessor: str) -> TokenEntry | None:
        """The live entry whose accessor is ``accessor``, or None (as :meth:`lookup`)."""
        if not accessor:
            return None
        found = await self._view.get(ACCESSOR_PREFIX + accessor)
        if found is None:
            return None
        return await self._lookup_hash(found.value.decode("ascii", errors="replace"))

    async def _lookup_hash(self, h: str, *, allow_pending: bool = False) -> TokenEntry | None:
        entry = await self._load(h)
        if entry is None or (entry.revocation_pending and not allow_pending):
            return None
        now = self._now()
        if entry.expired(now):
            return await self._revoke_invalid(h)
        node, current = h, entry
        seen = {h}
        while current.parent_hash:
            ph = current.parent_hash
            if ph in seen or len(seen) > MAX_DEPTH:
                return await self._revoke_invalid(h)
            seen.add(ph)
            parent = await self._load(ph)
            if parent is None:
                # The parent is gone but this subtree escaped its revocation.
                return await self._revoke_invalid(node)
            if parent.revocation_pending:
                return None
            if parent.expired(now):
                return await self._revoke_invalid(ph)
            node, current = ph, parent
        return entry

    async def _revoke_invalid(self, h: str) -> TokenEntry | None:
        """Revoke a subtree found invalid during a lookup. A failure there must not turn
        the lookup's answer (not valid) into an error: the top stays tainted when the
        taint was written, and tidy retries. Always None (the lookup's answer)."""
        try:
            await self._revoke_tree_hash(h)
        except Exception:  # noqa: BLE001 - the answer is None whatever happened
            pass
        return None

    async def use(self, entry: TokenEntry) -> TokenEntry | None:
        """Consume one use of ``entry``. Unlimited tokens come back unchanged; a limited
        one comes back with the uses left (``-1`` on its last use: it is then unusable for
        any other request, and the caller revokes it with :meth:`revoke_tree` once the
        request that spent it has finished, as Vault does); None when it was already
        exhausted or revoked."""
        if entry.num_uses == 0:
            return entry
        h = await self.hash_id(entry.id)
        async with self._locks.hold(h):
            current = await self._load(h)
            if current is None or current.num_uses <= 0:
                return None
            last = current.num_uses == 1
            current = current.with_changes(num_uses=REVOCATION_PENDING if last else current.num_uses - 1)
            await self._put(h, current)
        return current

    # ---- renewal ------------------------------------------------------------------------

    async def renew(self, entry: TokenEntry, increment: int) -> TokenEntry:
        """Extend ``entry``'s lease by ``increment`` seconds (0: its last TTL; periodic
        tokens: one period), capped at creation + min(explicit max, max TTL).

        InvalidRequest "lease is not renewable" for a non-renewable or never-expiring
        token, "lease expired", "past the max TTL, cannot renew", "lease not found".
        """
        if increment < 0:
            raise InvalidRequest("increment must be positive")
        h = await self.hash_id(entry.id)
        async with self._locks.hold(h):
            current = await self._load(h)
            if current is None or current.revocation_pending:
                raise InvalidRequest("lease not found")
            now = self._now()
            if current.expire_time == 0:
                raise InvalidRequest("lease is not renewable")
            if current.expired(now):
                raise InvalidRequest("lease expired")
            if not current.renewable:
                raise InvalidRequest("lease is not renewable")
            ttl = calculate_ttl(
                self.ttls, increment=increment, current=current.current_lease_ttl(), period=current.period,
                explicit_max=current.explicit_max_ttl, start=current.creation_time, now=now,
            )
            renewed = current.with_changes(expire_time=now + ttl, last_renewal_time=now)
            await self._put(h, renewed)
        return renewed

    # ---- revocation ---------------------------------------------------------------------

    async def revoke_tree(self, token_id: str) -> None:
        """Revoke ``token_id``, every descendant and their accessors, children first;
        ``on_revoke`` runs for each. Revoking a missing token is not an error."""
        if token_id:
            await self._revoke_tree_hash(await self.hash_id(token_id))

    async def revoke_orphan(self, token_id: str) -> None:
        """Revoke only ``token_id``; its children stay valid and become orphans."""
        if not token_id:
            return
        h = await self.hash_id(token_id)
        if h in self._revoking:
            return
        self._revoking.add(h)
        try:
            await self._taint(h)
            entry = await self._load(h)
            if entry is not None and self._on_revoke is not None:
                await self._on_revoke(entry)
            children = [c for c in await self._view.list(f"{PARENT_PREFIX}{h}/") if not c.endswith("/")]
            async with self._locks.hold(h, *children):
                ops: list[WriteOp] = []
                for c in children:
                    ops.append(WriteOp(f"{PARENT_PREFIX}{h}/{c}", None))
                    child = await self._load(c)
                    if child is not None and child.parent_hash == h:
                        orphaned = child.with_changes(parent_hash="", orphan=True)
                        ops.append(WriteOp(ID_PREFIX + c, orphaned.encode()))
                ops.extend(self._delete_ops(h, entry, None))
                await self._write(ops)
        finally:
            self._revoking.discard(h)

    async def _taint(self, h: str) -> None:
        """Mark ``h`` revocation-pending so nothing can use it while it is torn down."""
        async with self._locks.hold(h):
            entry = await self._load(h)
            if entry is not None and not entry.revocation_pending:
                await self._put(h, entry.with_changes(num_uses=REVOCATION_PENDING))

    @staticmethod
    def _delete_ops(h: str, entry: TokenEntry | None, index_parent: str | None) -> list[WriteOp]:
        ops = [WriteOp(ID_PREFIX + h, None)]
        if index_parent:
            ops.append(WriteOp(f"{PARENT_PREFIX}{index_parent}/{h}", None))
        if entry is not None:
            if entry.accessor:
                ops.append(WriteOp(ACCESSOR_PREFIX + entry.accessor, None))
            if entry.parent_hash and entry.parent_hash != index_parent:
                ops.append(WriteOp(f"{PARENT_PREFIX}{entry.parent_hash}/{h}", None))
        return ops

    async def _revoke_tree_hash(self, top: str) -> int:
        """Depth-first, children before parents (Vault's revokeTreeInternal); the top is
        tainted first, which makes the whole subtree unusable at once. Returns the number
        of token entries removed."""
        if top in self._revoking:
            return 0
        self._revoking.add(top)
        try:
            await self._taint(top)
            count = 0
            stack: list[tuple[str, str | None]] = [(top, None)]
            seen = {top}
            while stack:
                node, index_parent = stack[-1]
                listed = [c for c in await self._view.list(f"{PARENT_PREFIX}{node}/") if not c.endswith("/")]
                fresh = [c for c in listed if c not in seen]
                looped = [c for c in listed if c in seen]
                if looped:  # a cycle can only come from corruption: drop those index keys
                    await self._write([WriteOp(f"{PARENT_PREFIX}{node}/{c}", None) for c in looped])
                if fresh:
                    seen.update(fresh)
                    stack.extend((c, node) for c in fresh)
                    continue
                stack.pop()
                count += await self._revoke_one(node, index_parent)
            return count
        finally:
            self._revoking.discard(top)

    async def _revoke_one(self, h: str, index_parent: str | None) -> int:
        entry = await self._load(h)
        if entry is not None and self._on_revoke is not None:
            await self._on_revoke(entry)
        async with self._locks.hold(h):
            await self._write(self._delete_ops(h, entry, index_parent))
        return 0 if entry is None else 1

    # ---- housekeeping -------------------------------------------------------------------

    async def tidy(self) -> int:
        """Revoke every expired token (with its tree), finish interrupted revocations,
        revoke subtrees whose parent vanished and drop dangling index keys.
        Returns the number of tokens revoked."""
        count = 0
        now = self._now()
        for h in [k for k in await self._view.list(ID_PREFIX) if not k.endswith("/")]:
            if h in self._revoking:
                continue
            try:
                entry = await self._load(h)
            except InternalError:
                continue  # never delete what cannot be read
            if entry is None:
                continue  # already gone with an earlier tree
            dangling = bool(entry.parent_hash) and await self._view.get(ID_PREFIX + entry.parent_hash) is None
            if entry.revocation_pending or entry.expired(now) or dangling:
                count += await self._revoke_tree_hash(h)
        stale: list[WriteOp] = []
        for acc in await self._view.list(ACCESSOR_PREFIX):
            if acc.endswith("/"):
                continue
            found = await self._view.get(ACCESSOR_PREFIX + acc)
            if found is not None and await self._view.get(ID_PREFIX + found.value.decode("ascii", "replace")) is None:
                stale.append(WriteOp(ACCESSOR_PREFIX + acc, None))
        for folder in await self._view.list(PARENT_PREFIX):
            if not folder.endswith("/"):
                continue
            for child in await self._view.list(PARENT_PREFIX + folder):
                if not child.endswith("/") and await self._view.get(ID_PREFIX + child) is None:
                    stale.append(WriteOp(PARENT_PREFIX + folder + child, None))
        if stale:
            await self._write(stale)
        return count

    async def accessors(self) -> list[str]:
        """Every accessor in the store, sorted (for ``auth/token/accessors``)."""
        return [a for a in await self._view.list(ACCESSOR_PREFIX) if not a.endswith("/")]

    def backend(self) -> Backend:
        """The ``auth/token/`` mount's framework backend (built once)."""
        if self._backend is None:
            self._backend = build_backend(self)
        return self._backend
