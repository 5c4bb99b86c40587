"""KV v2 values and their storage layout.

Layout under the mount's view (all values JSON):

* ``config`` - the mount configuration (:class:`MountConfig`).
* ``metadata/<path>`` - one :class:`KeyMeta` per secret; listing ``metadata/`` lists secrets.
* ``versions/<sha256(path)>/<n>`` - the data of version ``n`` of a secret.

Every change of a secret is one ``write_batch``: the new metadata, any new version data
and any version data it makes obsolete (pruning, destroy) together, so a crash or a Raft
log entry never leaves metadata pointing at missing data.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from vaultraft.engines.kv.common import decode_json, encode_json, format_time, to_nanos
from vaultraft.logical import StorageView, WriteOp

CONFIG_KEY = "config"
META_PREFIX = "metadata/"
VERSION_PREFIX = "versions/"
DEFAULT_MAX_VERSIONS = 10
# delete_version_after stored in the mount config when the feature is disabled mount-wide.
DVA_DISABLED = -1
_FORMAT = 1
_LOCK_STRIPES = 256


@dataclass(frozen=True)
class MountConfig:
    """Mount-wide settings (``<mount>/config``). ``delete_version_after`` is seconds:
    0 unset, ``DVA_DISABLED`` disables per-key settings too."""

    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: int = 0

    @property
    def dva_disabled(self) -> bool:
        """Whether delete_version_after is switched off for every key of the mount."""
        return self.delete_version_after < 0


@dataclass(frozen=True)
class VersionMeta:
    """One version's bookkeeping; times are integer nanoseconds since the epoch."""

    created_ns: int
    deletion_ns: int | None = None
    destroyed: bool = False

    def is_deleted(self, now_ns: int) -> bool:
        """Soft-deleted as of ``now_ns`` (a deletion time in the future is not yet)."""
        return self.deletion_ns is not None and self.deletion_ns < now_ns

    def hidden(self, now_ns: int) -> bool:
        """Whether reads of this version answer 404 (deleted or destroyed)."""
        return self.destroyed or self.is_deleted(now_ns)

    def to_json(self) -> dict[str, Any]:
        """Vault's per-version metadata fields."""
        return {
            "created_time": format_time(self.created_ns),
            "deletion_time": format_time(self.deletion_ns),
            "destroyed": self.destroyed,
        }


@dataclass(frozen=True)
class KeyMeta:
    """A secret's metadata: its live versions and per-key settings."""

    key: str
    versions: Mapping[int, VersionMeta] = field(default_factory=dict)
    current_version: int = 0
    oldest_version: int = 0
    created_ns: int | None = None
    updated_ns: int | None = None
    max_versions: int = 0
    cas_required: bool = False
    delete_version_after: int = 0
    custom_metadata: Mapping[str, str] | None = None

    def version_body(self, n: int, vm: VersionMeta) -> dict[str, Any]:
        """The ``metadata`` block of data/subkeys reads and the body of writes."""
        return {
            **vm.to_json(),
            "custom_metadata": None if self.custom_metadata is None else dict(self.custom_metadata),
            "version": n,
        }


def deletion_time(created_ns: int, mount_dva: int, meta_dva: int) -> int | None:
    """``created`` plus the smaller non-zero of the mount and key delete_version_after."""
    if mount_dva == 0 and meta_dva == 0:
        return None
    chosen = meta_dva
    if (mount_dva != 0 and mount_dva < chosen) or chosen == 0:
        chosen = mount_dva
    return created_ns + chosen * 1_000_000_000


def version_deletion(config: MountConfig, meta: KeyMeta, at_ns: int) -> int | None:
    """The automatic deletion time of a version written or undeleted at ``at_ns``."""
    if config.dva_disabled:
        return None
    return deletion_time(at_ns, config.delete_version_after, meta.delete_version_after)


def add_version(meta: KeyMeta, vm: VersionMeta, config_max: int) -> tuple[KeyMeta, list[int]]:
    """Append ``vm`` as the next version and slide the max-versions window.

    Returns the new metadata and the version numbers whose data must be deleted. The
    effective limit is the larger of the key's and the mount's max_versions, or 10 when
    neither is set (Vault's behaviour, not its documentation).
    """
    current = meta.current_version + 1
    versions = dict(meta.versions)
    versions[current] = vm
    limit = max(meta.max_versions, config_max) or DEFAULT_MAX_VERSIONS
    oldest = meta.oldest_version
    pruned: list[int] = []
    if current - oldest >= limit:
        to_delete = current - limit
        for n in range(oldest, to_delete + 1):
            if versions.pop(n, None) is not None:
                pruned.append(n)
        oldest = to_delete + 1
    new = KeyMeta(  # every field spelled out: dataclasses.replace costs a write ~1 %
        key=meta.key,
        versions=versions,
        current_version=current,
        oldest_version=oldest,
        created_ns=meta.created_ns if meta.created_ns is not None else vm.created_ns,
        updated_ns=vm.created_ns,
        max_versions=meta.max_versions,
        cas_required=meta.cas_required,
        delete_version_after=meta.delete_version_after,
        custom_metadata=meta.custom_metadata,
    )
    return new, pruned


