"""What the seal layer keeps between calls: the stored seal records, the configured
seals, which of them is in force, and seal wrapping.

Stored records (outside the barrier, so they can be read while sealed):

* ``core/seal-config`` — the barrier seal config (Vault's JSON); ``type`` says which seal
  is in force: ``shamir`` or ``pkcs11``.
* ``core/root-key`` — Shamir: the root key wrapped by the key the unseal shares combine to.
* ``core/hsm/root-key`` — pkcs11: the root key encrypted by the HSM (the stored key).
* ``core/recovery-key`` — pkcs11: the recovery key encrypted by the HSM, so recovery shares
  can be verified while sealed (unseal, migration) and authorise generate-root/rekey.
* ``core/recovery-config`` — pkcs11: recovery shares/threshold (Vault's JSON).

These records are cluster-own (``storage.wal.CLUSTER_OWN_PREFIXES``): they never cross a
replication link. A replication secondary keeps its own seal and makes these records follow
its primary's key holders (:mod:`vaultraft.core.seal_replica`); on an HSM secondary
``core/recovery-key`` then holds :data:`WRAPPED_ROOT_MARKER` + the root key wrapped by the
primary's key (its unseal key or recovery key) instead of a recovery key of its own.

With an HSM seal in force, the keyring (through the barrier's keyring hook) and any view
given the manager as ``wrapper`` are seal-wrapped: encrypted once more by the HSM.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Awaitable, Callable

import structlog

from vaultraft.barrier import Barrier
from vaultraft.logical import InternalError, InvalidRequest
from vaultraft.seal.base import (
    SEAL_TYPE_PKCS11,
    SEAL_TYPE_SHAMIR,
    AsyncSeal,
    SealError,
    SealUnavailable,
)
from vaultraft.seal.shamir_seal import SealConfig, UnsealProgress

log = structlog.get_logger("vaultraft.seal")

SEAL_CONFIG_KEY = "core/seal-config"
ROOT_KEY_KEY = "core/root-key"
HSM_ROOT_KEY_KEY = "core/hsm/root-key"
#: pkcs11, during a replication activation: the primary's root key encrypted by this HSM, tried
#: when the root key of ``core/hsm/root-key`` no longer opens the keyring (an activation cut short).
HSM_ROOT_KEY_NEXT_KEY = "core/hsm/root-key-next"
RECOVERY_KEY_KEY = "core/recovery-key"
RECOVERY_CONFIG_KEY = "core/recovery-config"
#: Prefix of a seal-wrapped value (never the first bytes of a barrier ciphertext or JSON).
SEAL_WRAP_MAGIC = b"\xffVRSW\x01"
#: Prefix of an HSM secondary's recovery-key record that holds its primary's wrapped root key.
#: A recovery key of the cluster's own is exactly 32 bytes; a marked record is longer.
WRAPPED_ROOT_MARKER = b"\xffVRKH\x01"
#: The seal records, stored unencrypted outside the barrier (``core/hsm/`` is a prefix).
RAW_SEAL_RECORDS = (SEAL_CONFIG_KEY, ROOT_KEY_KEY, HSM_ROOT_KEY_KEY, HSM_ROOT_KEY_NEXT_KEY, RECOVERY_KEY_KEY,
                    RECOVERY_CONFIG_KEY)
AUTO_UNSEAL_RETRY = 5.0
DEFAULT_HEALTH_INTERVAL = 10.0


def decode_key(key: str) -> bytes:
    """An unseal or recovery key given as hex or base64; InvalidRequest otherwise."""
    k = key.strip()
    try:
        return bytes.fromhex(k)
    except ValueError:
        pass
    try:
        return base64.b64decode(k, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'key' must be a valid hex or base64 string") from None


def wrapped_root_of(recovery_record: bytes) -> bytes | None:
    """The primary's wrapped root key when ``recovery_record`` (the HSM-decrypted value of
    ``core/recovery-key``) is a marked one an HSM secondary adopted; None for a recovery key
    of the cluster's own (32 random bytes)."""
    if len(recovery_record) > len(WRAPPED_ROOT_MARKER) + 32 and recovery_record.startswith(WRAPPED_ROOT_MARKER):
        return recovery_record[len(WRAPPED_ROOT_MARKER):]
    return None


def check_shares(n: int, t: int) -> None:
    """Vault's rules for secret_shares / secret_threshold; InvalidRequest when broken."""
    if n < 1:
        raise InvalidRequest("shares must be at least one")
    if t < 1:
        raise InvalidRequest("threshold must be at least one")
    if t > n:
        raise InvalidRequest("threshold cannot be larger than shares")
    if n > 1 and t < 2:
        raise InvalidRequest("threshold must be greater than one for multiple shares")
    if n > 255:
        raise InvalidRequest("shares must be less than 256")


