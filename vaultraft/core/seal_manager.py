"""The seal side of core: seal configuration, unseal progress, and the root key's wrapping.

Core asks this module two things: "make shares for a new root key" (init) and "here is a
share; is the root key complete?" (unseal). Everything about how the root key is protected
(Shamir today; an HSM seal plugs in here) stays behind this interface, so core's state
machine does not change when the seal does.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any

from vaultraft.barrier import Barrier
from vaultraft.logical import InvalidRequest, NotInitialized
from vaultraft.seal.shamir import split
from vaultraft.seal.shamir_seal import (
    RootKeyUnwrapError,
    SealConfig,
    ShareError,
    UnsealProgress,
    unwrap_root_key,
    wrap_root_key,
)

SEAL_CONFIG_KEY = "core/seal-config"
ROOT_KEY_KEY = "core/root-key"


def decode_key(key: str) -> bytes:
    """An unseal key given as hex or base64; InvalidRequest otherwise (Vault's message)."""
    k = key.strip()
    try:
        return bytes.fromhex(k)
    except ValueError:
        pass
    try:
        return base64.b64decode(k, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'key' must be a valid hex or base64 string") from None


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


class SealManager:
    """Shamir seal: the root key is wrapped by a key-encryption key split into shares."""

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier
        self._config: SealConfig | None = None
        self._progress: UnsealProgress | None = None

    async def config(self) -> SealConfig | None:
        """The stored seal configuration, or None before init (cached once read)."""
        if self._config is None:
            raw = await self._barrier.raw_get(SEAL_CONFIG_KEY)
            if raw is not None:
                self._config = SealConfig.from_bytes(raw)
        return self._config

    def forget_config(self) -> None:
        """Drop the cached configuration (storage was replaced underneath)."""
        self._config = None
        self._progress = None

    async def status_fields(self, sealed: bool) -> dict[str, Any]:
        """The seal part of ``sys/seal-status``."""
        cfg = await self.config()
        progress = self._progress.progress if (self._progress and sealed) else 0
        return {
            "type": cfg.type if cfg else "shamir",
            "initialized": cfg is not None,
            "t": cfg.secret_threshold if cfg else 0,
            "n": cfg.secret_shares if cfg else 0,
            "progress": progress,
            "nonce": self._progress.nonce if (self._progress and progress) else "",
            "migration": False,
            "recovery_seal": False,
        }

    async def wrap_new_root_key(self, root_key: bytes, secret_shares: int, secret_threshold: int) -> tuple[list[bytes], SealConfig]:
        """Wrap ``root_key`` under a fresh key-encryption key and split that key.

        Stores the wrapped root key; returns the shares and the configuration, which
        the caller stores with :meth:`store_config` once init has fully succeeded.
        """
        check_shares(secret_shares, secret_threshold)
        kek = os.urandom(32)
        shares = [kek] if secret_shares == 1 else split(kek, secret_shares, secret_threshold)
        await self._barrier.raw_put(ROOT_KEY_KEY, wrap_root_key(kek, root_key))
        return shares, SealConfig(type="shamir", secret_shares=secret_shares, secret_threshold=secret_threshold)

    async def store_config(self, cfg: SealConfig) -> None:
        """Persist the seal configuration: from now on the node counts as initialized."""
        await self._barrier.raw_put(SEAL_CONFIG_KEY, cfg.to_bytes())
        self._config = cfg

    def reset_progress(self) -> None:
        """Forget the shares submitted so far."""
        if self._progress is not None:
            self._progress.reset()
        self._progress = None

    async def submit_share(self, key: str) -> bytes | None:
        """Add one share (hex or base64); the root key once the threshold is reached.

        InvalidRequest for a malformed share or a combination that does not unwrap the
        root key (progress is reset); NotInitialized before init.
        """
        cfg = await self.config()
        if cfg is None:
            raise NotInitialized()
        share = decode_key(key)
        if self._progress is None:
            self._progress = UnsealProgress(cfg.secret_threshold)
        try:
            kek = self._progress.add(share)
        except ShareError as e:
            self.reset_progress()
            raise InvalidRequest(str(e)) from None
        if kek is None:
            return None
        self._progress = None
        blob = await self._barrier.raw_get(ROOT_KEY_KEY)
        if blob is None:
            raise InvalidRequest("stored root key is missing")
        try:
            return unwrap_root_key(kek, blob)
        except RootKeyUnwrapError:
            raise InvalidRequest("Error unsealing: failed to decrypt the root key: invalid key or key combination") from None
