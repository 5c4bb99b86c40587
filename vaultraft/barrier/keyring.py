"""The keyring (term → data-encryption key, plus the root key) and the ciphertext format.

Ciphertext layout (every value below the barrier, and the keyring record itself)::

    version (1 byte = 1) | term (4 bytes, big-endian) | nonce (12 random bytes) | AES-256-GCM ct+tag

The associated data is the storage path, so a ciphertext copied to another key does not
decrypt. The keyring record uses term 0 and is sealed with the root key.
"""

from __future__ import annotations

import datetime as _dt
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultraft.barrier.errors import BarrierDecryptError
from vaultraft.randpool import unique_bytes

CIPHERTEXT_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + 4 + NONCE_BYTES
MAX_TERM = 0xFFFFFFFF
KEYRING_FORMAT = 1
KEYRING_TERM = 0  # the term byte-field of the keyring record (sealed with the root key)

_HEADER = struct.Struct(">BI")


def seal_with(aead: AESGCM, term: int, aad: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` under ``aead`` as term ``term`` with associated data ``aad``."""
    nonce = unique_bytes(NONCE_BYTES)  # unique, not secret: sliced from a pooled kernel read
    return _HEADER.pack(CIPHERTEXT_VERSION, term) + nonce + aead.encrypt(nonce, plaintext, aad)


def parse_header(ciphertext: bytes) -> int:
    """The term of ``ciphertext``; raises BarrierDecryptError if it is too short or of another version."""
    if len(ciphertext) < HEADER_BYTES + TAG_BYTES:
        raise BarrierDecryptError("ciphertext too short")
    version, term = _HEADER.unpack_from(ciphertext)
    if version != CIPHERTEXT_VERSION:
        raise BarrierDecryptError("version bytes mis-match")
    return int(term)


def open_with(aead: AESGCM, aad: bytes, ciphertext: bytes) -> bytes:
    """Decrypt a ciphertext whose header was already checked; raises BarrierDecryptError."""
    nonce = ciphertext[5:HEADER_BYTES]
    try:
        return aead.decrypt(nonce, ciphertext[HEADER_BYTES:], aad)
    except InvalidTag:
        raise BarrierDecryptError("cipher: message authentication failed") from None


def now_utc() -> _dt.datetime:
    """The current time in UTC, to the microsecond."""
    return _dt.datetime.now(_dt.UTC)


@dataclass(frozen=True, eq=False)
class TermKey:
    """One data-encryption key. ``key`` is a bytearray so that sealing can overwrite it."""

    term: int
    key: bytearray
    install_time: _dt.datetime


class Keyring:
    """Mutable holder of key material: terms → keys, the active term, and the root key.

    Not a value object: it owns secret bytearrays and :meth:`zero` overwrites them.
    Changes produce a new Keyring (the old one stays valid until zeroed).
    """

    def __init__(self, root_key: bytearray, keys: dict[int, TermKey], active_term: int) -> None:
        """Assemble a keyring; ``active_term`` must be one of ``keys``."""
        if active_term not in keys:
            raise ValueError("active term has no key")
        self.root_key = root_key
        self.keys = keys
        self.active_term = active_term

    @staticmethod
    def new(root_key: bytes) -> Keyring:
        """A first keyring: term 1 with a fresh random key."""
        first = TermKey(1, bytearray(secrets.token_bytes(KEY_BYTES)), now_utc())
        return Keyring(bytearray(root_key), {1: first}, 1)

    def active(self) -> TermKey:
        """The key new encryptions use."""
        return self.keys[self.active_term]

    def with_new_term(self) -> Keyring:
        """A copy with a fresh random key installed as term ``active_term + 1``."""
        term = max(self.keys) + 1
        if term > MAX_TERM:
            raise ValueError("keyring term space exhausted")
        keys = {t: TermKey(k.term, bytearray(k.key), k.install_time) for t, k in self.keys.items()}
        keys[term] = TermKey(term, bytearray(secrets.token_bytes(KEY_BYTES)), now_utc())
        return Keyring(bytearray(self.root_key), keys, term)

    def with_root_key(self, root_key: bytes) -> Keyring:
        """A copy whose root key is ``root_key`` (for a root-key rotation)."""
        keys = {t: TermKey(k.term, bytearray(k.key), k.install_time) for t, k in self.keys.items()}
        return Keyring(bytearray(root_key), keys, self.active_term)

    def to_bytes(self) -> bytes:
        """Msgpack serialization (plaintext: only ever stored sealed by the root key)."""
        packed: bytes = msgpack.packb(
            {
                "format": KEYRING_FORMAT,
                "active_term": self.active_term,
                "root_key": bytes(self.root_key),
                "keys": [
                    {"term": k.term, "key": bytes(k.key), "install_time": k.install_time.isoformat()}
                    for k in sorted(self.keys.values(), key=lambda k: k.term)
                ],
            },
            use_bin_type=True,
        )
        return packed

    @staticmethod
    def from_bytes(raw: bytes) -> Keyring:
        """Parse :meth:`to_bytes` output; raises ValueError for anything else."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False, strict_map_key=True)
            if not isinstance(obj, dict) or obj.get("format") != KEYRING_FORMAT:
                raise ValueError("unknown keyring format")
            keys: dict[int, TermKey] = {}
            for item in obj["keys"]:
                term, key = int(item["term"]), item["key"]
                if not isinstance(key, bytes) or len(key) != KEY_BYTES or not 0 < term <= MAX_TERM:
                    raise ValueError("malformed keyring entry")
                when = _dt.datetime.fromisoformat(str(item["install_time"]))
                keys[term] = TermKey(term, bytearray(key), when)
            root = obj["root_key"]
            if not isinstance(root, bytes) or len(root) != KEY_BYTES:
                raise ValueError("malformed keyring root key")
            return Keyring(bytearray(root), keys, int(obj["active_term"]))
        except ValueError:
            raise
        except Exception as e:  # msgpack / KeyError / TypeError: all "not a keyring"
            raise ValueError(f"malformed keyring: {type(e).__name__}") from None

    def zero(self) -> None:
        """Overwrite every key bytearray with zeros (as far as Python allows)."""
        zero_bytes(self.root_key)
        for k in self.keys.values():
            zero_bytes(k.key)


def zero_bytes(buf: bytearray) -> None:
    """Overwrite ``buf`` in place with zero bytes."""
    buf[:] = bytes(len(buf))