@dataclass(frozen=True)
class Mode:
    """What the stored seal config and the configured seals mean together.

    ``kind``: ``uninitialized``, ``shamir``, ``auto``, ``to_auto`` (Shamir → HSM pending),
    ``to_shamir`` (HSM → Shamir pending) or ``error`` (``error`` says why).
    """

    kind: str
    stored_type: str
    error: str = ""

    @property
    def migrating(self) -> bool:
        """A seal migration is pending (unseal needs ``migrate``)."""
        return self.kind in ("to_auto", "to_shamir")


class SealState:
    """The configured seals, the cached stored configs, and seal wrapping."""

    def __init__(self, barrier: Barrier, seal: AsyncSeal | None = None, *, old_seal: AsyncSeal | None = None,
                 health_interval: float = DEFAULT_HEALTH_INTERVAL) -> None:
        """``seal``: the enabled HSM seal, or None for Shamir; ``old_seal``: a ``disabled``
        HSM stanza being migrated away from. Installs itself as the keyring wrapper."""
        self._barrier = barrier
        self._seal = seal
        self._old = old_seal
        self.health_interval = health_interval
        self._config: SealConfig | None = None
        self._recovery: SealConfig | None = None
        self._progress: UnsealProgress | None = None
        self._ready: set[int] = set()
        self._wrap_seal: AsyncSeal | None = seal
        self._pending: tuple[str, bytearray] | None = None  # (migration kind, recovered key)
        self._stale: dict[str, str] = {}  # path -> label of the rotated-out key that opened it
        self._last_error = ""
        self._fatal = False
        self._monitor: asyncio.Task[None] | None = None
        self._auto_task: asyncio.Task[None] | None = None
        self._unseal_cb: Callable[[], Awaitable[None]] | None = None
        #: Set by replication while this cluster follows a primary: the keyring (and seal-wrapped
        #: mount values) are the primary's as shipped, unwrapped; this node never rewrites them.
        self.follows_primary = False
        #: Bumped whenever this node writes seal records (init, rekey, migration): a primary
        #: then publishes its key holders again.
        self.records_version = 0
        barrier.set_keyring_wrapper(self)

    # ---- configuration and mode -----------------------------------------------------------

    @property
    def configured_type(self) -> str:
        """The enabled seal's type (``shamir`` without an HSM stanza)."""
        return self._seal.seal_type if self._seal else SEAL_TYPE_SHAMIR

    @property
    def recovery_supported(self) -> bool:
        """Whether init takes recovery_* parameters (an HSM seal is enabled)."""
        return self._seal is not None

    @property
    def seal(self) -> AsyncSeal | None:
        """The enabled HSM seal (None: Shamir)."""
        return self._seal

    @property
    def old_seal(self) -> AsyncSeal | None:
        """The ``disabled`` HSM seal being migrated away from, if any."""
        return self._old

    @property
    def wrap_seal(self) -> AsyncSeal | None:
        """The HSM seal in force: it seal-wraps new writes (None: no seal wrapping)."""
        return self._wrap_seal

    def set_wrap_seal(self, seal: AsyncSeal | None) -> None:
        """Switch the seal that wraps new writes (migration steps only)."""
        self._wrap_seal = seal

    async def encrypt_with(self, seal: AsyncSeal, value: bytes, path: str) -> bytes:
        """``value`` encrypted by ``seal`` for the record at ``path``; InternalError on failure."""
        return await self._encrypt(seal, value, path)

    async def decrypt_with(self, seal: AsyncSeal, blob: bytes, path: str) -> bytes:
        """The value of the record at ``path`` encrypted by ``seal``; InternalError on failure."""
        return await self._decrypt(seal, blob, path)

    @property
    def last_error(self) -> str:
        """The last seal failure since the last successful unseal ("" when none)."""
        return self._last_error

    async def config(self) -> SealConfig | None:
        """The stored barrier seal configuration, or None before init (cached once read)."""
        if self._config is None:
            raw = await self._barrier.raw_get(SEAL_CONFIG_KEY)
            if raw is not None:
                self._config = SealConfig.from_bytes(raw)
        return self._config

    async def recovery_config(self) -> SealConfig | None:
        """The stored recovery configuration (HSM seal), or None."""
        if self._recovery is None:
            raw = await self._barrier.raw_get(RECOVERY_CONFIG_KEY)
            if raw is not None:
                self._recovery = SealConfig.from_bytes(raw)
        return self._recovery

    def reset_progress(self) -> None:
        """Forget the shares submitted so far."""
        if self._progress is not None:
            self._progress.reset()
        self._progress = None

    def forget_config(self) -> None:
        """Drop cached configuration (storage was replaced underneath)."""
        self._config = None
        self._recovery = None
        self.reset_progress()

    async def mode(self) -> Mode:
        """Combine the stored seal type with the configured seals (see :class:`Mode`)."""
        cfg = await self.config()
        if cfg is None:
            self._wrap_seal = self._seal
            return Mode("uninitialized", "")
        stored, configured = cfg.type, self.configured_type
        if stored == configured:
            self._wrap_seal = self._seal
            return Mode("auto" if self._seal else "shamir", stored)
        if stored == SEAL_TYPE_SHAMIR and self._seal is not None:
            self._wrap_seal = None
            return Mode("to_auto", stored)
        if stored == SEAL_TYPE_PKCS11 and self._seal is None and self._old is not None:
            self._wrap_seal = self._old
            return Mode("to_shamir", stored)
        self._wrap_seal = None
        return Mode("error", stored, f"storage is sealed by a {stored} seal but the configuration enables "
                                     f"{configured}; to migrate, keep the {stored} seal stanza with "
                                     'disabled = "true"')

    # ---- seal wrap (the barrier's keyring hook and BarrierView's wrapper) -----------------------

    async def seal_wrap(self, path: str, value: bytes) -> bytes:
        """``value`` encrypted by the HSM seal in force (unchanged under Shamir)."""
        seal = self._wrap_seal
        if seal is None:
            return value
        try:
            await self._ensure_ready(seal)
            return SEAL_WRAP_MAGIC + await seal.encrypt(value, path.encode())
        except SealError as e:
            self._report(e)
            raise InternalError(f"seal wrap failed: {e}") from None

    async def seal_unwrap(self, path: str, value: bytes) -> bytes:
        """The value behind a seal-wrapped one (unwrapped values pass through)."""
        if not value.startswith(SEAL_WRAP_MAGIC):
            if self._wrap_seal is not None and path == "core/keyring":
                self._stale[path] = SEAL_TYPE_SHAMIR  # written under Shamir: wrap it now that an HSM is in force
            return value
        blob = value[len(SEAL_WRAP_MAGIC):]
        seals = [s for s in (self._wrap_seal, self._seal, self._old) if s is not None]
        if not seals:
            raise InternalError(f"{path} is seal-wrapped but no HSM seal is configured")
        err: SealError | None = None
        for seal in dict.fromkeys(seals):
            try:
                await self._ensure_ready(seal)
                got = await seal.decrypt(blob, path.encode())
            except SealError as e:
                err = e
                continue
            if got.stale or seal is not self._wrap_seal:
                self._stale[path] = got.key_id
            return got.plaintext
        assert err is not None
        self._report(err)
        raise InternalError(f"seal unwrap of {path} failed: {err}")

    # ---- HSM plumbing ----------------------------------------------------------------------------

    async def _ensure_ready(self, seal: AsyncSeal) -> None:
        if id(seal) in self._ready:
            return
        await seal.setup()
        self._ready.add(id(seal))
        generated = getattr(seal.seal, "generated", [])
        if generated:
            log.info("seal_key_generated", seal=seal.seal_type, key_labels=list(generated))

    async def _available(self, seal: AsyncSeal, what: str) -> None:
        try:
            await self._ensure_ready(seal)
        except SealError as e:
            self._report(e)
            raise InternalError(f"{what} is unavailable: {e}") from None

    async def _encrypt(self, seal: AsyncSeal, value: bytes, path: str) -> bytes:
        try:
            await self._ensure_ready(seal)
            return await seal.encrypt(value, path.encode())
        except SealError as e:
            self._report(e)
            raise InternalError(str(e)) from None

    async def _decrypt(self, seal: AsyncSeal, blob: bytes, path: str) -> bytes:
        try:
            got = await seal.decrypt(blob, path.encode())
        except SealError as e:
            self._report(e)
            raise InternalError(f"failed to decrypt {path}: {e}") from None
        if got.stale:
            self._stale[path] = got.key_id
        return got.plaintext

    def _report(self, e: SealError) -> None:
        """Record a failure; log it once per episode (a retry loop must not flood the log)."""
        unavailable = isinstance(e, SealUnavailable)
        if isinstance(e, SealUnavailable):
            self._ready.clear()
            self._fatal = self._fatal or e.fatal
        if not self._last_error:
            log.error("seal_unavailable" if unavailable else "seal_decrypt_failed", error=str(e))
        self._last_error = str(e)


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))
