"""The Shamir seal's pieces: unseal progress, root-key wrapping, and the seal config.

Vault's modern Shamir seal: the unseal-key shares combine into a key-encryption key
(KEK); the barrier's root key is stored at ``core/root-key`` wrapped by that KEK; the
root key then opens the barrier keyring. Rekeying the shares therefore only rewraps
``core/root-key`` and never touches the keyring or data.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultraft.seal.shamir import SHARE_OVERHEAD, combine

ROOT_KEY_PATH = "core/root-key"
SEAL_CONFIG_PATH = "core/seal-config"
RECOVERY_CONFIG_PATH = "core/recovery-config"

_WRAP_VERSION = 1
_WRAP_AAD = ROOT_KEY_PATH.encode()
_NONCE = 12
KEK_BYTES = 32

#: Vault's duplicate-share messages (its unseal silently ignores a repeated share).
DUPLICATE_GENERATE_ROOT = "given key has already been provided during this generation operation"
DUPLICATE_REKEY = "given key has already been provided during this rekey operation"

#: Vault's AES-GCM barrier accepts keys of 16..32 bytes, plus the share's x byte.
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 32


class ShareError(ValueError):
    """A share that cannot be used: wrong size, duplicate (when rejected), or not combinable."""


class RootKeyUnwrapError(ValueError):
    """The KEK does not open the stored root key (wrong or insufficient shares)."""


class SealConfigError(ValueError):
    """A seal configuration Vault would refuse; the message is Vault's."""


class UnsealProgress:
    """Collects key shares until ``threshold`` distinct ones are in, then combines them.

    Vault's unseal ignores a repeated share (progress unchanged); pass ``duplicate_error``
    (e.g. :data:`DUPLICATE_GENERATE_ROOT`) to raise ShareError instead, as Vault's
    generate-root and rekey do. Not thread-safe: the caller serialises access.
    """

    def __init__(
        self,
        threshold: int,
        *,
        duplicate_error: str | None = None,
        min_key_bytes: int = MIN_KEY_BYTES,
        max_key_bytes: int = MAX_KEY_BYTES,
    ) -> None:
        """Track one attempt needing ``threshold`` shares (1 means the share is the key)."""
        if not 1 <= threshold <= 255:
            raise ValueError("threshold must be between 1 and 255")
        self._threshold = threshold
        self._duplicate_error = duplicate_error
        self._min = min_key_bytes
        self._max = max_key_bytes + SHARE_OVERHEAD
        self._parts: list[bytearray] = []
        self._nonce = ""

    @property
    def threshold(self) -> int:
        """How many distinct shares complete an attempt."""
        return self._threshold

    @property
    def progress(self) -> int:
        """Distinct shares collected in the current attempt."""
        return len(self._parts)

    @property
    def nonce(self) -> str:
        """The current attempt's uuid4 (``""`` while no share has been given, as Vault)."""
        return self._nonce

    def add(self, share: bytes) -> bytes | None:
        """Add a share; returns the combined key once ``threshold`` shares are in, else None.

        The attempt resets after combining (whether or not the key later proves right).
        Raises ShareError for a share of the wrong size, a duplicate when
        ``duplicate_error`` is set, or shares that cannot be combined.
        """
        if len(share) < self._min:
            raise ShareError(f"invalid key: key is shorter than minimum {self._min} bytes")
        if len(share) > self._max:
            raise ShareError(f"invalid key: key is longer than maximum {self._max} bytes")
        for existing in self._parts:
            if hmac.compare_digest(bytes(existing), share):
                if self._duplicate_error is not None:
                    raise ShareError(self._duplicate_error)
                return None
        if not self._parts:
            self._nonce = str(uuid.uuid4())
        self._parts.append(bytearray(share))
        if len(self._parts) < self._threshold:
            return None
        try:
            if self._threshold == 1:
                return bytes(self._parts[0])
            return combine([bytes(p) for p in self._parts])
        except ValueError as e:
            raise ShareError(f"failed to compute combined key: {e}") from None
        finally:
            self.reset()

    def reset(self) -> None:
        """Drop collected shares (overwriting them) and the nonce."""
        for p in self._parts:
            p[:] = bytes(len(p))
        self._parts = []
        self._nonce = ""


