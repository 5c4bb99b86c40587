"""Rekey and generate-root attempts: Vault's vault/rekey.go and vault/generate_root.go.

Both collect shares from the CURRENT holders (unseal shares under Shamir, recovery shares
with an HSM seal) until the stored threshold is reached, combine them, and prove the
result is the real key before acting. Each attempt has a uuid nonce every share must
quote; a repeated share is an error (Vault's messages), and progress resets once the
threshold is reached, whether or not the key proves right.

* **generate-root** mints a real root token in the token store and hands it back either
  XORed with a one-time password (base62, the token's length; returned ``base64(token XOR
  otp)`` without padding, Vault 1.10+) or encrypted to a PGP key.
* **rekey** makes a new unseal key (or recovery key), splits it into new shares,
  optionally encrypts each to a holder's PGP key (and backs the encrypted shares up
  behind the barrier), and optionally holds the change until a threshold of the NEW
  shares is given back (``require_verification``), so they are known to be safe before
  the old ones stop working.

The state lives only in memory on the active node (Vault's design): it is gone after a
seal or a restart, and a standby forwards these requests to the active node.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, TYPE_CHECKING, Any

import structlog

from vaultraft.core.seal_manager import SealManager
from vaultraft.core.seal_state import _zero
from vaultraft.core.tokens.entry import TOKEN_PREFIX, TOKEN_RANDOM_LENGTH, random_base62
from vaultraft.core.views import BarrierView
from vaultraft.logical import InternalError, InvalidRequest, NotFound, NotLeader, Sealed, StorageEntry, Unavailable
from vaultraft.seal import pgp
from vaultraft.seal.shamir import split
from vaultraft.seal.shamir_seal import DUPLICATE_GENERATE_ROOT, DUPLICATE_REKEY, SealConfig, SealConfigError, ShareError, UnsealProgress

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.core.keys")

OTP_LENGTH = len(TOKEN_PREFIX) + TOKEN_RANDOM_LENGTH
CANCEL_NONCE_WINDOW = 600.0  # Vault: within 10 minutes of init, cancelling a rekey needs its nonce
BACKUP_KEYS = {False: "unseal-keys-backup", True: "recovery-keys-backup"}  # under core/
ROOT_KEY_REKEY_UNSUPPORTED = ("the pkcs11 seal protects the root key, so there are no unseal keys to rekey: "
                              "rotate the HSM key by changing key_label, and use sys/rekey-recovery-key "
                              "(operator rekey -target=recovery) for new recovery shares")
DUPLICATE_VERIFY = "given key has already been provided during this verify operation"
REKEY_ON_SECONDARY = ("the key shares of a performance secondary are its primary's: rekey them on the primary "
                      "(the secondary follows)")
_MIN_KEY, _MAX_KEY = 16, 33


def decode_share(key: str) -> bytes:
    """A share given as hex or base64 (Vault: hex first, unless its length is off)."""
    k = key.strip()
    try:
        raw = bytes.fromhex(k)
        if _MIN_KEY <= len(raw) <= _MAX_KEY:
            return raw
    except ValueError:
        pass
    try:
        return base64.b64decode(k, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'key' must be a valid hex or base64 string") from None


def encode_token(token: str, otp: str) -> str:
    """Vault's roottoken.EncodeToken: base64 (no padding) of token XOR otp (equal lengths)."""
    if len(token) != len(otp):
        raise InternalError("xor of root token failed: length of byte slices is not equivalent")
    return base64.b64encode(bytes(a ^ b for a, b in zip(token.encode(), otp.encode()))).decode().rstrip("=")


def decode_token(encoded: str, otp: str) -> str:
    """Reverse :func:`encode_token` (what ``operator generate-root -decode`` does)."""
    raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    if len(raw) != len(otp):
        raise ValueError("length of byte slices is not equivalent")
    return bytes(a ^ b for a, b in zip(raw, otp.encode())).decode()


async def pgp_encrypt(plaintexts: list[bytes], keys: list[str]) -> tuple[list[str], list[bytes]]:
    """Encrypt ``plaintexts[i]`` to ``keys[i]`` off the event loop; InvalidRequest for a bad key."""
    try:
        return await asyncio.to_thread(pgp.encrypt_shares, plaintexts, keys)
    except pgp.PGPError as e:
        raise InvalidRequest(str(e)) from None


async def pgp_check(keys: list[str]) -> list[str]:
    """Fingerprints of keys that were proven usable for encryption; InvalidRequest otherwise."""
    try:
        return await asyncio.to_thread(pgp.check_keys, keys)
    except pgp.PGPError as e:
        raise InvalidRequest(str(e)) from None


