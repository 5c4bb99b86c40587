"""The seal side of replication: a primary's key holders travel, its seal records do not.

Each cluster keeps its own seal (Shamir or an HSM) and its own seal records
(``core/seal-config``, ``core/root-key``, ``core/hsm/``, ``core/recovery-*`` are cluster-own,
``storage.wal.CLUSTER_OWN_PREFIXES``). What crosses the link is :data:`KEY_HOLDERS_PATH`, a
record behind the barrier that a primary publishes: the share configuration of its key
holders and its root key wrapped by the key their shares combine to (the Shamir unseal key,
or the recovery key with an HSM seal). Vault's rule for secondaries follows from it
("enabling replication replaces the secondary's seal or recovery configuration and keys with
the primary's"):

================  ================  ===============================================================
primary seal      secondary seal    what the secondary stores (:func:`adopt`)
================  ================  ===============================================================
Shamir            Shamir            ``core/root-key`` = the wrapped root key, ``core/seal-config`` =
                                    the primary's shares: unsealed with the primary's unseal keys
Shamir or HSM     HSM               ``core/hsm/root-key`` = the root key encrypted by ITS OWN HSM
                                    (auto-unseal); ``core/recovery-key`` = HSM(marker + wrapped
                                    root key), ``core/recovery-config`` = the primary's shares:
                                    the primary's unseal or recovery keys are its recovery keys
HSM               Shamir            as Shamir → Shamir, with the root key wrapped by the primary's
                                    recovery key: the primary's recovery keys unseal it
================  ================  ===============================================================

The published record is behind the barrier, so reading it already takes the root key: the
root key wrapped by the recovery key reveals nothing to whoever can read it. Only a Shamir
secondary of an HSM primary stores it outside the barrier, because that is what its unseal
keys open (Vault's table says the same: its unseal keys are the primary's recovery keys).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import structlog

from vaultraft.barrier import KEYRING_PATH, Barrier
from vaultraft.core.seal_lifecycle import write_seal_records
from vaultraft.core.seal_manager import SealManager
from vaultraft.core.seal_state import (
    HSM_ROOT_KEY_KEY,
    HSM_ROOT_KEY_NEXT_KEY,
    RECOVERY_CONFIG_KEY,
    RECOVERY_KEY_KEY,
    ROOT_KEY_KEY,
    SEAL_CONFIG_KEY,
    SEAL_WRAP_MAGIC,
    WRAPPED_ROOT_MARKER,
    _zero,
    wrapped_root_of,
)
from vaultraft.logical import InternalError, InvalidRequest
from vaultraft.seal.base import SEAL_TYPE_SHAMIR, AsyncSeal
from vaultraft.seal.shamir_seal import SealConfig, wrap_root_key

log = structlog.get_logger("vaultraft.replication")

#: Barrier-encrypted, replicated to every secondary (DR and performance).
KEY_HOLDERS_PATH = "core/key-holders"
KEY_HOLDERS_VERSION = 1


@dataclass(frozen=True)
class KeyHolders:
    """Who may act on a secondary with key shares: the primary's key holders.

    ``kind`` names the publisher's shares (``unseal`` for Shamir, ``recovery`` for an HSM
    seal); ``wrapped_root`` is the root key wrapped by the key they combine to; ``source``
    (an HMAC under the root key of what the record was made from) tells a primary whether
    it must publish again, without comparing secrets.
    """

    kind: str
    secret_shares: int
    secret_threshold: int
    wrapped_root: bytes = field(repr=False)
    source: str = ""

    def config(self) -> SealConfig:
        """The share configuration as a Shamir seal config (what a secondary stores)."""
        return SealConfig(type=SEAL_TYPE_SHAMIR, secret_shares=self.secret_shares,
                          secret_threshold=self.secret_threshold)

    def encode(self) -> bytes:
        """JSON bytes (stored behind the barrier)."""
        return json.dumps({"v": KEY_HOLDERS_VERSION, "kind": self.kind, "secret_shares": self.secret_shares,
                           "secret_threshold": self.secret_threshold,
                           "wrapped_root": base64.b64encode(self.wrapped_root).decode(),
                           "source": self.source}).encode()

    @staticmethod
    def decode(raw: bytes) -> "KeyHolders":
        """Parse :meth:`encode` output; ValueError for anything else."""
        try:
            d: Any = json.loads(raw)
            if not isinstance(d, dict) or d.get("v") != KEY_HOLDERS_VERSION:
                raise ValueError("unknown key holders record version")
            kh = KeyHolders(kind=str(d["kind"]), secret_shares=int(d["secret_shares"]),
                            secret_threshold=int(d["secret_threshold"]),
                            wrapped_root=base64.b64decode(str(d["wrapped_root"]), validate=True),
                            source=str(d.get("source", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed key holders record: {type(e).__name__}") from None
        if kh.kind not in ("unseal", "recovery") or not 1 <= kh.secret_threshold <= kh.secret_shares <= 255:
            raise ValueError("malformed key holders record")
        return kh


def source_digest(root_key: bytes, kind: str, cfg: SealConfig, material: bytes) -> str:
    """HMAC-SHA256 under the root key of what a key holders record is made from."""
    msg = b"\0".join([b"vaultraft key holders v1", kind.encode(),
                      f"{cfg.secret_shares}/{cfg.secret_threshold}".encode(), material])
    return hmac.new(root_key, msg, hashlib.sha256).hexdigest()


async def describe_local(mgr: SealManager, barrier: Barrier) -> KeyHolders | None:
    """This cluster's key holders (unsealed barrier), or None while a seal migration is
    pending or the records are missing. With an HSM seal the recovery key is decrypted by
    the HSM and wrapped around the root key here; it never leaves this function."""
    mode = await mgr.mode()
    root = barrier.root_key()
    if mode.kind == "shamir":
        cfg = await mgr.config()
        blob = await barrier.raw_get(ROOT_KEY_KEY)
        if cfg is None or blob is None:
            return None
        return KeyHolders("unseal", cfg.secret_shares, cfg.secret_threshold, blob,
                          source_digest(root, "unseal", cfg, blob))
    seal = mgr.seal
    if mode.kind != "auto" or seal is None:
        return None
    rec_cfg = await mgr.recovery_config()
    rec_blob = await barrier.raw_get(RECOVERY_KEY_KEY)
    if rec_cfg is None or rec_blob is None:
        return None
    plain = bytearray(await mgr.decrypt_with(seal, rec_blob, RECOVERY_KEY_KEY))
    try:
        wrapped = wrapped_root_of(bytes(plain))
        if wrapped is None:  # a recovery key of this cluster's own
            wrapped = wrap_root_key(bytes(plain), root)
        source = source_digest(root, "recovery", rec_cfg, bytes(plain))
    finally:
        _zero(plain)
    return KeyHolders("recovery", rec_cfg.secret_shares, rec_cfg.secret_threshold, wrapped, source)


async def read_published(barrier: Barrier) -> KeyHolders | None:
    """The key holders record in storage (a primary's own, or on a secondary the one its
    primary shipped); None when absent. InternalError when it does not parse."""
    raw = await barrier.get(KEY_HOLDERS_PATH)
    if raw is None:
        return None
    try:
        return KeyHolders.decode(raw)
    except ValueError as e:
        raise InternalError(str(e)) from None


async def publish(mgr: SealManager, barrier: Barrier) -> bool:
    """A primary's active node: store its key holders record unless the stored one was made
    from the same records. True when it wrote. InvalidRequest while a seal migration is
    pending (there are no settled key holders to hand to a secondary)."""
    kh = await describe_local(mgr, barrier)
    if kh is None:
        raise InvalidRequest("this cluster's seal is being migrated; finish the seal migration first")
    try:
        current = await read_published(barrier)
    except InternalError:
        current = None
    if current is not None and current.source == kh.source:
        return False
    result = await barrier.put(KEY_HOLDERS_PATH, kh.encode())
    if result.error is not None:
        raise InternalError(f"failed to store the key holders record: {result.error}")
    log.info("replication_key_holders_published", kind=kh.kind, shares=kh.secret_shares,
             threshold=kh.secret_threshold)
    return True


async def check_secondary_seal(mgr: SealManager) -> None:
    """Before a cluster is wiped to become a secondary: its seal must be able to take the
    primary's root key. InvalidRequest (400) during a seal migration or when the HSM does
    not answer; nothing has been changed then."""
    mode = await mgr.mode()
    if mode.kind not in ("shamir", "auto"):
        raise InvalidRequest("a replication secondary cannot be activated while its seal is being migrated")
    seal = mgr.seal
    if mode.kind == "auto" and seal is not None:
        try:
            await mgr.encrypt_with(seal, b"activation probe", "core/hsm/probe")
        except InternalError as e:
            raise InvalidRequest(f"this cluster's seal cannot wrap the primary's root key: {e}") from None


async def _holds(mgr: SealManager, seal: AsyncSeal, blob: bytes | None, path: str, want: bytes) -> bool:
    if blob is None:
        return False
    try:
        got = await mgr.decrypt_with(seal, blob, path)
    except InternalError:
        return False
    return hmac.compare_digest(got, want)


async def adopt(mgr: SealManager, barrier: Barrier) -> bool:
    """A secondary's active node, after the switch to its primary's root key: make this
    cluster's own seal records follow the primary's key holders (see the module table).
    Everything changed is written in ONE batch. True when it wrote; False when they already
    matched or no record has arrived yet. InternalError when the HSM fails or a seal
    migration is pending (retried later by the caller)."""
    found = await adoption_records(mgr, barrier)
    if found is None:
        return False
    kh, records = found
    if not records:
        return False
    await write_seal_records(barrier, records)
    mgr.forget_config()
    log_adopted(await mgr.mode(), kh, records)
    return True


def log_adopted(mode: Any, kh: KeyHolders, records: dict[str, bytes | None]) -> None:
    """The ``replication_key_holders_adopted`` line (no key material)."""
    log.info("replication_key_holders_adopted", seal=mode.stored_type, primary_keys=kh.kind,
             shares=kh.secret_shares, threshold=kh.secret_threshold, rewrapped_root=HSM_ROOT_KEY_KEY in records)


async def adoption_records(mgr: SealManager, barrier: Barrier) -> tuple[KeyHolders, dict[str, bytes | None]] | None:
    """What :func:`adopt` writes (path -> raw value, None deletes), for the primary's key
    holders record read through ``barrier`` and the root key ``barrier`` holds; None when
    no key holders record has arrived. Writes nothing (the activation puts these records in
    the batch that switches the keyring)."""
    kh = await read_published(barrier)
    if kh is None:
        return None
    mode = await mgr.mode()
    want = kh.config()
    records: dict[str, bytes | None] = {}
    if mode.kind == "shamir":
        cfg = await mgr.config()
        if (await barrier.raw_get(ROOT_KEY_KEY) != kh.wrapped_root or cfg is None
                or (cfg.secret_shares, cfg.secret_threshold) != (want.secret_shares, want.secret_threshold)):
            records = {ROOT_KEY_KEY: kh.wrapped_root, SEAL_CONFIG_KEY: want.to_bytes()}
    elif mode.kind == "auto" and mgr.seal is not None:
        seal, root = mgr.seal, barrier.root_key()
        if not await _holds(mgr, seal, await barrier.raw_get(HSM_ROOT_KEY_KEY), HSM_ROOT_KEY_KEY, root):
            records[HSM_ROOT_KEY_KEY] = await mgr.encrypt_with(seal, root, HSM_ROOT_KEY_KEY)
        marked = WRAPPED_ROOT_MARKER + kh.wrapped_root
        rec_cfg = await mgr.recovery_config()
        if (not await _holds(mgr, seal, await barrier.raw_get(RECOVERY_KEY_KEY), RECOVERY_KEY_KEY, marked)
                or rec_cfg is None
                or (rec_cfg.secret_shares, rec_cfg.secret_threshold) != (want.secret_shares, want.secret_threshold)):
            records[RECOVERY_KEY_KEY] = await mgr.encrypt_with(seal, marked, RECOVERY_KEY_KEY)
            records[RECOVERY_CONFIG_KEY] = want.to_bytes()
        if await barrier.raw_get(HSM_ROOT_KEY_NEXT_KEY) is not None:
            records[HSM_ROOT_KEY_NEXT_KEY] = None  # staged for the activation: done with
    else:
        raise InternalError(f"cannot follow the primary's key holders with the seal in mode {mode.kind}")
    return kh, records


async def stage_root(mgr: SealManager, barrier: Barrier, root_key: bytes) -> None:
    """At activation, before the bulk sync replaces the keyring (HSM seal only): store the
    primary's root key encrypted by this HSM at ``core/hsm/root-key-next``, so a node whose
    activation is cut short before :func:`adopt` still auto-unseals (core tries it when the
    usual root key no longer opens the keyring). InternalError when the HSM fails."""
    seal = mgr.seal
    if (await mgr.mode()).kind != "auto" or seal is None:
        return
    blob = await mgr.encrypt_with(seal, root_key, HSM_ROOT_KEY_NEXT_KEY)
    await write_seal_records(barrier, {HSM_ROOT_KEY_NEXT_KEY: blob})


async def reclaim_keyring(mgr: SealManager, barrier: Barrier) -> bool:
    """A former secondary that now writes for itself (promoted or disabled): seal-wrap the
    keyring it received unwrapped with its own HSM. True when it rewrote the keyring."""
    if mgr.wrap_seal is None or mgr.follows_primary:
        return False
    stored = await barrier.raw_get(KEYRING_PATH)
    if stored is None or stored.startswith(SEAL_WRAP_MAGIC):
        return False
    await barrier.rekey_root(barrier.root_key())  # same keys; the keyring hook wraps it
    log.info("replication_keyring_rewrapped", key_label=mgr.wrap_seal.key_id())
    return True
