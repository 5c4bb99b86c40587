"""The mount table and the router: which backend serves which path prefix.

Secret engine mounts live at ``<path>``, auth mounts at ``auth/<path>``, core's own
backend at ``sys/``. Routing is by the longest mount prefix. Each mount's data sits under
``logical/<uuid>/`` (secret engines) or ``auth/<uuid>/`` (auth methods) in the barrier, so
a backend only ever sees its own view.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vaultraft.framework import Backend
from vaultraft.logical import InvalidRequest, StorageEntry, StorageView

RESERVED = ("sys/", "auth/", "cubbyhole/", "identity/")
PROTECTED_TYPES = ("system", "cubbyhole", "token", "identity")
_PATH_RE = re.compile(r"[\w.@+=:,~%-]+(/[\w.@+=:,~%-]+)*/")


@dataclass(frozen=True)
class MountConfig:
    """Per-mount tunables (0 means: use the system default)."""

    default_lease_ttl: int = 0
    max_lease_ttl: int = 0
    force_no_cache: bool = False
    listing_visibility: str = ""
    audit_non_hmac_request_keys: tuple[str, ...] = ()
    audit_non_hmac_response_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class MountEntry:
    """One row of the mount (or auth) table, as persisted."""

    path: str
    type: str
    description: str = ""
    uuid: str = ""
    accessor: str = ""
    local: bool = False
    seal_wrap: bool = False
    options: dict[str, str] = field(default_factory=dict)
    config: MountConfig = field(default_factory=MountConfig)

    def to_json(self) -> dict[str, Any]:
        """Vault's ``sys/mounts`` shape for this entry."""
        return {
            "accessor": self.accessor,
            "config": {
                "default_lease_ttl": self.config.default_lease_ttl,
                "max_lease_ttl": self.config.max_lease_ttl,
                "force_no_cache": self.config.force_no_cache,
                **({"listing_visibility": self.config.listing_visibility} if self.config.listing_visibility else {}),
                **({"audit_non_hmac_request_keys": list(self.config.audit_non_hmac_request_keys)}
                   if self.config.audit_non_hmac_request_keys else {}),
                **({"audit_non_hmac_response_keys": list(self.config.audit_non_hmac_response_keys)}
                   if self.config.audit_non_hmac_response_keys else {}),
            },
            "description": self.description,
            "external_entropy_access": False,
            "local": self.local,
            "options": dict(self.options) if self.options else None,
            "plugin_version": "",
            "running_plugin_version": "",
            "running_sha256": "",
            "seal_wrap": self.seal_wrap,
            "type": self.type,
            "uuid": self.uuid,
        }

    def serialize(self) -> dict[str, Any]:
        """A JSON-safe dict for the persisted table."""
        d = asdict(self)
        d["config"]["audit_non_hmac_request_keys"] = list(self.config.audit_non_hmac_request_keys)
        d["config"]["audit_non_hmac_response_keys"] = list(self.config.audit_non_hmac_response_keys)
        return d

    @staticmethod
    def deserialize(d: dict[str, Any]) -> "MountEntry":
        """Inverse of :meth:`serialize`."""
        cfg = dict(d.get("config") or {})
        cfg["audit_non_hmac_request_keys"] = tuple(cfg.get("audit_non_hmac_request_keys") or ())
        cfg["audit_non_hmac_response_keys"] = tuple(cfg.get("audit_non_hmac_response_keys") or ())
        return MountEntry(**{**d, "config": MountConfig(**cfg), "options": dict(d.get("options") or {})})


def new_entry(path: str, mount_type: str, *, prefix_for_accessor: str | None = None, **kw: Any) -> MountEntry:
    """A fresh entry with a new uuid and accessor (``kv_1a2b3c4d`` as Vault)."""
    acc = f"{prefix_for_accessor or mount_type}_{secrets.token_hex(4)}"
    return MountEntry(path=path, type=mount_type, uuid=str(uuid.uuid4()), accessor=acc, **kw)