async def active_key_ops(core: "Core") -> "KeyOps":
    """The key operations of an unsealed, active node (Sealed / NotLeader otherwise)."""
    if core.sealed:
        raise Sealed()
    if core.replication.dr_secondary:
        from vaultraft.core.core import DR_PATH_DISABLED

        raise InvalidRequest(DR_PATH_DISABLED)
    if core.replication.activating:  # a staged performance activation: nothing but its own operations
        from vaultraft.core.core import PERF_ACTIVATING

        raise Unavailable(PERF_ACTIVATING)
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    extra = core.unsealed.extra
    ops = extra.get("key_ops")
    if not isinstance(ops, KeyOps):
        ops = extra["key_ops"] = KeyOps(core)
    return ops


@dataclass(frozen=True)
class RekeyRequest:
    """The parameters of ``sys/rekey/init`` (or ``sys/rekey-recovery-key/init``)."""

    secret_shares: int
    secret_threshold: int
    pgp_keys: tuple[str, ...] = ()
    backup: bool = False
    require_verification: bool = False
    stored_shares: int = 0


class _GenerateRoot:
    def __init__(self, otp: str, pgp_key: str, fingerprint: str, threshold: int) -> None:
        self.nonce = str(uuid.uuid4())
        self.otp = otp
        self.pgp_key = pgp_key
        self.fingerprint = fingerprint
        self.progress = UnsealProgress(threshold, duplicate_error=DUPLICATE_GENERATE_ROOT)


class _Rekey:
    def __init__(self, req: RekeyRequest, fingerprints: list[str], threshold: int, recovery: bool) -> None:
        self.req = req
        self.fingerprints = fingerprints
        self.nonce = str(uuid.uuid4())
        self.created = time.monotonic()
        dup = DUPLICATE_REKEY if recovery else DUPLICATE_GENERATE_ROOT  # Vault's own wording per target
        self.progress = UnsealProgress(threshold, duplicate_error=dup)
        self.verification_key: bytearray | None = None
        self.verification_nonce = ""
        self.verify_progress: UnsealProgress | None = None

    def forget(self) -> None:
        self.progress.reset()
        if self.verify_progress is not None:
            self.verify_progress.reset()
        if self.verification_key is not None:
            _zero(self.verification_key)
            self.verification_key = None


