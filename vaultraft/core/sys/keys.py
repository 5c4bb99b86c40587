"""Authenticated key endpoints: ``sys/rotate/config`` (and automatic rotation),
``sys/rekey/backup``, ``sys/rekey/recovery-key-backup`` and ``sys/decode-token``.

The share-collecting endpoints (``sys/rekey/*``, ``sys/rekey-recovery-key/*``,
``sys/generate-root/*``) are unauthenticated in Vault and are served by
:mod:`vaultraft.http.sys_keys`; their state machines live in :mod:`vaultraft.core.key_ops`.

Automatic rotation: the rotation config is stored behind the barrier at
``core/rotation-config``; :func:`maybe_auto_rotate` is called by the active node's
periodic tidy and installs a new keyring term once the active term has served
``max_operations`` encryptions on this node or is older than ``interval``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import structlog

from vaultraft.core.views import BarrierView
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, Operation, PermissionDenied, Request, Response, StorageEntry

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.core.keys")

ROTATION_CONFIG_KEY = "rotation-config"  # under core/
MAX_OPERATIONS = 3_865_470_566  # Vault's absoluteOperationMaximum (10% shy of NIST's 2^32)
MIN_OPERATIONS = 1_000_000
MIN_INTERVAL = 24 * 3600


@dataclass(frozen=True)
class RotationConfig:
    """Vault's KeyRotationConfig: rotate after ``max_operations`` encryptions or when the
    active term is ``interval`` seconds old (0: never by age); ``enabled`` false stops it."""

    max_operations: int = MAX_OPERATIONS
    interval: int = 0
    enabled: bool = True

    def to_bytes(self) -> bytes:
        """The stored JSON."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> "RotationConfig":
        """Parse :meth:`to_bytes` output (defaults for missing fields)."""
        obj = json.loads(raw)
        return RotationConfig(int(obj.get("max_operations", MAX_OPERATIONS)), int(obj.get("interval", 0)),
                              bool(obj.get("enabled", True)))


def go_duration(seconds: int) -> str:
    """Go's time.Duration.String() for whole seconds: ``4320h0m0s``, ``0s``."""
    if seconds <= 0:
        return "0s"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _view(core: "Core") -> BarrierView:
    return BarrierView(core.barrier, "core/", local=False)


async def rotation_config(core: "Core") -> RotationConfig:
    """The stored rotation config, or Vault's default."""
    found = await _view(core).get(ROTATION_CONFIG_KEY)
    if found is None:
        return RotationConfig()
    try:
        return RotationConfig.from_bytes(found.value)
    except (ValueError, TypeError, AttributeError):
        log.warning("rotation_config_unreadable", action="using the default")
        return RotationConfig()


def rotation_due(cfg: RotationConfig, install_time: dt.datetime, encryptions: int, now: dt.datetime) -> str:
    """Why the active term must be rotated now ("" when it need not be)."""
    if not cfg.enabled:
        return ""
    if encryptions >= cfg.max_operations:
        return "max_operations"
    if cfg.interval and (now - install_time).total_seconds() >= cfg.interval:
        return "interval"
    return ""


async def maybe_auto_rotate(core: "Core") -> int | None:
    """On the active node: rotate the keyring if the config says it is due. Returns the
    new term, or None. Never raises for a sealed or standby node (nothing to do)."""
    if core.sealed or not core.active:
        return None
    cfg = await rotation_config(core)
    term, install_time, encryptions = core.barrier.key_status()
    reason = rotation_due(cfg, install_time, encryptions, dt.datetime.now(dt.timezone.utc))
    if not reason:
        return None
    new_term = await core.barrier.rotate()
    log.info("barrier_key_auto_rotated", reason=reason, old_term=term, term=new_term, encryptions=encryptions)
    return new_term


def _require_sudo(req: Request) -> None:
    if not (req.sudo or req.is_root):
        raise PermissionDenied()


def paths(core: "Core") -> list[Path]:
    """The authenticated key paths of the sys backend."""

    async def read_rotate_config(req: Request, d: FieldData) -> Response:
        cfg = await rotation_config(core)
        return Response(data={"max_operations": cfg.max_operations, "interval": go_duration(cfg.interval),
                              "enabled": cfg.enabled})

    async def write_rotate_config(req: Request, d: FieldData) -> None:
        cfg = await rotation_config(core)
        max_ops, ok = d.get_ok("max_operations")
        if ok:
            cfg = RotationConfig(int(max_ops), cfg.interval, cfg.enabled)
        interval, ok = d.get_ok("interval")
        if ok:
            cfg = RotationConfig(cfg.max_operations, int(interval), cfg.enabled)
        enabled, ok = d.get_ok("enabled")
        if ok:
            cfg = RotationConfig(cfg.max_operations, cfg.interval, bool(enabled))
        if cfg.interval and cfg.interval < MIN_INTERVAL:
            raise InvalidRequest("interval must be greater or equal to 24h0m0s")
        if not MIN_OPERATIONS <= cfg.max_operations <= MAX_OPERATIONS:
            raise InvalidRequest(f"max_operations must be in the range [{MIN_OPERATIONS},{MAX_OPERATIONS}]")
        await _view(core).put(StorageEntry(ROTATION_CONFIG_KEY, cfg.to_bytes()))
        await maybe_auto_rotate(core)

    def backup_paths(pattern: str, recovery: bool) -> Path:
        async def read(req: Request, d: FieldData) -> Response:
            from vaultraft.core.key_ops import active_key_ops

            _require_sudo(req)
            return Response(data=await (await active_key_ops(core)).read_backup(recovery))

        async def delete(req: Request, d: FieldData) -> None:
            from vaultraft.core.key_ops import active_key_ops

            _require_sudo(req)
            await (await active_key_ops(core)).delete_backup(recovery)

        what = "recovery key" if recovery else "unseal key"
        return Path(pattern, {Operation.READ: read, Operation.DELETE: delete},
                    synopsis=f"Read or delete the backup of the PGP-encrypted {what} shares of the last rekey.")

    async def decode(req: Request, d: FieldData) -> Response:
        from vaultraft.core.key_ops import decode_token

        encoded, otp = d.get("encoded_token"), d.get("otp")
        if not encoded or not otp:
            raise InvalidRequest("encoded_token and otp are required")
        try:
            token = decode_token(encoded, otp)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequest(f"error decoding token: {e}") from None
        return Response(data={"token": token})

    rotate_fields: dict[str, Any] = {
        "max_operations": Field(FieldType.INT, "Number of encryptions after which the key is rotated.",
                                default=MAX_OPERATIONS),
        "interval": Field(FieldType.DURATION, "Age of the active key after which it is rotated (at least 24h)."),
        "enabled": Field(FieldType.BOOL, "Whether automatic rotation is enabled.", default=True),
    }
    return [
        Path(r"rotate/config", {Operation.READ: read_rotate_config, Operation.UPDATE: write_rotate_config},
             rotate_fields, synopsis="Configures automatic rotation of the backend encryption key."),
        backup_paths(r"rekey/backup", False),
        backup_paths(r"rekey/recovery-key-backup", True),
        backup_paths(r"rekey-recovery-key/backup", True),
        Path(r"decode-token", {Operation.UPDATE: decode},
             {"encoded_token": Field(FieldType.STRING, "The encoded token (from generate-root)."),
              "otp": Field(FieldType.STRING, "The one-time password used to start the generation.")},
             synopsis="Decodes the encoded token with the otp."),
    ]
