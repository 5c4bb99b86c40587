"""Secondary activation: the activation token and the sealed key bundle.

The primary mints an :class:`ActivationToken` for one secondary id and mode; the operator
carries it to the secondary, which learns from it where the primary is, which CA signs the
primary's replication certificates, and a one-time secret that proves the token when the
secondary asks the primary (over the API) for its client certificate and the key bundle.

The key bundle (the root key the secondary needs to read what it replicates) travels sealed
to a one-time X25519 key the secondary generated: ephemeral X25519 → HKDF-SHA256 →
AES-256-GCM, with the caller's ``context`` (e.g. secondary id and token digest) bound as
associated data, so a bundle cannot be replayed to another secondary or activation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultraft.replication.interfaces import Mode
from vaultraft.replication.wire import MODES, parse_addr

__all__ = ["ActivationToken", "BundleError", "TokenError", "generate_bundle_keypair", "open_bundle",
           "seal_bundle", "verify_secret"]

TOKEN_VERSION: Final = 1
SECRET_BYTES: Final = 32
_MAX_TOKEN_CHARS: Final = 64 << 10
_MAX_BUNDLE_BYTES: Final = 32 << 10
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")

BUNDLE_VERSION: Final = 1
_BUNDLE_INFO: Final = b"vaultraft replication key bundle v1"
_X25519_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_BUNDLE_HEADER: Final = 1 + _X25519_BYTES + _NONCE_BYTES


class TokenError(ValueError):
    """An activation token that is garbage, of an unknown version, malformed or expired."""


class BundleError(ValueError):
    """A key bundle that cannot be opened (wrong key, wrong context, tampered, unknown version)."""


@dataclass(frozen=True)
class ActivationToken:
    """What a secondary needs to join a primary; the secret is one-time and never logged."""

    secondary_id: str
    mode: Mode
    secret: bytes = field(repr=False)
    primary_api_addr: str
    primary_cluster_addrs: tuple[str, ...]
    ca_pem: bytes = field(repr=False)
    expires_at: int
    #: Optional sealed key bundle (``seal_bundle`` output) for a secondary that sent its
    #: public key in advance; b"" when the secondary fetches the bundle itself.
    bundle: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.expires_at, float):  # tolerate time.time() + ttl: whole seconds on the wire
            object.__setattr__(self, "expires_at", int(self.expires_at))

    @classmethod
    def create(cls, *, secondary_id: str, mode: Mode, primary_api_addr: str,
               primary_cluster_addrs: Sequence[str], ca_pem: bytes, ttl: float,
               now: float | None = None, bundle: bytes = b"") -> ActivationToken:
        """A token with a fresh random 32-byte secret, expiring ``ttl`` seconds from ``now``."""
        token = cls(secondary_id=secondary_id, mode=mode, secret=secrets.token_bytes(SECRET_BYTES),
                    primary_api_addr=primary_api_addr, primary_cluster_addrs=tuple(primary_cluster_addrs),
                    ca_pem=ca_pem, expires_at=int((time.time() if now is None else now) + ttl), bundle=bundle)
        _validate(token)
        return token

    def encode(self) -> str:
        """URL-safe base64 (no padding) of versioned msgpack; TokenError if a field is invalid
        (so a token that could never be decoded is not handed out)."""
        _validate(self)
        body: dict[str, Any] = {
            "secondary_id": self.secondary_id, "mode": self.mode, "secret": self.secret,
            "primary_api_addr": self.primary_api_addr, "primary_cluster_addrs": list(self.primary_cluster_addrs),
            "ca_pem": self.ca_pem, "expires_at": self.expires_at}
        if self.bundle:
            body["bundle"] = self.bundle
        packed: bytes = msgpack.packb([TOKEN_VERSION, body], use_bin_type=True)
        return _b64encode(packed)

    @classmethod
    def decode(cls, token: str, *, now: float | None = None) -> ActivationToken:
        """Parse :meth:`encode` output; TokenError if garbage, unknown version, malformed or
        expired at ``now`` (default: the current time)."""
        if not isinstance(token, str):
            raise TokenError("activation token must be a string")
        raw = _b64decode(token.strip(), TokenError, "activation token")
        try:
            obj: Any = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_no_ext)
        except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
            raise TokenError("activation token is not decodable") from None
        if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], dict)):
            raise TokenError("activation token is malformed")
        if obj[0] != TOKEN_VERSION or type(obj[0]) is not int:
            raise TokenError("activation token has an unsupported version")
        body: dict[str, Any] = obj[1]
        expected = {"secondary_id", "mode", "secret", "primary_api_addr", "primary_cluster_addrs", "ca_pem",
                    "expires_at"}
        if body.keys() != expected and body.keys() != expected | {"bundle"}:
            raise TokenError("activation token is malformed")
        addrs = body["primary_cluster_addrs"]
        if not isinstance(addrs, list):
            raise TokenError("activation token is malformed")
        tok = cls(secondary_id=body["secondary_id"], mode=cast(Mode, body["mode"]), secret=body["secret"],
                  primary_api_addr=body["primary_api_addr"], primary_cluster_addrs=tuple(addrs),
                  ca_pem=body["ca_pem"], expires_at=body["expires_at"], bundle=body.get("bundle", b""))
        _validate(tok)
        if tok.expired(now):
            raise TokenError("activation token has expired")
        return tok

    def expired(self, now: float | None = None) -> bool:
        """Whether the token is past ``expires_at`` at ``now`` (default: the current time)."""
        return (time.time() if now is None else now) >= self.expires_at

    def secret_digest(self) -> str:
        """Hex SHA-256 of the secret: what the primary stores to check the token later."""
        return hashlib.sha256(self.secret).hexdigest()


def verify_secret(stored_digest: str, presented_secret: bytes) -> bool:
    """Constant-time check of a presented secret against :meth:`ActivationToken.secret_digest`."""
    return hmac.compare_digest(stored_digest.encode(), hashlib.sha256(presented_secret).hexdigest().encode())


def _validate(tok: ActivationToken) -> None:
    if not isinstance(tok.secondary_id, str) or not 0 < len(tok.secondary_id) <= 64:
        raise TokenError("activation token: secondary id must be 1 to 64 characters")
    if tok.mode not in MODES:
        raise TokenError("activation token: unknown mode")
    if not isinstance(tok.secret, bytes) or len(tok.secret) != SECRET_BYTES:
        raise TokenError("activation token: malformed secret")
    if not isinstance(tok.primary_api_addr, str) or len(tok.primary_api_addr) > 1024:
        raise TokenError("activation token: malformed primary API address")
    if not tok.primary_cluster_addrs or len(tok.primary_cluster_addrs) > 64:
        raise TokenError("activation token: 1 to 64 primary cluster addresses required")
    for addr in tok.primary_cluster_addrs:
        try:
            parse_addr(addr)
        except (ValueError, AttributeError, TypeError):
            raise TokenError("activation token: malformed primary cluster address") from None
    if not isinstance(tok.ca_pem, bytes):
        raise TokenError("activation token: malformed CA certificate")
    try:
        x509.load_pem_x509_certificate(tok.ca_pem)
    except ValueError:
        raise TokenError("activation token: malformed CA certificate") from None
    if type(tok.expires_at) is not int or tok.expires_at <= 0:
        raise TokenError("activation token: malformed expiry")
    if not isinstance(tok.bundle, bytes) or len(tok.bundle) > _MAX_BUNDLE_BYTES:
        raise TokenError("activation token: malformed key bundle")


# -- key bundle --------------------------------------------------------------------------------

def generate_bundle_keypair() -> tuple[bytes, str]:
    """A one-time X25519 key pair: (raw 32-byte private key, URL-safe base64 public key).
    The private key stays on the secondary; only the public key is sent to the primary."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private, _b64encode(public)


