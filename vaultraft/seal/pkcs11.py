"""The PKCS#11 (HSM) seal, as Vault's ``seal "pkcs11"``: python-pkcs11 over a vendor library.

An AES-256 key in the token encrypts (CKM_AES_GCM, random 96-bit IV, caller's AAD);
a generic-secret key in the token authenticates the whole stored envelope
(CKM_SHA256_HMAC). Neither key ever leaves the token: both are created (when
``generate_key`` is true) sensitive and non-extractable.

Stored blob: ``MAGIC`` then a msgpack map naming the labels of the keys that made it::

    {"v": 1, "mech", "key", "kid", "hkey", "hmech", "iv", "ct", "mac"}

Because the labels travel with the blob, changing ``key_label`` (or
``hmac_key_label``) to a new key still decrypts everything made by the old key while it
stays in the token; :class:`~vaultraft.seal.base.Unwrapped` reports it ``stale`` so the
caller re-wraps it under the new key (Vault's pkcs11 key rotation).

Every method blocks; run them through :class:`vaultraft.seal.base.AsyncSeal`. One
process-wide lock serialises all calls into the library, because the library is
initialised without locking callbacks.
"""

from __future__ import annotations

import hmac
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgpack

from vaultraft.seal.base import (
    SEAL_TYPE_PKCS11,
    AutoSeal,
    SealDecryptError,
    SealStanzaError,
    SealUnavailable,
    Unwrapped,
)

CKM_AES_GCM = 0x1087
CKM_SHA256_HMAC = 0x0251
MAGIC = b"VRP11\x01"
_VERSION = 1
_IV_BYTES = 12
_TAG_BITS = 128
_HEALTH_VALUE = b"vaultraft seal health check"
_HEALTH_AAD = b"vaultraft/seal-health"

#: VAULT_HSM_* variables; each overrides the stanza key of the same name.
ENV_OVERRIDES: dict[str, str] = {
    "lib": "VAULT_HSM_LIB",
    "slot": "VAULT_HSM_SLOT",
    "token_label": "VAULT_HSM_TOKEN_LABEL",
    "pin": "VAULT_HSM_PIN",
    "key_label": "VAULT_HSM_KEY_LABEL",
    "hmac_key_label": "VAULT_HSM_HMAC_KEY_LABEL",
    "generate_key": "VAULT_HSM_GENERATE_KEY",
    "mechanism": "VAULT_HSM_MECHANISM",
    "hmac_mechanism": "VAULT_HSM_HMAC_MECHANISM",
    "force_rw_session": "VAULT_HSM_FORCE_RW_SESSION",
}
#: Vault options accepted with no effect here (calls are serialised anyway).
_IGNORED = frozenset({"max_parallel"})
_MECHANISMS = {"CKM_AES_GCM": CKM_AES_GCM}
_HMAC_MECHANISMS = {"CKM_SHA256_HMAC": CKM_SHA256_HMAC}
#: Errors meaning the token, session or key handle went away underneath us.
_DEVICE_GONE = frozenset({
    "DeviceRemoved", "DeviceError", "DeviceMemory", "TokenNotPresent", "TokenNotRecognised",
    "SessionHandleInvalid", "SessionClosed", "ObjectHandleInvalid", "KeyHandleInvalid",
    "GeneralError", "FunctionFailed", "UserNotLoggedIn", "SlotIDInvalid",
})

_LIB_LOCK = threading.RLock()


def _parse_bool(name: str, raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "t", "true", "yes", "on"):
        return True
    if v in ("0", "f", "false", "no", "off", ""):
        return False
    raise SealStanzaError(f'seal "pkcs11": {name} must be "true" or "false"')


def _parse_mechanism(name: str, raw: str, known: Mapping[str, int]) -> int:
    v = raw.strip()
    if v.upper() in known:
        return known[v.upper()]
    try:
        num = int(v, 16) if v.lower().startswith("0x") else int(v)
    except ValueError:
        num = -1
    if num not in known.values():
        names = ", ".join(f"0x{m:04x} ({n})" for n, m in known.items())
        raise SealStanzaError(f'seal "pkcs11": {name} {v!r} is not supported (supported: {names})')
    return num


