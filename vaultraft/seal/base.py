"""The seal interface: something outside the process that encrypts the root key at rest.

An *auto seal* (an HSM through PKCS#11 today) encrypts and decrypts small values with a
key that never leaves the device. Its calls block (a driver round trip, sometimes over a
network), so :class:`AsyncSeal` runs every call of one seal on its own single worker
thread: calls are serialised (PKCS#11 sessions are not thread-safe) and never stall the
event loop.

Errors say what failed without any key material or value: a :class:`SealUnavailable`
means the device cannot be used right now (library, token, PIN, missing key, device
gone) and the node must stay sealed; a :class:`SealDecryptError` means a stored value
does not authenticate under this seal's keys.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from vaultraft.aio import within

SEAL_TYPE_SHAMIR = "shamir"
SEAL_TYPE_PKCS11 = "pkcs11"

T = TypeVar("T")


class SealError(Exception):
    """Base of seal failures; ``str()`` is one line, safe to log and to show a client."""


class SealUnavailable(SealError):
    """The seal cannot be used now (library, token, login, key lookup or device failure).

    ``fatal`` marks failures that retrying cannot fix without an operator (a wrong PIN:
    retrying it could lock the HSM user; a missing library).
    """

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class SealDecryptError(SealError):
    """A stored value is malformed, altered, or was not made by this seal's keys."""


class SealStanzaError(SealError):
    """A ``seal`` stanza (or its VAULT_HSM_* overrides) cannot be used."""


@dataclass(frozen=True)
class Unwrapped:
    """A decrypted value and whether it must be re-encrypted under the current keys.

    ``stale`` is true when an older key (one whose label differs from the configured
    ``key_label``/``hmac_key_label``) opened it: Vault's behaviour after an HSM key
    rotation, where old keys keep decrypting until everything is re-wrapped.
    """

    plaintext: bytes = field(repr=False)
    stale: bool = False
    key_id: str = ""


class AutoSeal(ABC):
    """A blocking seal implementation (one device connection). Not thread-safe."""

    #: Vault's seal type name, e.g. ``"pkcs11"``.
    seal_type: str = ""

    @abstractmethod
    def setup(self) -> None:
        """Connect, log in and find (or generate) the keys; raises SealUnavailable."""

    @abstractmethod
    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """A self-describing blob of ``plaintext`` bound to ``aad``; raises SealUnavailable."""

    @abstractmethod
    def decrypt(self, blob: bytes, aad: bytes) -> Unwrapped:
        """Open a blob made by :meth:`encrypt` (by this or an older key of the same device).

        Raises SealDecryptError (bad blob) or SealUnavailable (device or key missing).
        """

    @abstractmethod
    def health_check(self) -> None:
        """A full round trip through the device; raises SealUnavailable when it fails."""

    @abstractmethod
    def close(self) -> None:
        """Release sessions; idempotent. A later :meth:`setup` reconnects."""

    @abstractmethod
    def key_id(self) -> str:
        """The current encryption key's identifier (its label), for logs and status."""


class AsyncSeal:
    """Runs one :class:`AutoSeal` on a dedicated worker thread; every method awaits it."""

    def __init__(self, seal: AutoSeal, *, timeout: float = 30.0) -> None:
        """Wrap ``seal``; a call that takes longer than ``timeout`` s raises SealUnavailable."""
        self.seal = seal
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"seal-{seal.seal_type}")

    @property
    def seal_type(self) -> str:
        """The wrapped seal's type name."""
        return self.seal.seal_type

    def key_id(self) -> str:
        """The current key's identifier (no device call)."""
        return self.seal.key_id()

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, fn)
        try:
            return await within(fut, self.timeout)
        except asyncio.TimeoutError:
            raise SealUnavailable(f"{self.seal_type} seal: the device did not answer "
                                  f"within {self.timeout:g}s") from None

    async def setup(self) -> None:
        """See :meth:`AutoSeal.setup`."""
        await self._run(self.seal.setup)

    async def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """See :meth:`AutoSeal.encrypt`."""
        return await self._run(lambda: self.seal.encrypt(plaintext, aad))

    async def decrypt(self, blob: bytes, aad: bytes) -> Unwrapped:
        """See :meth:`AutoSeal.decrypt`."""
        return await self._run(lambda: self.seal.decrypt(blob, aad))

    async def health_check(self) -> None:
        """See :meth:`AutoSeal.health_check`."""
        await self._run(self.seal.health_check)

    async def close(self) -> None:
        """Close the device session (the worker thread stays for a later setup)."""
        await self._run(self.seal.close)

    def shutdown(self) -> None:
        """Close the session and stop the worker thread (process exit)."""
        try:
            self._pool.submit(self.seal.close).result(timeout=5)
        except Exception:  # a hung or broken device must not block shutdown
            pass
        self._pool.shutdown(wait=False, cancel_futures=True)
