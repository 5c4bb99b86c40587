"""The persisted table of audit devices, replayed into the broker on every unseal."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from vaultraft.audit import AuditBroker
from vaultraft.logical import InvalidRequest, StorageEntry, StorageView, Unavailable

log = structlog.get_logger("vaultraft.audit")


@dataclass(frozen=True)
class AuditEntry:
    """One enabled audit device. ``salt`` keys its HMACs and lives only behind the barrier."""

    path: str
    type: str
    description: str = ""
    options: dict[str, str] = field(default_factory=dict)
    local: bool = False
    salt: str = ""  # base64


class AuditTable:
    """Enable/disable audit devices and keep the table in storage (``core/audit``)."""

    def __init__(self, replicated: StorageView, local: StorageView, broker: AuditBroker) -> None:
        self._replicated = replicated
        self._local = local
        self._broker = broker
        self.entries: dict[str, AuditEntry] = {}

    async def load(self) -> None:
        """Read the table and enable every device in the broker."""
        self.entries = {}
        for view, key in ((self._replicated, "audit"), (self._local, "local-audit")):
            e = await view.get(key)
            if e is None:
                continue
            for d in json.loads(e.value):
                entry = AuditEntry(**d)
                self.entries[entry.path] = entry
                try:
                    self._broker.enable(entry.path, entry.type, dict(entry.options), entry.description,
                                        base64.b64decode(entry.salt), entry.local)
                except InvalidRequest as e:
                    # As Vault: a node that cannot audit does not serve (fail closed).
                    log.error("audit_device_enable_failed", path=entry.path, error=str(e))
                    raise Unavailable(f"failed to set up audit device {entry.path}: {e}") from None

    async def _save(self) -> None:
        rep = [asdict(e) for e in self.entries.values() if not e.local]
        loc = [asdict(e) for e in self.entries.values() if e.local]
        await self._replicated.put(StorageEntry("audit", json.dumps(rep).encode()))
        await self._local.put(StorageEntry("local-audit", json.dumps(loc).encode()))

    async def enable(self, path: str, device_type: str, options: dict[str, Any], description: str, local: bool) -> None:
        """Enable a device at ``path`` (which ends in '/'); InvalidRequest if it cannot be."""
        if path in self.entries:
            raise InvalidRequest("path already in use")
        opts = {str(k): str(v) for k, v in (options or {}).items()}
        salt = os.urandom(32)
        self._broker.enable(path, device_type, opts, description, salt, local)
        self.entries[path] = AuditEntry(path, device_type, description, opts, local, base64.b64encode(salt).decode())
        try:
            await self._save()
        except BaseException:
            self.entries.pop(path, None)
            self._broker.disable(path)
            raise

    async def disable(self, path: str) -> None:
        """Disable the device at ``path``; disabling a missing device is not an error."""
        if path not in self.entries:
            return
        del self.entries[path]
        self._broker.disable(path)
        await self._save()
