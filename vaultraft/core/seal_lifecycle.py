"""Changing what protects the keys: building the seal manager from the configuration,
seal migration (Shamir ↔ PKCS#11), re-wrapping after an HSM key rotation, and the
storage side of a rekey (a new unseal key wrapping the same root key).

Migration writes its records in an order that survives a crash at any step: the new
records first (ignored by the old seal), then ``core/seal-config`` (the commit point),
then the keyring re-write and the removal of the old records. A keyring found unwrapped
under an HSM seal, or wrapped by an old key, is re-wrapped at the next unseal.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Mapping

from vaultraft.barrier import Barrier
from vaultraft.config.model import ConfigError, SealConfigBlock
from vaultraft.core.seal_manager import SealManager
from vaultraft.core.seal_state import (
    DEFAULT_HEALTH_INTERVAL,
    HSM_ROOT_KEY_KEY,
    RECOVERY_CONFIG_KEY,
    RECOVERY_KEY_KEY,
    ROOT_KEY_KEY,
    SEAL_CONFIG_KEY,
    log,
)
from vaultraft.logical import InternalError, InvalidRequest
from vaultraft.seal.base import SEAL_TYPE_PKCS11, SEAL_TYPE_SHAMIR, AsyncSeal, SealStanzaError
from vaultraft.seal.pkcs11 import Pkcs11Config, Pkcs11Seal
from vaultraft.seal.shamir_seal import RootKeyUnwrapError, SealConfig, unwrap_root_key, wrap_root_key
from vaultraft.storage import Batch, Op

KEYRING_PATH = "core/keyring"


async def finish_migration(mgr: SealManager, barrier: Barrier, kind: str, secret: bytes) -> None:
    """Complete a pending migration on an unsealed barrier.

    ``to_auto``: ``secret`` is the Shamir KEK; it becomes the recovery key (the unseal
    shares become the recovery shares). ``to_shamir``: ``secret`` is the recovery key; it
    becomes the KEK (the recovery shares become the unseal shares). InternalError when a
    write or the HSM fails; storage is consistent after any prefix of the steps.
    """
    root = barrier.root_key()
    old_cfg = await mgr.config()
    assert old_cfg is not None
    if kind == "to_auto":
        seal = mgr.seal
        assert seal is not None
        root_blob = await mgr.encrypt_with(seal, root, HSM_ROOT_KEY_KEY)
        rec_blob = await mgr.encrypt_with(seal, secret, RECOVERY_KEY_KEY)
        rec_cfg = SealConfig(type=SEAL_TYPE_SHAMIR, secret_shares=old_cfg.secret_shares,
                             secret_threshold=old_cfg.secret_threshold)
        await barrier.raw_put(HSM_ROOT_KEY_KEY, root_blob)
        await barrier.raw_put(RECOVERY_KEY_KEY, rec_blob)
        await barrier.raw_put(RECOVERY_CONFIG_KEY, rec_cfg.to_bytes())
        new_cfg = SealConfig(type=seal.seal_type, secret_shares=1, secret_threshold=1, stored_shares=1)
        await barrier.raw_put(SEAL_CONFIG_KEY, new_cfg.to_bytes())  # commit point
        mgr.set_wrap_seal(seal)
        await _rewrite_keyring(barrier)
        await _delete_quietly(barrier, [ROOT_KEY_KEY])
        log.info("seal_migrated", from_type=SEAL_TYPE_SHAMIR, to_type=seal.seal_type, key_label=seal.key_id(),
                 note="the unseal keys are now recovery keys")
        return
    recovery = await mgr.recovery_config()
    if recovery is None:
        raise InternalError("the recovery configuration is missing from storage")
    await barrier.raw_put(ROOT_KEY_KEY, wrap_root_key(secret, root))
    mgr.set_wrap_seal(None)
    await barrier.rekey_root(root)  # keyring no longer seal-wrapped
    new_cfg = SealConfig(type=SEAL_TYPE_SHAMIR, secret_shares=recovery.secret_shares,
                         secret_threshold=recovery.secret_threshold)
    await barrier.raw_put(SEAL_CONFIG_KEY, new_cfg.to_bytes())  # commit point
    await _delete_quietly(barrier, [HSM_ROOT_KEY_KEY, RECOVERY_KEY_KEY, RECOVERY_CONFIG_KEY])
    log.info("seal_migrated", from_type=old_cfg.type, to_type=SEAL_TYPE_SHAMIR,
             note="the recovery keys are now unseal keys; remove the disabled seal stanza")


async def write_seal_records(barrier: Barrier, records: Mapping[str, bytes | None]) -> None:
    """Write several unencrypted seal records in ONE storage batch (all or nothing, also
    through Raft); a None value deletes its record. InternalError when storage refuses it."""
    ops = tuple(Op.delete(path) if value is None else Op.put(path, bytes(value)) for path, value in records.items())
    result = await barrier.physical.apply(Batch(ops, secrets.token_bytes(16)))
    if result.error is not None:
        raise InternalError(f"failed to store the seal records: {result.error}")


async def verify_unseal_key(barrier: Barrier, kek: bytes) -> None:
    """Shamir: raise InvalidRequest unless ``kek`` (combined unseal shares) opens the
    stored root key and that key is the one the unsealed barrier uses."""
    blob = await barrier.raw_get(ROOT_KEY_KEY)
    if blob is None:
        raise InternalError("stored root key is missing")
    try:
        root = unwrap_root_key(kek, blob)
    except RootKeyUnwrapError as e:
        raise InvalidRequest(f"unable to authenticate: {e}") from None
    if not hmac.compare_digest(root, barrier.root_key()):
        raise InvalidRequest("unable to authenticate: root key verification failed")


async def rekey_unseal_key(barrier: Barrier, kek: bytes, cfg: SealConfig) -> None:
    """Shamir rekey: the root key wrapped by a new unseal key ``kek`` and the new share
    configuration, stored together in one batch. The root key, keyring and data are
    untouched, so a crash leaves either the old shares or the new ones valid, never a mix."""
    root = barrier.root_key()
    await write_seal_records(barrier, {ROOT_KEY_KEY: wrap_root_key(kek, root), SEAL_CONFIG_KEY: cfg.to_bytes()})
    log.info("security_barrier_rekeyed", shares=cfg.secret_shares, threshold=cfg.secret_threshold,
             pgp=bool(cfg.pgp_keys))


async def rewrap_stale(mgr: SealManager, barrier: Barrier, stale: dict[str, str]) -> None:
    """Re-encrypt under the current HSM key the records an older key opened at unseal
    (``stale``: path → label of the key that opened it). Best effort: a record that
    cannot be re-written now still decrypts, and is retried at the next unseal. The keyring
    of a cluster that follows a replication primary is the primary's and is left alone."""
    seal = mgr.wrap_seal
    if seal is None:
        return
    if mgr.follows_primary:  # a replication secondary stores the primary's keyring as shipped
        stale = {p: label for p, label in stale.items() if p != KEYRING_PATH}
    if HSM_ROOT_KEY_KEY in stale:  # the recovery key was made by the same (old) key
        stale = {RECOVERY_KEY_KEY: stale[HSM_ROOT_KEY_KEY], **stale}
    done: list[str] = []
    try:
        for path in sorted(stale):
            if path == HSM_ROOT_KEY_KEY:
                await barrier.raw_put(path, await mgr.encrypt_with(seal, barrier.root_key(), path))
            elif path == RECOVERY_KEY_KEY:
                blob = await barrier.raw_get(path)
                if blob is None:
                    continue
                value = await mgr.decrypt_with(seal, blob, path)
                await barrier.raw_put(path, await mgr.encrypt_with(seal, value, path))
            elif path == KEYRING_PATH:
                await _rewrite_keyring(barrier)
            else:
                continue  # a seal-wrapped mount value: re-wrapped when next written
            done.append(path)
    except Exception as e:  # e.g. a standby cannot write: the old key keeps working meanwhile
        log.warning("seal_rewrap_deferred", error=str(e) or type(e).__name__, done=done)
    if done:
        log.info("seal_key_rotated", key_label=seal.key_id(),
                 old_key_labels=sorted({stale[p] for p in done}), rewrapped=done)


