"""ACL policies persisted behind the barrier, and the ACL objects built from them.

``root`` is implicit and immutable; ``default`` is written at init and may be edited but
not deleted, as in Vault. ACLs are cached per set of policy names and the cache is
dropped on every policy change.
"""

from __future__ import annotations

import json

from vaultraft.logical import StorageEntry, StorageView
from vaultraft.policy import (
    ACL,
    Policy,
    check_policy_deletable,
    decode_policy_text,
    default_policy_text,
    load_policy,
    parse_policy,
)

class PolicyStore:
    """CRUD of named ACL policies under a storage view (``sys/policy/``)."""

    def __init__(self, view: StorageView) -> None:
        self._view = view
        self._cache: dict[str, Policy] = {}
        self._acls: dict[frozenset[str], ACL] = {}

    async def setup(self) -> None:
        """Create the ``default`` policy if it is missing (first unseal after init)."""
        if await self._view.get("default") is None:
            await self.put("default", default_policy_text())

    async def get(self, name: str) -> Policy | None:
        """The named policy, or None. ``root`` has no stored text."""
        name = name.lower()
        if name in self._cache:
            return self._cache[name]
        e = await self._view.get(name)
        if e is None:
            return None
        policy = load_policy(name, json.loads(e.value)["policy"])
        self._cache[name] = policy
        return policy

    async def put(self, name: str, text: str) -> None:
        """Parse and store ``text`` as ``name``; InvalidRequest when it does not parse."""
        text = decode_policy_text(text)
        policy = parse_policy(name, text)
        name = policy.name
        await self._view.put(StorageEntry(name, json.dumps({"name": name, "policy": text}).encode()))
        self._cache[name] = policy
        self._acls.clear()

    async def delete(self, name: str) -> None:
        """Delete ``name``; ``root`` and ``default`` cannot be deleted."""
        name = name.strip().lower()
        check_policy_deletable(name)
        await self._view.delete(name)
        self._cache.pop(name, None)
        self._acls.clear()

    async def names(self) -> list[str]:
        """Every policy name, ``root`` included, sorted."""
        return sorted(set(await self._view.list("")) | {"root"})

    async def acl(self, names: tuple[str, ...] | list[str]) -> ACL:
        """The ACL for a token holding ``names`` (missing policies are ignored, as Vault)."""
        key = frozenset(n.lower() for n in names)
        cached = self._acls.get(key)
        if cached is not None:
            return cached
        if "root" in key:
            acl = ACL.root()
        else:
            policies = [p for p in [await self.get(n) for n in sorted(key)] if p is not None]
            acl = ACL(policies)
        self._acls[key] = acl
        return acl

    def invalidate(self) -> None:
        """Drop caches (after storage changed underneath, e.g. a snapshot restore)."""
        self._cache.clear()
        self._acls.clear()