class KeyOps:
    """One active node's generate-root attempt and barrier/recovery rekey attempts."""

    def __init__(self, core: "Core", mint: "Callable[[], Awaitable[str]] | None" = None) -> None:
        """``mint`` makes the token a finished generate-root attempt returns (default: a new
        root token; a DR secondary mints DR operation tokens)."""
        self._core = core
        self._mint = mint
        self._lock = asyncio.Lock()
        self._root: _GenerateRoot | None = None
        self._rekey: dict[bool, _Rekey] = {}

    @property
    def _seals(self) -> SealManager:
        return self._core.seals

    async def _threshold(self) -> int:
        cfg = await self._seals.share_config()
        if cfg is None:
            raise InvalidRequest("server is not yet initialized")
        return int(cfg.secret_threshold)

    # ---- generate-root -----------------------------------------------------------------------

    async def generate_root_status(self, otp: str = "") -> dict[str, Any]:
        """Vault's GenerateRootStatusResponse (``otp`` only in the start response)."""
        required = await self._threshold()
        att = self._root
        return {
            "nonce": att.nonce if att else "",
            "started": att is not None,
            "progress": att.progress.progress if att else 0,
            "required": required,
            "complete": False,
            "encoded_token": "",
            "encoded_root_token": "",
            "pgp_fingerprint": att.fingerprint if att else "",
            "otp": otp,
            "otp_length": OTP_LENGTH,
        }

    async def start_generate_root(self, otp: str, pgp_key: str) -> dict[str, Any]:
        """Start an attempt with the caller's OTP, a PGP key, or (neither) a generated OTP,
        which is returned once in this response. InvalidRequest when one is in progress."""
        if otp and pgp_key:
            raise InvalidRequest("only one of \"otp\" and \"pgp_key\" must be specified")
        generated = ""
        fingerprint = ""
        if pgp_key:
            try:
                fingerprint = (await pgp_check([pgp_key]))[0]
            except InvalidRequest as e:
                raise InvalidRequest(f"error parsing PGP key: {e}") from None
        elif otp:
            if len(otp) != OTP_LENGTH:
                raise InvalidRequest("OTP string is wrong length")
        else:
            otp = generated = random_base62(OTP_LENGTH)
        threshold = await self._threshold()
        async with self._lock:
            if self._root is not None:
                raise InvalidRequest("root generation already in progress")
            self._root = _GenerateRoot(otp, pgp_key, fingerprint, threshold)
            log.info("root_generation_initialized", nonce=self._root.nonce, pgp=bool(pgp_key))
        return await self.generate_root_status(generated)

    async def cancel_generate_root(self) -> None:
        """Drop the attempt and its progress (Vault: no nonce needed)."""
        async with self._lock:
            if self._root is not None:
                self._root.progress.reset()
            self._root = None

    async def update_generate_root(self, key: bytes, nonce: str) -> dict[str, Any]:
        """Add one share; at the threshold, verify the combined key and mint a root token."""
        threshold = await self._threshold()
        async with self._lock:
            att = self._root
            if att is None:
                raise InvalidRequest("no root generation in progress")
            if nonce != att.nonce:
                raise InvalidRequest(f'incorrect nonce supplied; nonce for this root generation operation is "{att.nonce}"')
            try:
                combined = att.progress.add(key)
            except ShareError as e:
                raise InvalidRequest(str(e)) from None
            status = await self.generate_root_status()
            if combined is None:
                return status
            secret = bytearray(combined)
            try:
                await self._seals.verify_shares_key(bytes(secret))
            except InvalidRequest as e:
                log.error("root_generation_aborted", error=str(e))
                raise InvalidRequest(f"root generation aborted: {e}") from None
            finally:
                _zero(secret)
            encoded = await self._mint_root_token(att)
            self._root = None
            log.info("root_generation_finished", nonce=att.nonce)
        return {**status, "nonce": nonce, "progress": threshold, "required": threshold, "complete": True,
                "encoded_token": encoded, "encoded_root_token": encoded}

    async def _mint_root_token(self, att: _GenerateRoot) -> str:
        if self._mint is not None:
            token_id = await self._mint()
            if att.otp:
                return encode_token(token_id, att.otp)
            _, blobs = await pgp_encrypt([token_id.encode()], [att.pgp_key])
            return base64.b64encode(blobs[0]).decode()
        tokens = self._core.unsealed.tokens
        entry = await tokens.create_root_token()
        try:
            if att.otp:
                return encode_token(entry.id, att.otp)
            _, blobs = await pgp_encrypt([entry.id.encode()], [att.pgp_key])
            return base64.b64encode(blobs[0]).decode()
        except BaseException:
            await tokens.revoke_orphan(entry.id)  # never leave an unreturned root token behind
            raise

    # ---- rekey ------------------------------------------------------------------------------

    def _check_target(self, recovery: bool) -> None:
        if recovery and not self._seals.recovery_supported:
            raise InvalidRequest("recovery rekeying not supported")

    def _backup_view(self) -> BarrierView:
        return BarrierView(self._core.barrier, "core/", local=False)

    async def rekey_status(self, recovery: bool) -> dict[str, Any]:
        """Vault's RekeyStatusResponse for the barrier (or recovery) rekey."""
        self._check_target(recovery)
        required = await self._threshold()
        att = self._rekey.get(recovery)
        out: dict[str, Any] = {"nonce": "", "started": False, "t": 0, "n": 0, "progress": 0,
                               "required": required, "pgp_fingerprints": None, "backup": False,
                               "verification_required": False}
        if att is not None:
            out.update(nonce=att.nonce, started=True, t=att.req.secret_threshold, n=att.req.secret_shares,
                       progress=att.progress.progress, verification_required=att.req.require_verification)
            if att.fingerprints:
                out.update(pgp_fingerprints=list(att.fingerprints), backup=att.req.backup)
        return out

    async def start_rekey(self, recovery: bool, req: RekeyRequest) -> dict[str, Any]:
        """Start a rekey with ``req`` (Vault's validation and messages); returns the status."""
        self._check_target(recovery)
        if self._core.replication.perf_secondary:
            raise InvalidRequest(REKEY_ON_SECONDARY)
        if req.backup and not req.pgp_keys:
            raise InvalidRequest("cannot request a backup of the new keys without providing PGP keys for encryption")
        if not recovery and self._seals.recovery_supported:
            raise InvalidRequest(ROOT_KEY_REKEY_UNSUPPORTED)
        if req.pgp_keys and len(req.pgp_keys) != req.secret_shares:
            raise InvalidRequest("incorrect number of PGP keys for rekey")
        if req.secret_threshold > req.secret_shares:
            raise InvalidRequest("provided threshold greater than the total shares")
        if recovery and req.stored_shares > 0:
            raise InvalidRequest("stored shares not supported by recovery key")
        what = "invalid recovery configuration" if recovery else "invalid rekey seal configuration"
        try:
            SealConfig(req.secret_shares, req.secret_threshold, pgp_keys=req.pgp_keys).validate()
        except SealConfigError as e:
            raise InvalidRequest(f"{what}: {e}") from None
        fingerprints = await pgp_check(list(req.pgp_keys)) if req.pgp_keys else []
        threshold = await self._threshold()
        async with self._lock:
            if recovery in self._rekey:
                raise InvalidRequest("rekey already in progress")
            att = self._rekey[recovery] = _Rekey(req, fingerprints, threshold, recovery)
            log.info("rekey_initialized", target="recovery" if recovery else "barrier", nonce=att.nonce,
                     shares=req.secret_shares, threshold=req.secret_threshold,
                     verification_required=req.require_verification, backup=req.backup)
        return await self.rekey_status(recovery)

    async def cancel_rekey(self, recovery: bool, nonce: str = "") -> None:
        """Drop the rekey (and its verification); within 10 minutes of init only with its nonce."""
        self._check_target(recovery)
        async with self._lock:
            att = self._rekey.get(recovery)
            if att is None:
                return
            if nonce != att.nonce and time.monotonic() - att.created < CANCEL_NONCE_WINDOW:
                raise InvalidRequest("invalid request")
            att.forget()
            del self._rekey[recovery]

    async def update_rekey(self, recovery: bool, key: bytes, nonce: str) -> dict[str, Any]:
        """Add one CURRENT share; at the threshold verify it, make the new key and shares,
        and either apply them or wait for verification. Returns the status while
        incomplete, else Vault's RekeyUpdateResponse (the new shares, hex and base64)."""
        self._check_target(recovery)
        async with self._lock:
            att = self._rekey.get(recovery)
            if att is None:
                raise InvalidRequest("no recovery rekey in progress" if recovery else "no barrier rekey in progress")
            if att.verification_key is not None:
                raise InvalidRequest("rekey operation already finished; verification must be performed; nonce for "
                                     f'the verification operation is "{att.verification_nonce}"')
            if nonce != att.nonce:
                raise InvalidRequest(f'incorrect nonce supplied; nonce for this rekey operation is "{att.nonce}"')
            try:
                combined = att.progress.add(key)
            except ShareError as e:
                raise InvalidRequest(str(e)) from None
            if combined is None:
                return await self.rekey_status(recovery)
            secret = bytearray(combined)
            try:
                await self._seals.verify_shares_key(bytes(secret))
            except InvalidRequest as e:
                kind = "recovery key" if recovery or self._seals.recovery_supported else "root key"
                log.error("rekey_verification_failed", target="recovery" if recovery else "barrier")
                raise InvalidRequest(f"{kind} verification failed: {e}") from None
            finally:
                _zero(secret)
            return await self._new_shares(recovery, att)

    async def _new_shares(self, recovery: bool, att: _Rekey) -> dict[str, Any]:
        req = att.req
        new_key = bytearray(os.urandom(32))
        try:
            shares = split(bytes(new_key), req.secret_shares, req.secret_threshold)
            fingerprints: list[str] = []
            if req.pgp_keys:
                fingerprints, shares = await pgp_encrypt([s.hex().encode() for s in shares], list(req.pgp_keys))
                if req.backup:
                    await self._store_backup(recovery, att.nonce, fingerprints, shares)
            out: dict[str, Any] = {
                "nonce": att.nonce, "complete": True,
                "keys": [s.hex() for s in shares], "keys_base64": [base64.b64encode(s).decode() for s in shares],
                "pgp_fingerprints": fingerprints or None, "backup": req.backup,
                "verification_required": req.require_verification, "verification_nonce": "",
            }
            if req.require_verification:
                att.verification_key = bytearray(new_key)
                att.verification_nonce = str(uuid.uuid4())
                att.verify_progress = UnsealProgress(req.secret_threshold, duplicate_error=DUPLICATE_VERIFY)
                out["verification_nonce"] = att.verification_nonce
                return out
            await self._apply(recovery, att, bytes(new_key))
            return out
        finally:
            _zero(new_key)

    async def _apply(self, recovery: bool, att: _Rekey, new_key: bytes) -> None:
        req = att.req
        cfg = SealConfig(req.secret_shares, req.secret_threshold, pgp_keys=req.pgp_keys, backup=req.backup,
                         nonce=att.nonce)
        if recovery:
            await self._seals.set_recovery_key(new_key, cfg)
        else:
            stored = await self._seals.config()
            await self._seals.set_unseal_key(new_key, SealConfig(
                req.secret_shares, req.secret_threshold, type=stored.type if stored else "shamir",
                pgp_keys=req.pgp_keys, backup=req.backup, nonce=att.nonce))
        att.forget()
        self._rekey.pop(recovery, None)
        log.info("rekey_completed", target="recovery" if recovery else "barrier", nonce=att.nonce,
                 shares=req.secret_shares, threshold=req.secret_threshold)

    # ---- verification -------------------------------------------------------------------------

    def _verifying(self, recovery: bool) -> _Rekey:
        att = self._rekey.get(recovery)
        if att is None:
            raise InvalidRequest("no rekey in progress")
        if att.verification_key is None or att.verify_progress is None:
            raise InvalidRequest("no rekey verification in progress")
        return att

    async def verify_status(self, recovery: bool) -> dict[str, Any]:
        """Vault's RekeyVerificationStatusResponse."""
        self._check_target(recovery)
        att = self._verifying(recovery)
        assert att.verify_progress is not None
        return {"nonce": att.verification_nonce, "started": True, "t": att.req.secret_threshold,
                "n": att.req.secret_shares, "progress": att.verify_progress.progress}

    async def restart_verify(self, recovery: bool) -> dict[str, Any]:
        """Forget verification progress and issue a new verification nonce."""
        self._check_target(recovery)
        async with self._lock:
            att = self._verifying(recovery)
            assert att.verify_progress is not None
            att.verify_progress.reset()
            att.verification_nonce = str(uuid.uuid4())
        return await self.verify_status(recovery)

    async def update_verify(self, recovery: bool, key: bytes, nonce: str) -> dict[str, Any]:
        """Add one NEW share; at the threshold, apply the rekey if they combine to the new
        key (else a new verification nonce and Vault's error)."""
        self._check_target(recovery)
        async with self._lock:
            att = self._verifying(recovery)
            assert att.verify_progress is not None and att.verification_key is not None
            if nonce != att.verification_nonce:
                raise InvalidRequest(f'incorrect nonce supplied; nonce for this verify operation is '
                                     f'"{att.verification_nonce}"')
            try:
                combined = att.verify_progress.add(key)
            except ShareError as e:
                if "already been provided" not in str(e) and "invalid key" not in str(e):
                    att.verification_nonce = str(uuid.uuid4())
                raise InvalidRequest(str(e)) from None
            if combined is None:
                return await self.verify_status(recovery)
            candidate = bytearray(combined)
            try:
                if not hmac.compare_digest(bytes(candidate), bytes(att.verification_key)):
                    att.verification_nonce = str(uuid.uuid4())
                    log.error("rekey_verification_failed", target="recovery" if recovery else "barrier")
                    raise InvalidRequest("rekey verification failed; incorrect key shares supplied")
                done_nonce = att.verification_nonce
                await self._apply(recovery, att, bytes(candidate))
            finally:
                _zero(candidate)
        return {"nonce": done_nonce, "complete": True}

    # ---- backup ---------------------------------------------------------------------------------

    async def _store_backup(self, recovery: bool, nonce: str, fingerprints: list[str], blobs: list[bytes]) -> None:
        keys: dict[str, list[str]] = {}
        for fp, blob in zip(fingerprints, blobs):
            keys.setdefault(fp, []).append(blob.hex())
        body = json.dumps({"Nonce": nonce, "Keys": keys}).encode()
        await self._backup_view().put(StorageEntry(BACKUP_KEYS[recovery], body))

    async def read_backup(self, recovery: bool) -> dict[str, Any]:
        """The backed-up PGP-encrypted shares: {nonce, keys: {fp: [hex]}, keys_base64}."""
        found = await self._backup_view().get(BACKUP_KEYS[recovery])
        if found is None:
            raise NotFound()
        try:
            obj = json.loads(found.value)
            keys = {str(fp): [str(h) for h in vals] for fp, vals in (obj.get("Keys") or {}).items()}
        except (ValueError, AttributeError, TypeError):
            raise InternalError("error decoding backup keys") from None
        b64 = {fp: [base64.b64encode(bytes.fromhex(h)).decode() for h in vals] for fp, vals in keys.items()}
        return {"nonce": str(obj.get("Nonce", "")), "keys": keys, "keys_base64": b64}

    async def delete_backup(self, recovery: bool) -> None:
        """Remove the backed-up shares (no error when there are none)."""
        await self._backup_view().delete(BACKUP_KEYS[recovery])