async def _rewrite_keyring(barrier: Barrier) -> None:
    """Write the keyring again (same keys) so the keyring hook wraps it with the seal in force."""
    await barrier.rekey_root(barrier.root_key())


async def _delete_quietly(barrier: Barrier, paths: list[str]) -> None:
    for path in paths:
        try:
            await barrier.raw_delete(path)
        except Exception as e:  # leftovers are harmless: the seal config decides what is read
            log.warning("seal_record_cleanup_failed", path=path, error=type(e).__name__)


def _make_seal(block: SealConfigBlock, env: Mapping[str, str]) -> AsyncSeal:
    if block.type != SEAL_TYPE_PKCS11:
        raise ConfigError(f'seal "{block.type}" cannot be used as an auto seal')
    try:
        return AsyncSeal(Pkcs11Seal(Pkcs11Config.from_options(block.options, env)))
    except SealStanzaError as e:
        raise ConfigError(str(e)) from None


def build_seal_manager(barrier: Barrier, seal_block: SealConfigBlock | None, migration_block: SealConfigBlock | None,
                       *, env: Mapping[str, str] | None = None) -> SealManager:
    """The seal manager for a server configuration.

    ``seal_block`` is the enabled stanza (None or ``shamir``: Shamir); ``migration_block``
    a ``disabled = "true"`` stanza being migrated from. VAULT_HSM_* variables override
    stanza keys; ``VAULT_SEAL_TYPE=pkcs11`` enables the seal without a stanza. Nothing is
    loaded here: the HSM is opened on first use, off the event loop. Installs the manager
    as ``barrier``'s keyring wrapper. Raises ConfigError (one line, never the PIN).
    """
    env = os.environ if env is None else env
    if seal_block is None and migration_block is None and env.get("VAULT_SEAL_TYPE", "").lower() == SEAL_TYPE_PKCS11:
        seal_block = SealConfigBlock(type=SEAL_TYPE_PKCS11)
    active = _make_seal(seal_block, env) if seal_block and seal_block.type != SEAL_TYPE_SHAMIR else None
    old = _make_seal(migration_block, env) if migration_block and migration_block.type != SEAL_TYPE_SHAMIR else None
    if active is not None and old is not None:
        raise ConfigError('seal "pkcs11": migrating between two pkcs11 seals is not supported; to rotate the HSM '
                          "key, change key_label (the old key keeps decrypting until everything is re-wrapped)")
    try:
        interval = float(env.get("VAULTRAFT_SEAL_HEALTH_INTERVAL") or DEFAULT_HEALTH_INTERVAL)
    except ValueError:
        raise ConfigError("VAULTRAFT_SEAL_HEALTH_INTERVAL must be a number of seconds") from None
    return SealManager(barrier, active, old_seal=old, health_interval=max(interval, 0.1))
