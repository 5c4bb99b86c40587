"""The seal operations core calls: status, init, unseal (shares, recovery keys and
auto-unseal), what happens after unseal and on seal, and the background auto-unseal
retries and HSM health monitor.

Core's state machine is the same for Shamir and for an HSM: it asks this module for the
root key and tells it about init and seal. The stored records and seal wrapping live in
:mod:`vaultraft.core.seal_state`; migration and building from the configuration in
:mod:`vaultraft.core.seal_lifecycle`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from vaultraft.core.seal_state import (
    AUTO_UNSEAL_RETRY,
    HSM_ROOT_KEY_KEY,
    HSM_ROOT_KEY_NEXT_KEY,
    RECOVERY_CONFIG_KEY,
    RECOVERY_KEY_KEY,
    ROOT_KEY_KEY,
    SEAL_CONFIG_KEY,
    SEAL_WRAP_MAGIC,
    Mode,
    SealState,
    _zero,
    check_shares,
    decode_key,
    log,
    wrapped_root_of,
)
from vaultraft.logical import InternalError, InvalidRequest, NotInitialized
from vaultraft.seal.base import SEAL_TYPE_SHAMIR, AsyncSeal, SealDecryptError, SealError, SealUnavailable
from vaultraft.seal.shamir import split
from vaultraft.seal.shamir_seal import (
    RootKeyUnwrapError,
    SealConfig,
    SealConfigError,
    ShareError,
    UnsealProgress,
    unwrap_root_key,
    wrap_root_key,
)

__all__ = [
    "HSM_ROOT_KEY_KEY", "RECOVERY_CONFIG_KEY", "RECOVERY_KEY_KEY", "ROOT_KEY_KEY", "SEAL_CONFIG_KEY",
    "SEAL_WRAP_MAGIC", "InitKeys", "Mode", "SealManager", "check_shares", "decode_key",
]


@dataclass(frozen=True)
class InitKeys:
    """What init hands out: unseal shares (Shamir) or recovery shares (HSM seal)."""

    keys: list[bytes]
    recovery_keys: list[bytes]
    config: SealConfig


class SealManager(SealState):
    """Holds the configured seal (None: Shamir) and, during a migration, the old one."""

    async def status_fields(self, sealed: bool) -> dict[str, Any]:
        """The seal part of ``sys/seal-status`` (Vault's field names)."""
        mode = await self.mode()
        cfg = await self.config()
        shares = await self._share_config(mode)
        progress = self._progress.progress if (self._progress and sealed) else 0
        out: dict[str, Any] = {
            "type": cfg.type if cfg else self.configured_type,
            "initialized": cfg is not None,
            "t": shares.secret_threshold if shares else 0,
            "n": shares.secret_shares if shares else 0,
            "progress": progress,
            "nonce": self._progress.nonce if (self._progress and progress) else "",
            "migration": mode.migrating,
            "recovery_seal": self.recovery_supported,
        }
        if self.recovery_supported:
            out["recovery_seal_type"] = SEAL_TYPE_SHAMIR
        warnings = [w for w in (mode.error, self._last_error) if w]
        if warnings:
            out["warnings"] = warnings
        return out

    async def _share_config(self, mode: Mode) -> SealConfig | None:
        """The config whose shares an operator submits now: recovery keys for an HSM seal."""
        if mode.kind in ("auto", "to_shamir"):
            return await self.recovery_config()
        return await self.config()

    # ---- init ----------------------------------------------------------------------------------

    def check_init_params(self, secret_shares: int, secret_threshold: int, recovery_shares: int,
                          recovery_threshold: int) -> None:
        """Vault's rule: barrier parameters with Shamir, recovery parameters with an HSM."""
        barrier_flags = [n for n, v in (("secret_shares", secret_shares),
                                        ("secret_threshold", secret_threshold)) if v]
        recovery_flags = [n for n, v in (("recovery_shares", recovery_shares),
                                         ("recovery_threshold", recovery_threshold)) if v]
        wrong = barrier_flags if self.recovery_supported else recovery_flags
        if wrong:
            raise InvalidRequest(f"parameters {','.join(wrong)} not applicable to seal type {self.configured_type}")
        if self.recovery_supported:
            if recovery_shares < 1:
                raise InvalidRequest("recovery configuration must specify a positive number of shares")
            try:
                SealConfig(recovery_shares, recovery_threshold).validate()
            except SealConfigError as e:
                raise InvalidRequest(f"invalid recovery configuration: {e}") from None
        else:
            check_shares(secret_shares, secret_threshold)

    async def prepare_init(self) -> None:
        """Connect to the HSM before init writes anything (InvalidRequest when unavailable)."""
        await self.mode()
        if self._seal is not None:
            try:
                await self._ensure_ready(self._seal)
            except SealError as e:
                self._report(e)
                raise InvalidRequest(f"error initializing seal: {e}") from None

    async def wrap_new_root_key(self, root_key: bytes, secret_shares: int, secret_threshold: int, *,
                                recovery_shares: int = 0, recovery_threshold: int = 0) -> InitKeys:
        """Protect a new root key; returns the shares to hand out and the seal config.

        Shamir: a fresh KEK wraps the root key and is split into unseal shares. HSM: the
        HSM encrypts the root key, and a fresh recovery key is split into recovery shares
        and stored HSM-encrypted with its config. The caller stores the returned config
        with :meth:`store_config` once init has fully succeeded.
        """
        if self._seal is None:
            check_shares(secret_shares, secret_threshold)
            kek = bytearray(os.urandom(32))
            try:
                shares = [bytes(kek)] if secret_shares == 1 else split(bytes(kek), secret_shares, secret_threshold)
                await self._barrier.raw_put(ROOT_KEY_KEY, wrap_root_key(bytes(kek), root_key))
            finally:
                _zero(kek)
            return InitKeys(shares, [], SealConfig(type=SEAL_TYPE_SHAMIR, secret_shares=secret_shares,
                                                   secret_threshold=secret_threshold))
        recovery_key = bytearray(os.urandom(32))
        try:
            rk = bytes(recovery_key)
            shares = [rk] if recovery_shares == 1 else split(rk, recovery_shares, recovery_threshold)
            root_blob = await self._encrypt(self._seal, root_key, HSM_ROOT_KEY_KEY)
            rec_blob = await self._encrypt(self._seal, rk, RECOVERY_KEY_KEY)
        finally:
            _zero(recovery_key)
        rec_cfg = SealConfig(type=SEAL_TYPE_SHAMIR, secret_shares=recovery_shares, secret_threshold=recovery_threshold)
        await self._barrier.raw_put(HSM_ROOT_KEY_KEY, root_blob)
        await self._barrier.raw_put(RECOVERY_KEY_KEY, rec_blob)
        await self._barrier.raw_put(RECOVERY_CONFIG_KEY, rec_cfg.to_bytes())
        self._recovery = rec_cfg
        cfg = SealConfig(type=self._seal.seal_type, secret_shares=1, secret_threshold=1, stored_shares=1)
        return InitKeys([], shares, cfg)

    async def store_config(self, cfg: SealConfig) -> None:
        """Persist the seal configuration: from now on the node counts as initialized."""
        await self._barrier.raw_put(SEAL_CONFIG_KEY, cfg.to_bytes())
        self._config = cfg
        self.records_version += 1

    # ---- unseal ---------------------------------------------------------------------------------

    async def submit_share(self, key: str, *, migrate: bool = False) -> bytes | None:
        """Add one unseal or recovery share; the root key once the threshold is reached.

        Shamir: unseal shares. HSM seal: recovery shares, verified against the stored
        recovery key, then the HSM decrypts the root key. With a migration pending,
        ``migrate`` must be set; the migration itself runs in :meth:`after_unseal`.
        Raises InvalidRequest (bad share, wrong combination, migrate misuse),
        InternalError (HSM unavailable), NotInitialized.
        """
        mode = await self.mode()
        if mode.kind == "uninitialized":
            raise NotInitialized()
        if mode.kind == "error":
            raise InternalError(mode.error)
        if migrate and not mode.migrating:
            raise InvalidRequest("can't perform a seal migration, no migration seal found")
        if mode.migrating and not migrate:
            raise InvalidRequest("migrate option not provided and seal migration is pending")
        shares_cfg = await self._share_config(mode)
        if shares_cfg is None:
            raise InternalError("the recovery configuration is missing from storage")
        share = decode_key(key)
        if self._progress is None:
            self._progress = UnsealProgress(shares_cfg.secret_threshold)
        try:
            combined = self._progress.add(share)
        except ShareError as e:
            self.reset_progress()
            raise InvalidRequest(str(e)) from None
        if combined is None:
            return None
        self._progress = None
        secret = bytearray(combined)
        try:
            if mode.kind in ("shamir", "to_auto"):
                root = await self._root_from_shamir(bytes(secret))
                if mode.kind == "to_auto":
                    assert self._seal is not None
                    await self._available(self._seal, "the new seal")
                    self._pending = ("to_auto", bytearray(secret))
                return root
            seal = self._seal if mode.kind == "auto" else self._old
            assert seal is not None
            await self._available(seal, "the seal")
            await self._verify_recovery_key(seal, bytes(secret))
            root = await self._root_from_seal(seal)
            if mode.kind == "to_shamir":
                self._pending = ("to_shamir", bytearray(secret))
            return root
        finally:
            _zero(secret)

    async def _root_from_shamir(self, kek: bytes) -> bytes:
        blob = await self._barrier.raw_get(ROOT_KEY_KEY)
        if blob is None:
            raise InvalidRequest("stored root key is missing")
        try:
            return unwrap_root_key(kek, blob)
        except RootKeyUnwrapError:
            raise InvalidRequest("Error unsealing: failed to decrypt the root key: "
                                 "invalid key or key combination") from None

    async def _verify_recovery_key(self, seal: AsyncSeal, key: bytes) -> None:
        """InvalidRequest unless ``key`` is the recovery key: the stored one, or (an HSM
        replication secondary) the key that opens the primary's wrapped root key."""
        blob = await self._barrier.raw_get(RECOVERY_KEY_KEY)
        if blob is None:
            raise InternalError("the recovery key is missing from storage")
        stored = await self._decrypt(seal, blob, RECOVERY_KEY_KEY)
        wrapped = wrapped_root_of(stored)
        if wrapped is None:
            ok = hmac.compare_digest(stored, key)
        else:
            root = self._barrier.root_key() if not self._barrier.sealed else await self._root_from_seal(seal)
            try:
                ok = hmac.compare_digest(unwrap_root_key(key, wrapped), root)
            except RootKeyUnwrapError:
                ok = False
        if not ok:
            raise InvalidRequest("recovery key verification failed: recovery key does not match submitted values")

    async def verify_recovery_key(self, key: bytes) -> None:
        """Raise InvalidRequest unless ``key`` is the recovery key (for generate-root/rekey)."""
        mode = await self.mode()
        seal = self._seal if mode.kind == "auto" else self._old if mode.kind == "to_shamir" else None
        if seal is None:
            raise InvalidRequest("recovery keys are not supported by the current seal type")
        await self._available(seal, "the seal")
        await self._verify_recovery_key(seal, key)

    async def set_recovery_key(self, key: bytes, cfg: SealConfig) -> None:
        """Store a new recovery key and config (rekey of the recovery key; HSM seal only).

        Both records go in one storage batch: a crash never pairs the new key with the
        old share count or threshold."""
        from vaultraft.core.seal_lifecycle import write_seal_records

        if self._seal is None:
            raise InvalidRequest("recovery keys are not supported by the current seal type")
        blob = await self._encrypt(self._seal, key, RECOVERY_KEY_KEY)
        await write_seal_records(self._barrier, {RECOVERY_KEY_KEY: blob, RECOVERY_CONFIG_KEY: cfg.to_bytes()})
        self._recovery = cfg
        self.records_version += 1

    async def set_unseal_key(self, kek: bytes, cfg: SealConfig) -> None:
        """Shamir rekey: store the root key wrapped by the new unseal key ``kek`` together
        with the new share config (one batch). InvalidRequest under an HSM seal."""
        from vaultraft.core.seal_lifecycle import rekey_unseal_key

        if (await self.mode()).kind != "shamir":
            raise InvalidRequest("unseal keys can only be rekeyed with the shamir seal")
        await rekey_unseal_key(self._barrier, kek, cfg)
        self._config = cfg
        self.records_version += 1

    async def share_config(self) -> SealConfig | None:
        """The config of the shares that authorize key operations now: the recovery
        config with an HSM seal, the barrier config under Shamir (None before init)."""
        return await self._share_config(await self.mode())

    async def verify_shares_key(self, key: bytes) -> None:
        """Raise InvalidRequest unless ``key`` (combined from the shares of
        :meth:`share_config`) is the current unseal key (Shamir) or recovery key (HSM)."""
        from vaultraft.core.seal_lifecycle import verify_unseal_key

        mode = await self.mode()
        if mode.kind in ("auto", "to_shamir"):
            await self.verify_recovery_key(key)
        else:
            await verify_unseal_key(self._barrier, key)

    async def _root_from_seal(self, seal: AsyncSeal) -> bytes:
        blob = await self._barrier.raw_get(HSM_ROOT_KEY_KEY)
        if blob is None:
            e = SealDecryptError("stored unseal keys are supported, but none were found")
            self._report(e)
            raise InternalError(str(e))
        return await self._decrypt(seal, blob, HSM_ROOT_KEY_KEY)

    def auto_seal_configured(self) -> bool:
        """Whether this node has an auto-unseal (HSM) seal of its own."""
        return self._seal is not None

    async def open_joined_records(self, hsm_root_key_blob: bytes, keyring_blob: bytes) -> tuple[bytes, bytes]:
        """For an auto-unseal node joining a cluster on the same HSM: the root key opened
        by this node's seal, and the keyring record with its seal wrapping removed."""
        if self._seal is None:
            raise InternalError("no auto-unseal seal is configured")
        await self._ensure_ready(self._seal)
        root = await self._decrypt(self._seal, hsm_root_key_blob, HSM_ROOT_KEY_KEY)
        return root, await self.seal_unwrap("core/keyring", keyring_blob)

    async def try_auto_unseal(self) -> bytes | None:
        """The root key from the HSM, or None (not initialized, Shamir, migration pending,
        or the HSM failed: then :attr:`last_error` says why and one log line was written)."""
        mode = await self.mode()
        if mode.kind == "error":
            self._report(SealUnavailable(mode.error, fatal=True))
            return None
        if mode.kind != "auto" or self._seal is None:
            return None
        try:
            await self._ensure_ready(self._seal)
        except SealError as e:
            self._report(e)
            return None
        try:
            return await self._root_from_seal(self._seal)
        except InternalError:  # reported where it failed
            return None

    async def staged_root(self) -> bytes | None:
        """The root key staged at ``core/hsm/root-key-next`` by a replication activation that
        was cut short before this cluster re-wrapped its primary's root key (HSM seal only;
        None when there is none or the HSM cannot open it)."""
        seal = self._seal
        blob = await self._barrier.raw_get(HSM_ROOT_KEY_NEXT_KEY)
        if seal is None or blob is None:
            return None
        try:
            return await self._decrypt(seal, blob, HSM_ROOT_KEY_NEXT_KEY)
        except InternalError:  # reported where it failed
            return None

    async def after_unseal(self) -> None:
        """Run once the barrier is unsealed: finish a pending migration (errors propagate:
        the caller seals again), then re-wrap values made by a rotated-out HSM key."""
        from vaultraft.core.seal_lifecycle import finish_migration, rewrap_stale

        self._last_error = ""
        self._fatal = False
        pending, self._pending = self._pending, None
        if pending is not None:
            kind, secret = pending
            try:
                await finish_migration(self, self._barrier, kind, bytes(secret))
            finally:
                _zero(secret)
                self._config = None
                self._recovery = None
                self.records_version += 1
            await self.mode()
        if self._stale:
            stale, self._stale = dict(self._stale), {}
            await rewrap_stale(self, self._barrier, stale)

    async def on_sealed(self) -> None:
        """The node sealed: stop the health monitor, drop progress and pending secrets.
        Cached configs are dropped too: another node may rekey while this one is sealed."""
        self.reset_progress()
        self._config = None
        self._recovery = None
        pending, self._pending = self._pending, None
        if pending is not None:
            _zero(pending[1])
        task, self._monitor = self._monitor, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ---- background: auto-unseal retries and the health monitor ----------------------------------

    def start_auto_unseal(self, unseal: Callable[[], Awaitable[None]]) -> asyncio.Task[None] | None:
        """With an HSM seal, call ``unseal`` (core's auto-unseal) now and every 5 s while
        sealed; stops after success or a failure retrying cannot fix (wrong PIN). None
        under Shamir. Requires a running loop."""
        self._unseal_cb = unseal
        if self._seal is None:
            return None
        if self._auto_task is None or self._auto_task.done():
            self._auto_task = asyncio.get_running_loop().create_task(self._auto_unseal_loop(), name="auto_unseal")
        return self._auto_task

    def resume_auto_unseal(self) -> None:
        """Start the auto-unseal retries again (a node that sealed itself, e.g. a standby of
        a new replication secondary waiting for its cluster's re-wrapped root key). A no-op
        under Shamir or before :meth:`start_auto_unseal` registered the unseal callback."""
        if self._unseal_cb is not None:
            self.start_auto_unseal(self._unseal_cb)

    async def _auto_unseal_loop(self) -> None:
        while self._unseal_cb is not None:
            if self._barrier.sealed:
                try:
                    await self._unseal_cb()
                except NotInitialized:
                    pass  # another node may initialize the shared storage: keep polling quietly
                except Exception as e:  # the log line was written where it failed
                    if not self._last_error:
                        log.error("auto_unseal_failed", error=str(e) or type(e).__name__)
                        self._last_error = str(e) or type(e).__name__
            if not self._barrier.sealed:
                return
            if self._fatal:
                log.warning("auto_unseal_stopped", reason="fix the seal configuration and restart")
                return
            await asyncio.sleep(AUTO_UNSEAL_RETRY)

    def start_health_monitor(self, on_failure: Callable[[], Awaitable[None]]) -> None:
        """While unsealed with an HSM in force, round-trip through it every
        :attr:`health_interval` s; if it fails twice in a row, log once and call
        ``on_failure`` (core's seal), then resume auto-unseal retries."""
        if self._wrap_seal is None or (self._monitor is not None and not self._monitor.done()):
            return
        self._monitor = asyncio.get_running_loop().create_task(self._health_loop(on_failure), name="seal_health")

    async def _health_loop(self, on_failure: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            seal = self._wrap_seal
            if seal is None:
                return
            try:
                await seal.health_check()
                continue
            except SealError:
                await asyncio.sleep(min(1.0, self.health_interval))
            try:
                await seal.health_check()
                continue
            except SealError as e:
                self._ready.clear()
                log.error("seal_unavailable", error=str(e), action="sealing: the HSM is needed to keep keys usable")
                self._last_error = str(e)
            self._monitor = None
            await on_failure()
            if self._unseal_cb is not None:
                self.start_auto_unseal(self._unseal_cb)
            return

    async def shutdown(self) -> None:
        """Stop background tasks and close HSM sessions (server exit)."""
        self._unseal_cb = None
        for task in (self._monitor, self._auto_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        for seal in {id(s): s for s in (self._seal, self._old) if s is not None}.values():
            seal.shutdown()
