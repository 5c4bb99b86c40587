"""The security barrier: AES-256-GCM between core and the untrusted physical layer.

Everything core stores goes through :meth:`Barrier.apply` / :meth:`Barrier.get` and is
encrypted under the active keyring term with the storage path as associated data. The
keyring lives at ``core/keyring``, sealed with the root key. Only a few seal records
(``core/seal-config``, ``core/root-key``) bypass encryption via ``raw_*``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultraft.barrier.errors import (
    BarrierAlreadyInitialized,
    BarrierDecryptError,
    BarrierError,
    BarrierInvalidKey,
    BarrierNotInitialized,
    BarrierSealed,
    BarrierWriteError,
    ReplicatedReadOnly,
)
from vaultraft.barrier.keyring import (
    KEY_BYTES,
    KEYRING_TERM,
    Keyring,
    open_with,
    parse_header,
    seal_with,
)
from vaultraft.randpool import unique_bytes
from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.physical import ApplyResult, Physical
from vaultraft.storage.wal import is_cluster_own

KEYRING_PATH = "core/keyring"
_KEYRING_AAD = KEYRING_PATH.encode()

#: One barrier write: (storage path, plaintext or None for a delete, local-only flag).
BarrierOp = tuple[str, bytes | None, bool]


class KeyStatus(NamedTuple):
    """What ``sys/key-status`` reports."""

    term: int
    install_time: _dt.datetime
    encryptions: int


class SealWrapper(Protocol):
    """Seal wrap (issue 4): an extra encryption layer by the seal (an HSM) for chosen records.

    ``seal_wrap`` turns a value into what is stored; ``seal_unwrap`` reverses it and passes
    through values that were never wrapped. Exceptions propagate to the caller unchanged.
    """

    async def seal_wrap(self, path: str, value: bytes) -> bytes:
        """The stored form of ``value`` at ``path``."""
        ...

    async def seal_unwrap(self, path: str, value: bytes) -> bytes:
        """The value behind a stored form made by :meth:`seal_wrap` (or ``value`` itself)."""
        ...


class Barrier:
    """Async encrypting view over a :class:`Physical`; starts sealed."""

    def __init__(self, physical: Physical) -> None:
        """A sealed barrier over ``physical``."""
        self._physical = physical
        self._keyring: Keyring | None = None
        self._aeads: dict[int, AESGCM] = {}
        self._encryptions = 0
        self._lock = asyncio.Lock()
        self._keyring_wrapper: SealWrapper | None = None

    @property
    def physical(self) -> Physical:
        """The physical backend underneath (ciphertext only)."""
        return self._physical

    @property
    def sealed(self) -> bool:
        """True until a successful :meth:`unseal`, and again after :meth:`seal`."""
        return self._keyring is None

    # -- lifecycle -----------------------------------------------------------------------

    async def initialized(self) -> bool:
        """Whether a keyring exists in storage (works while sealed)."""
        return await self._physical.get(KEYRING_PATH) is not None

    async def initialize(self, root_key: bytes) -> None:
        """Create and store a new keyring sealed by ``root_key``; the barrier stays sealed.

        Raises BarrierAlreadyInitialized if ``core/keyring`` exists.
        """
        _check_root_key(root_key)
        async with self._lock:
            if await self.initialized():
                raise BarrierAlreadyInitialized()
            ring = Keyring.new(root_key)
            try:
                await self._write_keyring(ring)
            finally:
                ring.zero()

    async def unseal(self, root_key: bytes) -> None:
        """Open the stored keyring with ``root_key``; a no-op if already unsealed.

        Raises BarrierNotInitialized (no keyring) or BarrierInvalidKey (wrong root key).
        """
        _check_root_key(root_key)
        async with self._lock:
            if self._keyring is not None:
                return
            self._install(await self._read_keyring(root_key))

    def seal(self) -> None:
        """Forget every key, overwriting the key buffers; later reads/writes raise BarrierSealed."""
        ring, self._keyring = self._keyring, None
        self._aeads.clear()
        self._encryptions = 0
        if ring is not None:
            ring.zero()

    async def switch_root_key(self, root_key: bytes) -> None:
        """Open the stored keyring with a different ``root_key`` and use it from now on (a
        replication secondary whose storage now holds its primary's keyring). Raises
        BarrierInvalidKey when ``root_key`` does not open it; the old keyring stays then."""
        _check_root_key(root_key)
        async with self._lock:
            self._require()
            self._install(await self._read_keyring(root_key))

    async def reload_keyring(self) -> None:
        """Re-read the keyring with the current root key (a follower after a leader's rotate)."""
        async with self._lock:
            ring = self._require()
            self._install(await self._read_keyring(bytes(ring.root_key)))

    async def rotate(self) -> int:
        """Install a new term for new writes (old terms still decrypt); returns the new term."""
        async with self._lock:
            new = self._require().with_new_term()
            await self._write_keyring(new)
            self._install(new)
            return new.active_term

    async def rekey_root(self, new_root_key: bytes) -> None:
        """Re-seal the keyring under ``new_root_key`` (data keys unchanged)."""
        _check_root_key(new_root_key)
        async with self._lock:
            new = self._require().with_root_key(new_root_key)
            await self._write_keyring(new)
            self._install(new)

    def key_status(self) -> KeyStatus:
        """Active term, its install time, and encryptions under it since unseal."""
        active = self._require().active()
        return KeyStatus(active.term, active.install_time, self._encryptions)

    def root_key(self) -> bytes:
        """A copy of the root key (for core's root-key rewrap); raises BarrierSealed."""
        return bytes(self._require().root_key)

    def set_keyring_wrapper(self, wrapper: SealWrapper | None) -> None:
        """Seal-wrap the keyring record from now on: ``wrapper`` encrypts it once more when
        written and opens it when read (None: store it as sealed by the root key only)."""
        self._keyring_wrapper = wrapper

    # -- data path -----------------------------------------------------------------------

    def encrypt(self, path: str, plaintext: bytes) -> bytes:
        """Ciphertext of ``plaintext`` for storage at ``path`` under the active term."""
        ring = self._require()
        term = ring.active_term
        ct = seal_with(self._aead(ring, term), term, path.encode("utf-8"), plaintext)
        self._encryptions += 1
        return ct

    def decrypt(self, path: str, ciphertext: bytes) -> bytes:
        """Plaintext of a ciphertext stored at ``path``; raises BarrierDecryptError."""
        ring = self._require()
        term = parse_header(ciphertext)
        if term not in ring.keys:
            raise BarrierDecryptError(f"no decryption key available for term {term}")
        return open_with(self._aead(ring, term), path.encode("utf-8"), ciphertext)

    async def get(self, key: str) -> bytes | None:
        """The plaintext at ``key``, or None; raises BarrierSealed / BarrierDecryptError."""
        self._require()
        ct = await self._physical.get(key)
        return None if ct is None else self.decrypt(key, ct)

    async def list(self, prefix: str) -> list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted."""
        self._require()
        return await self._physical.list(prefix)

    #: Set on a performance secondary: replicated (non-local) keys belong to the primary.
    replicated_read_only = False

    def _check_writable(self, key: str, local: bool) -> None:
        if self.replicated_read_only and not local and not is_cluster_own(key):
            raise ReplicatedReadOnly()

    async def apply(self, ops: Sequence[BarrierOp]) -> ApplyResult:
        """Encrypt every value and apply all ops as ONE physical batch (atomic, in order).

        Raises ReplicatedReadOnly (writing nothing) for a replicated key on a performance
        secondary."""
        self._require()
        if self.replicated_read_only:  # only a performance secondary pays for the check
            for key, _, local in ops:
                self._check_writable(key, local)
        batch_ops: list[Op] = []
        for key, value, local in ops:
            if value is None:
                batch_ops.append(Op.delete(key, local=local))
            else:
                batch_ops.append(Op.put(key, self.encrypt(key, value), local=local))
        return await self._physical.apply(Batch(tuple(batch_ops), unique_bytes(16)))

    async def put(self, key: str, value: bytes, *, local: bool = False) -> ApplyResult:
        """Shorthand for a one-op :meth:`apply` writing ``value`` at ``key``."""
        return await self.apply([(key, value, local)])

    async def delete(self, key: str, *, local: bool = False) -> ApplyResult:
        """Shorthand for a one-op :meth:`apply` deleting ``key``."""
        return await self.apply([(key, None, local)])

    # -- unencrypted seal records --------------------------------------------------------

    async def raw_get(self, key: str) -> bytes | None:
        """Stored bytes at ``key`` without decryption (works while sealed)."""
        return await self._physical.get(key)

    async def raw_put(self, key: str, value: bytes) -> None:
        """Store ``value`` at ``key`` unencrypted (seal records only; never ``core/keyring``)."""
        _check_raw_key(key)
        await self._apply_raw(Op.put(key, bytes(value)))

    async def raw_delete(self, key: str) -> None:
        """Delete an unencrypted seal record."""
        _check_raw_key(key)
        await self._apply_raw(Op.delete(key))

    # -- internals -----------------------------------------------------------------------

    def _require(self) -> Keyring:
        ring = self._keyring
        if ring is None:
            raise BarrierSealed()
        return ring

    def _aead(self, ring: Keyring, term: int) -> AESGCM:
        aead = self._aeads.get(term)
        if aead is None:
            aead = AESGCM(bytes(ring.keys[term].key))
            self._aeads[term] = aead
        return aead

    def _install(self, ring: Keyring) -> None:
        old, self._keyring = self._keyring, ring
        self._aeads.clear()
        if old is not None and old is not ring:
            if old.active_term != ring.active_term:
                self._encryptions = 0
            old.zero()

    async def _read_keyring(self, root_key: bytes) -> Keyring:
        blob = await self._physical.get(KEYRING_PATH)
        if blob is None:
            raise BarrierNotInitialized()
        if self._keyring_wrapper is not None:
            blob = await self._keyring_wrapper.seal_unwrap(KEYRING_PATH, blob)
        try:
            if parse_header(blob) != KEYRING_TERM:
                raise BarrierDecryptError("keyring record has a data term")
            plain = open_with(AESGCM(bytes(root_key)), _KEYRING_AAD, blob)
        except BarrierDecryptError:
            raise BarrierInvalidKey() from None
        try:
            return Keyring.from_bytes(plain)
        except ValueError as e:
            raise BarrierError(f"keyring is corrupt: {e}") from None

    async def _write_keyring(self, ring: Keyring) -> None:
        blob = seal_with(AESGCM(bytes(ring.root_key)), KEYRING_TERM, _KEYRING_AAD, ring.to_bytes())
        if self._keyring_wrapper is not None:
            blob = await self._keyring_wrapper.seal_wrap(KEYRING_PATH, blob)
        await self._apply_raw(Op.put(KEYRING_PATH, blob))

    async def _apply_raw(self, op: Op) -> None:
        self._check_writable(op.key, op.local)
        result = await self._physical.apply(Batch((op,), unique_bytes(16)))
        if result.error is not None:
            raise BarrierWriteError(f"storage rejected write: {result.error}")


def _check_root_key(root_key: bytes) -> None:
    if len(root_key) != KEY_BYTES:
        raise BarrierError(f"root key must be {KEY_BYTES} bytes")


def _check_raw_key(key: str) -> None:
    if key == KEYRING_PATH:
        raise BarrierError("the keyring is written only by the barrier")


def decrypt_detached(root_key: bytes, keyring_blob: bytes, path: str, ciphertext: bytes) -> bytes:
    """Decrypt one barrier ciphertext with a keyring record and the root key, without a store.

    For a node joining a Raft cluster: it holds the leader's sealed keyring and a
    challenge encrypted by the leader's barrier, and proves it can unseal by opening
    them. Raises BarrierInvalidKey (wrong root key) or BarrierDecryptError.
    """
    try:
        if parse_header(keyring_blob) != KEYRING_TERM:
            raise BarrierDecryptError("keyring record has a data term")
        plain = open_with(AESGCM(bytes(root_key)), _KEYRING_AAD, keyring_blob)
    except BarrierDecryptError:
        raise BarrierInvalidKey() from None
    ring = Keyring.from_bytes(plain)
    try:
        term = parse_header(ciphertext)
        if term not in ring.keys:
            raise BarrierDecryptError(f"no decryption key available for term {term}")
        return open_with(AESGCM(bytes(ring.keys[term].key)), path.encode("utf-8"), ciphertext)
    finally:
        ring.zero()