def normalize_path(path: str) -> str:
    """A mount path with exactly one trailing slash; InvalidRequest when malformed."""
    p = path.strip().strip("/") + "/"
    if p == "/" or not _PATH_RE.fullmatch(p) or "//" in p or "/../" in "/" + p:
        raise InvalidRequest(f"invalid mount path {path!r}")
    return p


class MountTable:
    """The persisted list of mounts of one kind (``mounts`` or ``auth``).

    Non-local entries live at ``core/<name>`` (replicated); local entries at
    ``core/local-<name>`` (never shipped to performance secondaries).
    """

    def __init__(self, name: str, replicated: StorageView, local: StorageView) -> None:
        self.name = name
        self._replicated = replicated
        self._local = local
        self._stored: dict[str, bytes] = {}  # each half as last read or written
        self.entries: dict[str, MountEntry] = {}

    async def load(self) -> bool:
        """Read both halves; False when nothing was stored yet."""
        found = False
        self.entries = {}
        self._stored = {}
        for view, key in ((self._replicated, self.name), (self._local, "local-" + self.name)):
            e = await view.get(key)
            if e is None:
                continue
            found = True
            self._stored[key] = e.value
            for d in json.loads(e.value):
                m = MountEntry.deserialize(d)
                self.entries[m.path] = m
        return found

    async def save(self) -> None:
        """Write the halves that changed since they were loaded or saved (each one batch):
        a local mount's change never writes the replicated table, which on a performance
        secondary belongs to the primary."""
        stored = self._stored
        rep = json.dumps([m.serialize() for m in self.entries.values() if not m.local], sort_keys=True).encode()
        loc = json.dumps([m.serialize() for m in self.entries.values() if m.local], sort_keys=True).encode()
        for view, key, value in ((self._replicated, self.name, rep), (self._local, "local-" + self.name, loc)):
            if stored.get(key) != value:
                await view.put(StorageEntry(key, value))
                stored[key] = value

    def conflict(self, path: str) -> str | None:
        """An existing mount that ``path`` would overlap (equal, parent or child)."""
        for existing in self.entries:
            if path.startswith(existing) or existing.startswith(path):
                return existing
        return None

    def update(self, entry: MountEntry) -> None:
        """Insert or replace ``entry`` in memory (call :meth:`save` after)."""
        self.entries[entry.path] = entry

    def tuned(self, path: str, **changes: Any) -> MountEntry:
        """A copy of the entry at ``path`` with ``changes`` applied (not yet stored)."""
        return replace(self.entries[path], **changes)


@dataclass
class Route:
    """A live mount: its table entry, running backend and storage view."""

    prefix: str  # full request prefix: "secret/", "auth/token/", "sys/"
    entry: MountEntry
    backend: Backend
    view: StorageView | None


class Router:
    """Longest-prefix routing from a request path to a live mount."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def mount(self, route: Route) -> None:
        """Add or replace the route at ``route.prefix`` (ValueError unless it ends in "/")."""
        if not route.prefix.endswith("/") or route.prefix == "/":
            raise ValueError(f"a route prefix ends in a slash: {route.prefix!r}")
        self._routes[route.prefix] = route

    def unmount(self, prefix: str) -> None:
        """Remove the route at ``prefix`` if present."""
        self._routes.pop(prefix, None)

    def clear(self) -> None:
        """Forget every route (on seal)."""
        self._routes.clear()

    def match(self, path: str) -> Route | None:
        """The route with the longest prefix of ``path`` (``path`` may lack the slash)."""
        probe = path if path.endswith("/") else path + "/"
        routes = self._routes
        end = len(probe)
        while end > 0:  # every prefix ending in a slash, longest first: a dict probe each
            route = routes.get(probe[:end])
            if route is not None:
                return route
            end = probe.rfind("/", 0, end - 1) + 1
        return None

    def routes(self) -> list[Route]:
        """Every live route."""
        return list(self._routes.values())