def seal_bundle(public_b64: str, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt ``plaintext`` to the holder of ``public_b64``'s private key, bound to
    ``context``. BundleError if the public key is malformed."""
    recipient_raw = _b64decode(public_b64, BundleError, "bundle public key")
    try:
        recipient = X25519PublicKey.from_public_bytes(recipient_raw)
    except ValueError:
        raise BundleError("bundle public key is malformed") from None
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:  # a low-order point: no shared secret
        raise BundleError("bundle public key is unusable") from None
    header = bytes([BUNDLE_VERSION]) + eph_raw + os.urandom(_NONCE_BYTES)
    key = _bundle_key(shared, eph_raw, recipient_raw)
    return header + AESGCM(key).encrypt(header[1 + _X25519_BYTES:], plaintext, header + context)


def open_bundle(private_bytes: bytes, blob: bytes, context: bytes) -> bytes:
    """Decrypt a :func:`seal_bundle` blob with the raw private key; BundleError if the
    version is unknown, the key or context is wrong, or any byte was changed."""
    if len(blob) < _BUNDLE_HEADER + 16:
        raise BundleError("key bundle is truncated")
    if blob[0] != BUNDLE_VERSION:
        raise BundleError("key bundle has an unsupported version")
    try:
        private = X25519PrivateKey.from_private_bytes(private_bytes)
        eph_raw = blob[1:1 + _X25519_BYTES]
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_raw))
    except ValueError:
        raise BundleError("key bundle cannot be opened") from None
    recipient_raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = blob[:_BUNDLE_HEADER]
    key = _bundle_key(shared, eph_raw, recipient_raw)
    try:
        return AESGCM(key).decrypt(header[1 + _X25519_BYTES:], blob[_BUNDLE_HEADER:], header + context)
    except InvalidTag:
        raise BundleError("key bundle cannot be opened (wrong key or context, or tampered)") from None


def _bundle_key(shared: bytes, eph_raw: bytes, recipient_raw: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_raw + recipient_raw,
                info=_BUNDLE_INFO).derive(shared)


# -- helpers -----------------------------------------------------------------------------------

def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str, error: type[ValueError], what: str) -> bytes:
    if not isinstance(text, str) or not text or len(text) > _MAX_TOKEN_CHARS or not _B64URL.match(text):
        raise error(f"{what} is not URL-safe base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise error(f"{what} is not URL-safe base64") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not accepted")