@dataclass(frozen=True)
class Pkcs11Config:
    """A validated ``seal "pkcs11"`` stanza. The PIN is kept out of ``repr``."""

    lib: str
    key_label: str
    hmac_key_label: str
    pin: str = field(repr=False)
    slot: int | None = None
    token_label: str | None = None
    mechanism: int = CKM_AES_GCM
    hmac_mechanism: int = CKM_SHA256_HMAC
    generate_key: bool = False
    force_rw_session: bool = False

    @property
    def token_desc(self) -> str:
        """How the token is named in messages: its label, else its slot."""
        return f'token "{self.token_label}"' if self.token_label else f"slot {self.slot}"

    @staticmethod
    def from_options(options: Mapping[str, str], env: Mapping[str, str]) -> "Pkcs11Config":
        """Merge the stanza with VAULT_HSM_* overrides and validate (SealStanzaError).

        Messages name the key at fault, never a value that may be a PIN.
        """
        merged: dict[str, str] = {}
        for key, value in options.items():
            if key in _IGNORED:
                continue
            if key not in ENV_OVERRIDES:
                raise SealStanzaError(f'seal "pkcs11": {key} is not supported')
            merged[key] = str(value)
        for key, var in ENV_OVERRIDES.items():
            if env.get(var):
                merged[key] = env[var]
        for required in ("lib", "pin", "key_label", "hmac_key_label"):
            if not merged.get(required, "").strip():
                raise SealStanzaError(f'seal "pkcs11": {required} is required (or set {ENV_OVERRIDES[required]})')
        slot: int | None = None
        if merged.get("slot", "").strip():
            raw = merged["slot"].strip()
            try:
                slot = int(raw, 16) if raw.lower().startswith("0x") else int(raw)
            except ValueError:
                raise SealStanzaError('seal "pkcs11": slot must be a number') from None
        token_label = merged.get("token_label", "").strip() or None
        if slot is None and token_label is None:
            raise SealStanzaError('seal "pkcs11": one of slot or token_label is required '
                                  "(or set VAULT_HSM_SLOT / VAULT_HSM_TOKEN_LABEL)")
        if merged["key_label"] == merged["hmac_key_label"]:
            raise SealStanzaError('seal "pkcs11": key_label and hmac_key_label must name different keys')
        return Pkcs11Config(
            lib=merged["lib"].strip(),
            key_label=merged["key_label"],
            hmac_key_label=merged["hmac_key_label"],
            pin=merged["pin"],
            slot=slot,
            token_label=token_label,
            mechanism=_parse_mechanism("mechanism", merged.get("mechanism", "0x1087"), _MECHANISMS),
            hmac_mechanism=_parse_mechanism("hmac_mechanism", merged.get("hmac_mechanism", "0x0251"), _HMAC_MECHANISMS),
            generate_key=_parse_bool("generate_key", merged.get("generate_key", "false")),
            force_rw_session=_parse_bool("force_rw_session", merged.get("force_rw_session", "false")),
        )


def _mac_input(env: Mapping[str, Any], aad: bytes) -> bytes:
    """The bytes the HMAC covers: every envelope field plus the caller's AAD."""
    packed: bytes = msgpack.packb(
        [MAGIC, env["v"], env["mech"], env["key"], env["kid"], env["hkey"], env["hmech"], env["iv"], env["ct"], aad],
        use_bin_type=True,
    )
    return packed


def _parse_blob(blob: bytes) -> dict[str, Any]:
    bad = SealDecryptError("pkcs11 seal: the stored value is malformed (not made by a pkcs11 seal)")
    if not blob.startswith(MAGIC):
        raise bad
    try:
        env: Any = msgpack.unpackb(blob[len(MAGIC):], raw=False, strict_map_key=True)
    except Exception:  # msgpack raises several unrelated types
        raise bad from None
    kinds = {"v": int, "mech": int, "key": str, "kid": bytes, "hkey": str, "hmech": int,
             "iv": bytes, "ct": bytes, "mac": bytes}
    if not isinstance(env, dict) or any(not isinstance(env.get(k), t) for k, t in kinds.items()):
        raise bad
    if env["v"] != _VERSION:
        raise SealDecryptError(f"pkcs11 seal: unknown stored value version {env['v']}")
    return env