@functools.lru_cache(maxsize=4096)
def _path_hash(path: str) -> str:
    """hex SHA-256 of a secret's path (pure; a write asks for it several times)."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()


def version_prefix(path: str) -> str:
    """The storage folder holding every version of ``path``."""
    return VERSION_PREFIX + _path_hash(path) + "/"


def version_key(path: str, n: int) -> str:
    """The storage key of version ``n`` of ``path``."""
    return version_prefix(path) + str(n)


def _config_to_json(c: MountConfig) -> dict[str, Any]:
    return {"f": _FORMAT, "max_versions": c.max_versions, "cas_required": c.cas_required,
            "delete_version_after": c.delete_version_after}


def _meta_to_json(m: KeyMeta) -> dict[str, Any]:
    return {
        "f": _FORMAT,
        "key": m.key,
        "versions": {str(n): [v.created_ns, v.deletion_ns, v.destroyed] for n, v in sorted(m.versions.items())},
        "current_version": m.current_version,
        "oldest_version": m.oldest_version,
        "created_ns": m.created_ns,
        "updated_ns": m.updated_ns,
        "max_versions": m.max_versions,
        "cas_required": m.cas_required,
        "delete_version_after": m.delete_version_after,
        "custom_metadata": None if m.custom_metadata is None else dict(m.custom_metadata),
    }


def _meta_from_json(o: dict[str, Any]) -> KeyMeta:
    versions = {int(n): VersionMeta(int(c), None if d is None else int(d), bool(x))
                for n, (c, d, x) in o["versions"].items()}
    return KeyMeta(
        key=o["key"],
        versions=versions,
        current_version=int(o["current_version"]),
        oldest_version=int(o["oldest_version"]),
        created_ns=o["created_ns"],
        updated_ns=o["updated_ns"],
        max_versions=int(o["max_versions"]),
        cas_required=bool(o["cas_required"]),
        delete_version_after=int(o["delete_version_after"]),
        custom_metadata=o["custom_metadata"],
    )


async def load_config(view: StorageView) -> MountConfig:
    """The mount configuration, or the defaults when never written."""
    e = await view.get(CONFIG_KEY)
    if e is None:
        return MountConfig()
    o = decode_json(e.value)
    return MountConfig(int(o["max_versions"]), bool(o["cas_required"]), int(o["delete_version_after"]))


def config_op(c: MountConfig) -> WriteOp:
    """The write of a mount configuration."""
    return WriteOp(CONFIG_KEY, encode_json(_config_to_json(c)))


async def load_meta(view: StorageView, path: str) -> KeyMeta | None:
    """A secret's metadata, or None when the secret does not exist."""
    if path == "":
        return None
    e = await view.get(META_PREFIX + path)
    return None if e is None else _meta_from_json(decode_json(e.value))


async def meta_exists(view: StorageView, path: str) -> bool:
    """Whether the secret at ``path`` exists (has metadata), without decoding it."""
    return path != "" and await view.get(META_PREFIX + path) is not None


def meta_op(m: KeyMeta) -> WriteOp:
    """The write of a secret's metadata."""
    return WriteOp(META_PREFIX + m.key, encode_json(_meta_to_json(m)))


def version_op(path: str, n: int, data: Mapping[str, Any]) -> WriteOp:
    """The write of version ``n``'s data."""
    return WriteOp(version_key(path, n), encode_json({"f": _FORMAT, "data": data}))


async def load_version_data(view: StorageView, path: str, n: int) -> dict[str, Any] | None:
    """Version ``n``'s data, or None when it is not stored."""
    e = await view.get(version_key(path, n))
    if e is None:
        return None
    data: dict[str, Any] = decode_json(e.value)["data"]
    return data


class KVContext:
    """Per-mount state shared by the KV v2 handlers: the clock and per-key write locks.

    The locks serialise read-modify-write of one secret inside this process (Vault's
    ``locksutil``); each change is still a single atomic storage batch.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]

    def now_ns(self) -> int:
        """The injected clock in integer nanoseconds."""
        return to_nanos(self._now())

    def lock(self, path: str) -> asyncio.Lock:
        """The lock guarding ``path`` (striped; distinct paths may share one)."""
        return self._locks[int(_path_hash(path)[:8], 16) % _LOCK_STRIPES]
