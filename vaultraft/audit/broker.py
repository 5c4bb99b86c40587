"""The audit broker: the set of enabled audit devices and the fan-out of every event.

The broker knows nothing of storage. Core persists the audit table (path, type, options,
description, local, salt) behind the barrier and calls :meth:`AuditBroker.enable` for each
entry on unseal, and again whenever ``sys/audit/<path>`` enables a new device.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog

from vaultraft.audit.entry import AuthInfo, request_entry, response_entry
from vaultraft.audit.file_device import FileDevice
from vaultraft.audit.hashing import Salt
from vaultraft.logical.errors import InternalError, InvalidRequest
from vaultraft.logical.request import Request, Response

log = structlog.get_logger("vaultraft.audit")

DEVICE_TYPES = ("file",)


class AuditFailed(InternalError):
    """Audit devices are enabled and none recorded the event: the request must not proceed."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("no audit backend succeeded in logging the request",)))


@dataclass(frozen=True)
class _Enabled:
    path: str
    device_type: str
    description: str
    local: bool
    device: FileDevice


def normalize_path(path: str) -> str:
    """``file`` → ``file/``; raises InvalidRequest for an empty path (Vault's rule)."""
    p = path.strip().lstrip("/")
    if not p.endswith("/"):
        p += "/"
    if p == "/":
        raise InvalidRequest("backend path must be specified")
    return p


class AuditBroker:
    """Enabled audit devices by path, and the fan-out of request/response events to them."""

    def __init__(self) -> None:
        self._devices: dict[str, _Enabled] = {}

    # ------------------------------------------------------------------ table

    def enable(
        self,
        path: str,
        device_type: str,
        options: Mapping[str, Any],
        description: str,
        salt: bytes,
        local: bool,
    ) -> None:
        """Create and register a device at ``path`` (normalized to end in ``/``).

        Raises InvalidRequest for an unknown type, a path that equals or nests with an
        enabled one (``path already in use``), bad options, or a file that cannot be opened.
        """
        p = normalize_path(path)
        if device_type not in DEVICE_TYPES:
            raise InvalidRequest(f'unknown audit backend type: "{device_type}"')
        for existing in self._devices:
            if existing.startswith(p) or p.startswith(existing):
                raise InvalidRequest("path already in use")
        device = FileDevice(p, options, Salt(salt))
        self._devices[p] = _Enabled(p, device_type, description, local, device)
        log.info("enabled audit device", path=p, type=device_type)

    def disable(self, path: str) -> bool:
        """Remove the device at ``path``; False if none was there (Vault answers 204 anyway)."""
        p = normalize_path(path)
        entry = self._devices.pop(p, None)
        if entry is None:
            return False
        entry.device.close()
        log.info("disabled audit device", path=p)
        return True

    def list(self) -> dict[str, dict[str, Any]]:
        """``sys/audit``'s data: ``{"file/": {"type", "description", "options", "local", "path"}}``."""
        return {
            p: {
                "type": e.device_type,
                "description": e.description,
                "options": dict(e.device.options),
                "local": e.local,
                "path": p,
            }
            for p, e in self._devices.items()
        }

    def is_enabled(self, path: str) -> bool:
        """Whether a device is enabled at ``path``."""
        return normalize_path(path) in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def hash(self, path: str, value: str) -> str:
        """``sys/audit-hash``: ``value`` HMAC'd with the salt of the device at ``path``."""
        p = normalize_path(path)
        entry = self._devices.get(p)
        if entry is None:
            raise InvalidRequest(f'unknown audit backend "{p}"')
        return entry.device.hash(value)

    def reload(self) -> builtins.list[str]:
        """Reopen every device's file (SIGHUP); returns one message per device that failed."""
        failures: builtins.list[str] = []
        for p, e in self._devices.items():
            try:
                e.device.reload()
            except OSError as err:
                failures.append(f"audit device {p}: cannot reopen {e.device.file_path}: {err.strerror or err}")
        return failures

    def close(self) -> None:
        """Close every device and forget them (on seal)."""
        for e in self._devices.values():
            e.device.close()
        self._devices.clear()

    # ------------------------------------------------------------------ events

    async def log_request(
        self,
        req: Request,
        auth: AuthInfo | None,
        error: str | None,
        *,
        non_hmac_request_keys: Collection[str] = (),
    ) -> None:
        """Record ``req`` on every device; raises AuditFailed if devices exist and none succeeded."""
        if not self._devices:
            return
        entry = request_entry(req, auth, error, datetime.now(timezone.utc))
        await self._fan_out(entry, "request", non_hmac_request_keys, ())

    async def log_response(
        self,
        req: Request,
        resp: Response | None,
        auth: AuthInfo | None,
        error: str | None,
        *,
        non_hmac_request_keys: Collection[str] = (),
        non_hmac_response_keys: Collection[str] = (),
    ) -> None:
        """Record the answer to ``req`` on every device; AuditFailed if none succeeded."""
        if not self._devices:
            return
        entry = response_entry(req, resp, auth, error, datetime.now(timezone.utc))
        await self._fan_out(entry, "response", non_hmac_request_keys, non_hmac_response_keys)

    async def _fan_out(
        self,
        entry: dict[str, Any],
        kind: str,
        non_hmac_request_keys: Collection[str],
        non_hmac_response_keys: Collection[str],
    ) -> None:
        devices = list(self._devices.values())
        results = await asyncio.gather(
            *(
                e.device.log(
                    entry,
                    non_hmac_request_keys=non_hmac_request_keys,
                    non_hmac_response_keys=non_hmac_response_keys,
                )
                for e in devices
            ),
            return_exceptions=True,
        )
        ok = 0
        for e, result in zip(devices, results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                # Only the error's class and errno text: never the entry, which may be raw.
                reason = result.strerror if isinstance(result, OSError) and result.strerror else type(result).__name__
                log.error("audit device failed", path=e.path, kind=kind, error=reason)
            else:
                ok += 1
        if ok == 0:
            raise AuditFailed(f"no audit backend succeeded in logging the {kind}")