class Pkcs11Seal(AutoSeal):
    """One connection to one token: a logged-in session and the keys found in it."""

    seal_type = SEAL_TYPE_PKCS11

    def __init__(self, config: Pkcs11Config) -> None:
        """A seal for ``config``; nothing is loaded until :meth:`setup`."""
        self.config = config
        self.generated: list[str] = []  # labels of keys this seal created (for the caller's log)
        self._lib: Any = None
        self._session: Any = None
        self._token_label = ""
        self._keys: dict[str, Any] = {}
        self._hmac_keys: dict[str, Any] = {}
        self._needs_reinit = False

    def key_id(self) -> str:
        """The configured encryption key label."""
        return self.config.key_label

    # ---- connection ------------------------------------------------------------------------

    def setup(self) -> None:
        """Load the library, find the token, log in, find or generate both keys."""
        with _LIB_LOCK:
            self.close()
            self.generated = []
            try:
                self._connect()
            except SealUnavailable:
                self._needs_reinit = True
                self.close()
                raise
            self._needs_reinit = False

    def _connect(self) -> None:
        import pkcs11
        from pkcs11 import Mechanism

        cfg = self.config
        if not os.path.exists(cfg.lib):
            raise SealUnavailable(f"pkcs11 seal: cannot load library {cfg.lib}: no such file", fatal=True)
        try:
            lib = pkcs11.lib(cfg.lib)
            if self._needs_reinit:
                lib.reinitialize()  # see tokens inserted (or re-inserted) since the last attempt
        except (pkcs11.PKCS11Error, OSError) as e:
            raise SealUnavailable(f"pkcs11 seal: cannot load library {cfg.lib}: {_why(e)}", fatal=True) from None
        self._lib = lib
        token = self._find_token(lib)
        self._token_label = str(token.label).strip()
        self._session = self._login(token)
        try:
            mechs = set(token.slot.get_mechanisms())
        except pkcs11.PKCS11Error as e:
            raise SealUnavailable(f"pkcs11 seal: cannot list the mechanisms of {cfg.token_desc}: {_why(e)}") from None
        for mech, name in ((cfg.mechanism, "CKM_AES_GCM"), (cfg.hmac_mechanism, "CKM_SHA256_HMAC")):
            if Mechanism(mech) not in mechs:
                raise SealUnavailable(f"pkcs11 seal: {cfg.token_desc} does not support {name}", fatal=True)
        self._keys = {cfg.key_label: self._find_key(cfg.key_label, hmac_key=False, generate=cfg.generate_key)}
        hmac_key = self._find_key(cfg.hmac_key_label, hmac_key=True, generate=cfg.generate_key)
        self._hmac_keys = {cfg.hmac_key_label: hmac_key}

    def _find_token(self, lib: Any) -> Any:
        import pkcs11

        cfg = self.config
        try:
            if cfg.slot is not None:
                slots = [s for s in lib.get_slots() if s.slot_id == cfg.slot]
                if not slots:
                    raise SealUnavailable(f"pkcs11 seal: no slot {cfg.slot} in {cfg.lib}")
                token = slots[0].get_token()
                if cfg.token_label and str(token.label).strip() != cfg.token_label:
                    raise SealUnavailable(f"pkcs11 seal: the token in slot {cfg.slot} is not labelled "
                                          f'"{cfg.token_label}"')
                return token
            return lib.get_token(token_label=cfg.token_label)
        except pkcs11.NoSuchToken:
            raise SealUnavailable(f"pkcs11 seal: no {cfg.token_desc} found in {cfg.lib}") from None
        except pkcs11.MultipleTokensReturned:
            raise SealUnavailable(f"pkcs11 seal: more than one {cfg.token_desc}; use slot to choose",
                                  fatal=True) from None
        except pkcs11.PKCS11Error as e:
            raise SealUnavailable(f"pkcs11 seal: cannot open {cfg.token_desc}: {_why(e)}") from None

    def _login(self, token: Any) -> Any:
        import pkcs11

        cfg = self.config
        rw = cfg.generate_key or cfg.force_rw_session
        where = f'token "{self._token_label}"'
        try:
            return token.open(rw=rw, user_pin=cfg.pin)
        except pkcs11.UserAlreadyLoggedIn:
            # Login state is per process: another session of ours is already logged in.
            return token.open(rw=rw)
        except pkcs11.PinIncorrect:
            raise SealUnavailable(f"pkcs11 seal: login to {where} failed: incorrect PIN (CKR_PIN_INCORRECT)",
                                  fatal=True) from None
        except pkcs11.PinLocked:
            raise SealUnavailable(f"pkcs11 seal: login to {where} failed: the user PIN is locked (CKR_PIN_LOCKED)",
                                  fatal=True) from None
        except (pkcs11.PinInvalid, pkcs11.PinLenRange, pkcs11.PinExpired) as e:
            raise SealUnavailable(f"pkcs11 seal: login to {where} failed: {_why(e)}", fatal=True) from None
        except pkcs11.PKCS11Error as e:
            raise SealUnavailable(f"pkcs11 seal: cannot open a session on {where}: {_why(e)}") from None

    def _lookup(self, label: str, *, hmac_key: bool) -> Any:
        """The secret key labelled ``label`` (type-checked), or None when there is none."""
        import pkcs11
        from pkcs11 import KeyType, ObjectClass

        what = "HMAC key" if hmac_key else "key"
        try:
            key = self._session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        except pkcs11.NoSuchKey:
            return None
        except pkcs11.MultipleObjectsReturned:
            raise SealUnavailable(f'pkcs11 seal: more than one key labelled "{label}" in token "{self._token_label}"',
                                  fatal=True) from None
        except pkcs11.PKCS11Error as e:
            raise self._device_error(f'looking up {what} "{label}"', e) from None
        ktype = key.key_type
        ok = ktype in (KeyType.GENERIC_SECRET, KeyType.SHA256_HMAC) if hmac_key else ktype == KeyType.AES
        if not ok:
            raise SealUnavailable(f'pkcs11 seal: key "{label}" has type {ktype.name}, '
                                  f'expected {"GENERIC_SECRET" if hmac_key else "AES"}', fatal=True)
        return key

    def _find_key(self, label: str, *, hmac_key: bool, generate: bool) -> Any:
        """The configured key, generated (sensitive, non-extractable) when missing and allowed."""
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism

        what = "HMAC key" if hmac_key else "key"
        key = self._lookup(label, hmac_key=hmac_key)
        if key is not None:
            return key
        if not generate:
            raise SealUnavailable(f'pkcs11 seal: {what} "{label}" not found in token "{self._token_label}" '
                                  '(create it, or set generate_key = "true")')
        template = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False}
        try:
            if hmac_key:
                template.update({Attribute.SIGN: True, Attribute.VERIFY: True})
                key = self._session.generate_key(KeyType.GENERIC_SECRET, 256, label=label, id=os.urandom(8),
                                                 store=True, mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                                                 template=template)
            else:
                template.update({Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                                 Attribute.WRAP: True, Attribute.UNWRAP: True})
                key = self._session.generate_key(KeyType.AES, 256, label=label, id=os.urandom(8),
                                                 store=True, template=template)
        except pkcs11.PKCS11Error as e:
            raise SealUnavailable(f'pkcs11 seal: cannot generate {what} "{label}": {_why(e)}') from None
        self.generated.append(label)
        return key

    def close(self) -> None:
        """Close the session (logging out when it is the process's last one)."""
        with _LIB_LOCK:
            session, self._session = self._session, None
            self._keys, self._hmac_keys = {}, {}
            if session is not None:
                try:
                    session.close()
                except Exception:  # the device may already be gone
                    pass

    # ---- crypto --------------------------------------------------------------------------------

    def _require(self) -> None:
        if self._session is None:
            raise SealUnavailable("pkcs11 seal: not connected to the HSM")

    def _device_error(self, doing: str, e: Exception) -> SealUnavailable:
        name = type(e).__name__
        self._needs_reinit = True
        if name in _DEVICE_GONE:
            return SealUnavailable(f'pkcs11 seal: the HSM token "{self._token_label}" is not reachable '
                                   f"({doing} failed: {name})")
        return SealUnavailable(f"pkcs11 seal: {doing} failed: {name}")

    def _key(self, label: str, *, hmac_key: bool) -> Any:
        cache = self._hmac_keys if hmac_key else self._keys
        key = cache.get(label)
        if key is None:
            key = self._lookup(label, hmac_key=hmac_key)
            if key is None:
                what = "HMAC key" if hmac_key else "key"
                raise SealUnavailable(f'pkcs11 seal: {what} "{label}" that protects this stored value is not in '
                                      f'token "{self._token_label}" (was it deleted after a key rotation?)')
            cache[label] = key
        return key

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM inside the token under ``key_label``, HMAC'd by ``hmac_key_label``."""
        import pkcs11
        from pkcs11 import Attribute, Mechanism
        from pkcs11.mechanisms import GCMParams

        cfg = self.config
        with _LIB_LOCK:
            self._require()
            key = self._keys[cfg.key_label]
            hkey = self._hmac_keys[cfg.hmac_key_label]
            iv = os.urandom(_IV_BYTES)
            try:
                kid = bytes(key[Attribute.ID] or b"")
                ct = key.encrypt(bytes(plaintext), mechanism=Mechanism(cfg.mechanism),
                                 mechanism_param=GCMParams(iv, bytes(aad), _TAG_BITS))
                env: dict[str, Any] = {"v": _VERSION, "mech": cfg.mechanism, "key": cfg.key_label, "kid": kid,
                                       "hkey": cfg.hmac_key_label, "hmech": cfg.hmac_mechanism, "iv": iv,
                                       "ct": bytes(ct)}
                env["mac"] = bytes(hkey.sign(_mac_input(env, aad), mechanism=Mechanism(cfg.hmac_mechanism)))
            except pkcs11.PKCS11Error as e:
                raise self._device_error("encrypt", e) from None
        packed: bytes = msgpack.packb(env, use_bin_type=True)
        return MAGIC + packed

    def decrypt(self, blob: bytes, aad: bytes) -> Unwrapped:
        """Verify the HMAC, then decrypt with the key named in the blob (old keys too)."""
        import pkcs11
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        env = _parse_blob(blob)
        if env["mech"] != CKM_AES_GCM or env["hmech"] != CKM_SHA256_HMAC:
            raise SealDecryptError("pkcs11 seal: the stored value uses an unsupported mechanism")
        cfg = self.config
        with _LIB_LOCK:
            self._require()
            hkey = self._key(env["hkey"], hmac_key=True)
            try:
                ok = hkey.verify(_mac_input(env, aad), env["mac"], mechanism=Mechanism(env["hmech"]))
            except pkcs11.SignatureLenRange:
                ok = False
            except pkcs11.PKCS11Error as e:
                raise self._device_error("HMAC verify", e) from None
            if not ok:
                raise SealDecryptError("pkcs11 seal: HMAC verification failed: the stored value was altered "
                                       "or made by another key")
            key = self._key(env["key"], hmac_key=False)
            try:
                plain = key.decrypt(env["ct"], mechanism=Mechanism(env["mech"]),
                                    mechanism_param=GCMParams(env["iv"], bytes(aad), _TAG_BITS))
            except (pkcs11.EncryptedDataInvalid, pkcs11.EncryptedDataLenRange):
                raise SealDecryptError("pkcs11 seal: decryption failed: "
                                       "the stored value does not match its key") from None
            except pkcs11.PKCS11Error as e:
                raise self._device_error("decrypt", e) from None
        stale = env["key"] != cfg.key_label or env["hkey"] != cfg.hmac_key_label
        return Unwrapped(bytes(plain), stale=stale, key_id=env["key"])

    def health_check(self) -> None:
        """Encrypt and decrypt a fixed value through the token."""
        got = self.decrypt(self.encrypt(_HEALTH_VALUE, _HEALTH_AAD), _HEALTH_AAD)
        if not hmac.compare_digest(got.plaintext, _HEALTH_VALUE):
            raise SealUnavailable("pkcs11 seal: health check round trip returned a different value")


def _why(e: BaseException) -> str:
    """A short reason: python-pkcs11's message if it has one, else the CKR class name."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