def wrap_root_key(kek: bytes, root_key: bytes) -> bytes:
    """``root_key`` sealed by ``kek`` with AES-256-GCM (AAD ``core/root-key``)."""
    if len(kek) != KEK_BYTES:
        raise ValueError(f"key-encryption key must be {KEK_BYTES} bytes")
    nonce = secrets.token_bytes(_NONCE)
    return bytes([_WRAP_VERSION]) + nonce + AESGCM(bytes(kek)).encrypt(nonce, bytes(root_key), _WRAP_AAD)


def unwrap_root_key(kek: bytes, blob: bytes) -> bytes:
    """The root key inside ``blob``; raises RootKeyUnwrapError for a wrong KEK or bad blob."""
    if len(kek) != KEK_BYTES:
        raise RootKeyUnwrapError(f"invalid key length: {len(kek)} bytes")
    if len(blob) < 1 + _NONCE + 16 or blob[0] != _WRAP_VERSION:
        raise RootKeyUnwrapError("stored root key is malformed")
    try:
        return AESGCM(bytes(kek)).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _WRAP_AAD)
    except InvalidTag:
        raise RootKeyUnwrapError("cipher: message authentication failed") from None


@dataclass(frozen=True)
class SealConfig:
    """Vault's seal configuration as stored at ``core/seal-config`` (JSON, Vault's names).

    ``recovery_*`` describe recovery keys for auto-unseal (HSM) seals; 0 when unused.
    """

    secret_shares: int
    secret_threshold: int
    type: str = "shamir"
    pgp_keys: tuple[str, ...] = ()
    nonce: str = ""
    backup: bool = False
    stored_shares: int = 1
    recovery_shares: int = 0
    recovery_threshold: int = 0
    recovery_pgp_keys: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        """Raise SealConfigError with Vault's message if Vault would refuse this config."""
        _validate_pair(self.secret_shares, self.secret_threshold, "")
        if self.stored_shares > 1:
            raise SealConfigError("stored keys cannot be larger than 1")
        if self.pgp_keys and len(self.pgp_keys) != self.secret_shares:
            raise SealConfigError("count mismatch between number of provided PGP keys and number of shares")
        if self.recovery_shares or self.recovery_threshold:
            _validate_pair(self.recovery_shares, self.recovery_threshold, "recovery ")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with Vault's field names."""
        d = asdict(self)
        d["pgp_keys"] = list(self.pgp_keys) or None
        d["recovery_pgp_keys"] = list(self.recovery_pgp_keys) or None
        return d

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (the stored record)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SealConfig":
        """Build from a dict as produced by :meth:`to_dict` (unknown keys ignored)."""
        try:
            return SealConfig(
                secret_shares=int(d["secret_shares"]),
                secret_threshold=int(d["secret_threshold"]),
                type=str(d.get("type") or "shamir"),
                pgp_keys=tuple(str(k) for k in (d.get("pgp_keys") or ())),
                nonce=str(d.get("nonce") or ""),
                backup=bool(d.get("backup", False)),
                stored_shares=int(d.get("stored_shares", 1) or 0),
                recovery_shares=int(d.get("recovery_shares", 0) or 0),
                recovery_threshold=int(d.get("recovery_threshold", 0) or 0),
                recovery_pgp_keys=tuple(str(k) for k in (d.get("recovery_pgp_keys") or ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SealConfigError(f"malformed seal configuration: {type(e).__name__}") from None

    @staticmethod
    def from_bytes(raw: bytes) -> "SealConfig":
        """Parse :meth:`to_bytes` output; raises SealConfigError."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise SealConfigError("malformed seal configuration: not JSON") from None
        if not isinstance(obj, dict):
            raise SealConfigError("malformed seal configuration: not an object")
        return SealConfig.from_dict(obj)


def _validate_pair(shares: int, threshold: int, what: str) -> None:
    if shares < 1:
        raise SealConfigError(f"{what}shares must be at least one")
    if threshold < 1:
        raise SealConfigError(f"{what}threshold must be at least one")
    if shares > 1 and threshold == 1:
        raise SealConfigError(f"{what}threshold must be greater than one for multiple shares")
    if shares > 255:
        raise SealConfigError(f"{what}shares must be less than 256")
    if threshold > 255:
        raise SealConfigError(f"{what}threshold must be less than 256")
    if threshold > shares:
        raise SealConfigError(f"{what}threshold cannot be larger than shares")
