"""Encrypt key shares to OpenPGP public keys, as Vault's ``pgp_keys`` do.

Vault takes each public key as base64 of its *binary* (non-armored) form, encrypts one
share to each key, and returns the binary OpenPGP message (callers base64 it); a holder
runs ``echo <b64> | base64 -d | gpg --decrypt`` to see the share. Unseal and recovery
shares are encrypted as their hex text (what ``gpg --decrypt`` prints is the key to type
into ``operator unseal``); a root token is encrypted as itself.

Built on the ``gpg`` binary (GnuPG, Debian's ``gnupg``) in a private, throw-away
``GNUPGHOME``: the operator's own keyrings, agent and configuration are never touched,
no keyserver is asked, and nothing survives the call. GnuPG is the implementation the
share holders themselves decrypt with, it is maintained with the distribution's
security updates, and it needs no extra Python dependency. Every call blocks on a
subprocess; async callers run it in a thread.

Nothing here logs or returns plaintext; errors name the key by position and fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Sequence

GPG_TIMEOUT = 30.0
_ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_PROBE = b"vaultraft pgp key check"


class PGPError(ValueError):
    """A key that cannot be used, or gpg failed; the message is safe to show a client."""


@dataclass(frozen=True)
class PublicKey:
    """One parsed public key: its primary fingerprint (lower-case hex) and its bytes."""

    fingerprint: str
    data: bytes


def gpg_binary() -> str:
    """Path of the ``gpg`` executable; PGPError when GnuPG is not installed."""
    path = shutil.which("gpg") or shutil.which("gpg2")
    if path is None:
        raise PGPError("PGP-encrypted shares need GnuPG: install the gnupg package (apt-get install gnupg)")
    return path


def decode_key(key: str) -> bytes:
    """The binary key inside a ``pgp_keys`` entry: base64 of the binary key (Vault's
    format) or an ASCII-armored block. PGPError (Vault's wording) otherwise."""
    text = key.strip()
    if text.startswith("keybase:"):
        raise PGPError("keybase:<user> keys are not supported: give the base64 of the binary public key")
    if text.startswith(_ARMOR_HEADER):
        return text.encode()
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PGPError(f"error decoding given PGP key: {e}") from None
    if not data:
        raise PGPError("error decoding given PGP key: empty key")
    return data


class _Home:
    """A private GNUPGHOME removed on exit."""

    def __enter__(self) -> "_Home":
        self.gpg = gpg_binary()
        self.path = tempfile.mkdtemp(prefix="vaultraft-gpg-")
        os.chmod(self.path, 0o700)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def run(self, args: Sequence[str], stdin: bytes) -> bytes:
        cmd = [self.gpg, "--homedir", self.path, "--batch", "--no-tty", "--quiet", "--no-options",
               "--no-auto-key-locate", "--no-auto-key-retrieve", "--no-autostart", *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": self.path, "LC_ALL": "C"}
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=GPG_TIMEOUT, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise PGPError(f"gpg did not finish within {GPG_TIMEOUT:g}s") from None
        if done.returncode != 0:
            raise PGPError(_last_line(done.stderr) or f"gpg exited with status {done.returncode}")
        return done.stdout


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    lines = [ln[5:] if ln.startswith("gpg: ") else ln for ln in lines]
    return lines[-1] if lines else ""


def _fingerprint(home: _Home, data: bytes) -> str:
    out = home.run(["--with-colons", "--import-options", "show-only", "--import"], data).decode("utf-8", "replace")
    seen_pub = False
    for line in out.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            seen_pub = True
        elif fields[0] == "fpr" and seen_pub and len(fields) > 9 and fields[9]:
            return fields[9].lower()
    raise PGPError("could not acquire PGP key entity")


def _load(home: _Home, keys: Sequence[str]) -> list[PublicKey]:
    parsed: list[PublicKey] = []
    for i, key in enumerate(keys):
        data = decode_key(key)
        try:
            fpr = _fingerprint(home, data)
        except PGPError as e:
            raise PGPError(f"error parsing given PGP key {i + 1}: {e}") from None
        try:
            home.run(["--import"], data)
        except PGPError as e:
            raise PGPError(f"error importing PGP key {i + 1} ({fpr}): {e}") from None
        parsed.append(PublicKey(fpr, data))
    return parsed


def _encrypt_one(home: _Home, key: PublicKey, plaintext: bytes, position: int) -> bytes:
    try:
        return home.run(["--trust-model", "always", "--encrypt", "--recipient", key.fingerprint,
                         "--compress-algo", "none", "--output", "-"], plaintext)
    except PGPError as e:
        raise PGPError(f"error encrypting to PGP key {position} ({key.fingerprint}): {e}") from None


def fingerprints(keys: Sequence[str]) -> list[str]:
    """The primary-key fingerprint of each key (lower-case hex), in order. PGPError for
    a key that does not decode or parse."""
    with _Home() as home:
        return [_fingerprint(home, decode_key(k)) for k in keys]


def check_keys(keys: Sequence[str]) -> list[str]:
    """Prove every key can be encrypted to (a probe message each) before anything
    irreversible happens; returns their fingerprints. PGPError names the bad key."""
    with _Home() as home:
        parsed = _load(home, keys)
        for i, key in enumerate(parsed):
            _encrypt_one(home, key, _PROBE, i + 1)
        return [k.fingerprint for k in parsed]


def encrypt_shares(plaintexts: Sequence[bytes], keys: Sequence[str]) -> tuple[list[str], list[bytes]]:
    """Encrypt ``plaintexts[i]`` to ``keys[i]``; returns (fingerprints, binary messages).

    Vault's ``pgpkeys.EncryptShares``: the counts must match. PGPError otherwise or when a
    key cannot be used.
    """
    if len(plaintexts) != len(keys):
        raise PGPError("mismatch between number items to encrypt and number of PGP keys")
    with _Home() as home:
        parsed = _load(home, keys)
        out = [_encrypt_one(home, key, pt, i + 1) for i, (key, pt) in enumerate(zip(parsed, plaintexts))]
        return [k.fingerprint for k in parsed], out
