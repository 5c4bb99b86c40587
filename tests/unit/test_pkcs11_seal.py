"""The PKCS#11 seal and the seal manager against a real SoftHSM2 token (no mocks).

Covers: stanza parsing with VAULT_HSM_* overrides, wrap/unwrap through the token, wrong
PIN, missing keys with and without generate_key, HMAC tamper detection, HSM key rotation,
a token pulled out while in use, and — through the seal manager and a real barrier —
recovery keys, auto-unseal, seal wrap (an attacker with the barrier keys but no HSM reads
nothing), key-rotation re-wrap, and seal migration Shamir → PKCS#11 → Shamir.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgpack
import pkcs11
import pytest
from hsm_fixtures import SoftHSM, Token, destroy_key, softhsm, token, token_session  # noqa: F401  (fixtures)

from vaultraft.barrier import KEYRING_PATH, Barrier, BarrierInvalidKey
from vaultraft.config.model import ConfigError, SealConfigBlock
from vaultraft.core.seal_lifecycle import build_seal_manager
from vaultraft.core.seal_manager import (
    HSM_ROOT_KEY_KEY,
    RECOVERY_CONFIG_KEY,
    RECOVERY_KEY_KEY,
    ROOT_KEY_KEY,
    SEAL_WRAP_MAGIC,
    SealManager,
)
from vaultraft.core.views import BarrierView
from vaultraft.logical import InternalError, InvalidRequest, StorageEntry
from vaultraft.seal.base import AsyncSeal, SealDecryptError, SealStanzaError, SealUnavailable
from vaultraft.seal.pkcs11 import MAGIC, Pkcs11Config, Pkcs11Seal
from vaultraft.storage.local import LocalPhysical

SealFactory = Callable[..., Pkcs11Seal]


@pytest.fixture
def seal_factory(token: Token) -> Iterator[SealFactory]:
    """Build Pkcs11Seals on the test's token; every one is closed at teardown (login state
    is per process, so a leftover session would make a later wrong-PIN login succeed)."""
    made: list[Pkcs11Seal] = []

    def make(**overrides: str) -> Pkcs11Seal:
        s = Pkcs11Seal(Pkcs11Config.from_options(token.options(**overrides), {}))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# ---- the stanza -------------------------------------------------------------------------------


def test_stanza_env_overrides_and_validation() -> None:
    base = {"lib": "/x.so", "slot": "0x10", "pin": "file-pin", "key_label": "k", "hmac_key_label": "h"}
    cfg = Pkcs11Config.from_options(base, {"VAULT_HSM_PIN": "env-pin", "VAULT_HSM_KEY_LABEL": "k2",
                                           "VAULT_HSM_GENERATE_KEY": "true", "VAULT_HSM_MECHANISM": "0x1087"})
    assert cfg.pin == "env-pin" and cfg.key_label == "k2" and cfg.generate_key and cfg.slot == 16
    assert "env-pin" not in repr(cfg) and "file-pin" not in repr(cfg)
    only_env = Pkcs11Config.from_options({}, {"VAULT_HSM_LIB": "/l.so", "VAULT_HSM_TOKEN_LABEL": "vr",
                                              "VAULT_HSM_PIN": "p", "VAULT_HSM_KEY_LABEL": "a",
                                              "VAULT_HSM_HMAC_KEY_LABEL": "b"})
    assert only_env.token_label == "vr" and only_env.slot is None
    cases = [
        ({**base, "pin": ""}, "pin is required"),
        ({k: v for k, v in base.items() if k != "slot"}, "one of slot or token_label"),
        ({**base, "mechanism": "0x1085"}, "mechanism '0x1085' is not supported"),
        ({**base, "hmac_mechanism": "12"}, "hmac_mechanism '12' is not supported"),
        ({**base, "key_id": "01"}, "key_id is not supported"),
        ({**base, "generate_key": "maybe"}, "generate_key must be"),
        ({**base, "hmac_key_label": "k"}, "must name different keys"),
    ]
    for opts, msg in cases:
        with pytest.raises(SealStanzaError, match=msg) as e:
            Pkcs11Config.from_options(opts, {})
        assert "file-pin" not in str(e.value)


def test_build_seal_manager_reports_stanza_errors_as_config_errors() -> None:
    phys_barrier = Barrier(None)  # type: ignore[arg-type]  # build does not touch storage
    with pytest.raises(ConfigError, match="pin is required"):
        build_seal_manager(phys_barrier, SealConfigBlock("pkcs11", {"lib": "/x", "slot": "1", "key_label": "a",
                                                                     "hmac_key_label": "b"}), None, env={})
    both = SealConfigBlock("pkcs11", {"lib": "/x", "slot": "1", "pin": "p", "key_label": "a", "hmac_key_label": "b"})
    with pytest.raises(ConfigError, match="between two pkcs11 seals"):
        build_seal_manager(phys_barrier, both, SealConfigBlock("pkcs11", dict(both.options), disabled=True), env={})
    mgr = build_seal_manager(phys_barrier, None, None, env={})
    assert mgr.configured_type == "shamir" and not mgr.recovery_supported
    via_env = build_seal_manager(phys_barrier, None, None, env={"VAULT_SEAL_TYPE": "pkcs11", "VAULT_HSM_LIB": "/x",
                                                                "VAULT_HSM_SLOT": "0", "VAULT_HSM_PIN": "p",
                                                                "VAULT_HSM_KEY_LABEL": "a",
                                                                "VAULT_HSM_HMAC_KEY_LABEL": "b"})
    assert via_env.configured_type == "pkcs11" and via_env.recovery_supported


# ---- the seal against the token ----------------------------------------------------------------


def test_wrap_unwrap_through_the_token(seal_factory: SealFactory) -> None:
    seal = seal_factory()
    seal.setup()
    assert sorted(seal.generated) == ["vault-hmac", "vault-key"]
    secret = secrets.token_bytes(32)
    blob = seal.encrypt(secret, b"core/hsm/root-key")
    assert blob.startswith(MAGIC) and secret not in blob
    again = seal.encrypt(secret, b"core/hsm/root-key")
    assert again != blob  # a random IV per encryption
    got = seal.decrypt(blob, b"core/hsm/root-key")
    assert got.plaintext == secret and not got.stale and got.key_id == "vault-key"
    with pytest.raises(SealDecryptError):  # the AAD (storage path) is bound
        seal.decrypt(blob, b"core/recovery-key")
    seal.health_check()


def test_generated_keys_are_sensitive_and_not_extractable(token: Token, seal_factory: SealFactory) -> None:
    seal_factory().setup()
    with token_session(token) as session:
        for label in ("vault-key", "vault-hmac"):
            key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=label)
            assert key[pkcs11.Attribute.SENSITIVE] is True
            assert key[pkcs11.Attribute.EXTRACTABLE] is False
            assert key[pkcs11.Attribute.TOKEN] is True
            with pytest.raises(pkcs11.AttributeSensitive):
                key[pkcs11.Attribute.VALUE]


def test_wrong_pin_is_fatal_and_says_so(seal_factory: SealFactory) -> None:
    seal = seal_factory(pin="999999")
    with pytest.raises(SealUnavailable) as e:
        seal.setup()
    assert e.value.fatal
    assert "incorrect PIN" in str(e.value) and "999999" not in str(e.value)


def test_missing_key_without_and_with_generate_key(seal_factory: SealFactory) -> None:
    strict = seal_factory(generate_key="false")
    with pytest.raises(SealUnavailable, match='key "vault-key" not found in token') as e:
        strict.setup()
    assert not e.value.fatal  # the key may be created by an operator: retrying makes sense
    creator = seal_factory()
    creator.setup()
    creator.close()
    strict.setup()  # now both keys exist
    assert strict.generated == []
    strict.health_check()


def test_missing_library_and_unknown_token(seal_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SealUnavailable, match="cannot load library") as e:
        seal_factory(lib=str(tmp_path / "nope.so")).setup()
    assert e.value.fatal
    with pytest.raises(SealUnavailable, match='no token "no-such-token"'):
        seal_factory(token_label="no-such-token").setup()


def test_hmac_detects_tampering(seal_factory: SealFactory) -> None:
    seal = seal_factory()
    seal.setup()
    blob = seal.encrypt(b"the root key, 32 bytes long.....", b"aad")
    env = msgpack.unpackb(blob[len(MAGIC):], raw=False)

    def repack(**changes: object) -> bytes:
        packed: bytes = msgpack.packb({**env, **changes}, use_bin_type=True)
        return MAGIC + packed

    flipped = bytes([env["ct"][0] ^ 1]) + env["ct"][1:]
    for bad in (repack(ct=flipped), repack(iv=bytes(12)), repack(mac=bytes(32)), repack(kid=b"other")):
        with pytest.raises(SealDecryptError, match="HMAC verification failed"):
            seal.decrypt(bad, b"aad")
    with pytest.raises(SealDecryptError, match="malformed"):
        seal.decrypt(blob[:-3], b"aad")
    with pytest.raises(SealDecryptError, match="malformed"):
        seal.decrypt(b"not a blob", b"aad")


def test_key_rotation_old_key_still_decrypts(token: Token, seal_factory: SealFactory) -> None:
    old = seal_factory()
    old.setup()
    blob = old.encrypt(b"value", b"aad")
    old.close()
    new = seal_factory(key_label="vault-key-2")
    new.setup()
    assert new.generated == ["vault-key-2"]
    got = new.decrypt(blob, b"aad")
    assert got.plaintext == b"value" and got.stale and got.key_id == "vault-key"
    fresh = new.decrypt(new.encrypt(b"value", b"aad"), b"aad")
    assert not fresh.stale and fresh.key_id == "vault-key-2"
    destroy_key(token, "vault-key")
    new.setup()
    with pytest.raises(SealUnavailable, match='key "vault-key" that protects this stored value is not in'):
        new.decrypt(blob, b"aad")


def test_token_removed_while_running(token: Token, seal_factory: SealFactory, tmp_path: Path) -> None:
    seal = seal_factory()
    seal.setup()
    blob = seal.encrypt(b"v", b"aad")
    token.remove(tmp_path / "parked")
    try:
        with pytest.raises(SealUnavailable, match="not reachable"):
            seal.health_check()
        with pytest.raises(SealUnavailable):
            seal.setup()  # still gone
    finally:
        token.reinsert(tmp_path / "parked")
    seal.setup()  # re-initialises the library and finds the token again
    assert seal.decrypt(blob, b"aad").plaintext == b"v"


# ---- the seal manager with a real barrier -------------------------------------------------------


def _mgr(barrier: Barrier, token: Token | None, *, old: Token | None = None, **overrides: str) -> SealManager:
    def make(t: Token) -> AsyncSeal:
        return AsyncSeal(Pkcs11Seal(Pkcs11Config.from_options(t.options(**overrides), {})))

    return SealManager(barrier, make(token) if token else None, old_seal=make(old) if old else None)


@pytest.fixture
async def phys() -> AsyncIterator[LocalPhysical]:
    p = await LocalPhysical.open("inmem")
    yield p
    await p.close()


async def _init_auto(mgr: SealManager, barrier: Barrier) -> tuple[bytes, list[bytes]]:
    """What core.initialize does with an HSM seal (minus mounts and tokens)."""
    mgr.check_init_params(0, 0, 3, 2)
    await mgr.prepare_init()
    root = os.urandom(32)
    await barrier.initialize(root)
    keys = await mgr.wrap_new_root_key(root, 0, 0, recovery_shares=3, recovery_threshold=2)
    await mgr.store_config(keys.config)
    assert keys.keys == [] and len(keys.recovery_keys) == 3
    return root, keys.recovery_keys


async def _close(*mgrs: SealManager) -> None:
    for m in mgrs:
        await m.shutdown()


async def test_init_recovery_keys_and_auto_unseal(phys: LocalPhysical, token: Token) -> None:
    barrier = Barrier(phys)
    mgr = _mgr(barrier, token)
    with pytest.raises(InvalidRequest, match="parameters secret_shares,secret_threshold not applicable to seal "
                                             "type pkcs11"):
        mgr.check_init_params(5, 3, 0, 0)
    with pytest.raises(InvalidRequest, match="positive number of shares"):
        mgr.check_init_params(0, 0, 0, 0)
    root, recovery = await _init_auto(mgr, barrier)
    status = await mgr.status_fields(sealed=True)
    assert status["type"] == "pkcs11" and status["recovery_seal"] is True and (status["t"], status["n"]) == (2, 3)
    assert status["recovery_seal_type"] == "shamir" and "warnings" not in status
    # the root key is stored only HSM-encrypted; no Shamir record exists
    assert await barrier.raw_get(ROOT_KEY_KEY) is None
    assert (await barrier.raw_get(HSM_ROOT_KEY_KEY) or b"").startswith(MAGIC)
    assert root not in (await barrier.raw_get(HSM_ROOT_KEY_KEY) or b"")
    assert await barrier.raw_get(RECOVERY_CONFIG_KEY) is not None
    # a new process: auto-unseal needs no key at all
    await _close(mgr)
    barrier2 = Barrier(phys)
    mgr2 = _mgr(barrier2, token)
    got = await mgr2.try_auto_unseal()
    assert got == root
    await barrier2.unseal(got)
    # recovery shares: any two verify, a wrong one does not
    await mgr2.verify_recovery_key(_combine(recovery[0], recovery[2]))
    with pytest.raises(InvalidRequest, match="recovery key does not match"):
        await mgr2.verify_recovery_key(os.urandom(32))
    # unseal with recovery shares (Vault allows it with an auto seal): verified, then the HSM opens the root key
    barrier2.seal()
    assert await mgr2.submit_share(recovery[1].hex()) is None
    assert await mgr2.submit_share(recovery[2].hex()) == root
    await _close(mgr2)


def _combine(*shares: bytes) -> bytes:
    from vaultraft.seal.shamir import combine

    return combine(list(shares))


async def test_wrong_pin_keeps_it_sealed_with_a_clear_error(phys: LocalPhysical, token: Token) -> None:
    barrier = Barrier(phys)
    good = _mgr(barrier, token)
    await _init_auto(good, barrier)
    await _close(good)
    bad = _mgr(Barrier(phys), token, pin="0000")
    assert await bad.try_auto_unseal() is None
    assert "incorrect PIN" in bad.last_error
    status = await bad.status_fields(sealed=True)
    assert any("incorrect PIN" in w for w in status["warnings"])
    assert await bad.submit_share((os.urandom(32) + b"\x01").hex()) is None  # no HSM needed yet
    with pytest.raises(InternalError, match="incorrect PIN"):
        await bad.submit_share((os.urandom(32) + b"\x02").hex())
    await _close(bad)


async def test_seal_wrap_defeats_an_attacker_with_the_barrier_keys(phys: LocalPhysical, token: Token,
                                                                  softhsm: SoftHSM) -> None:
    barrier = Barrier(phys)
    mgr = _mgr(barrier, token)
    root, _ = await _init_auto(mgr, barrier)
    await barrier.unseal(root)
    wrapped_view = BarrierView(barrier, "logical/seal-wrapped-mount/", local=False, wrapper=mgr)
    plain_view = BarrierView(barrier, "logical/plain-mount/", local=False)
    secret = b'{"password":"hunter2-seal-wrapped"}'
    await wrapped_view.put(StorageEntry("db", secret))
    await plain_view.put(StorageEntry("db", secret))
    assert (await wrapped_view.get("db")) == StorageEntry("db", secret)
    assert (await wrapped_view.sub("").get("db")) == StorageEntry("db", secret)
    # the keyring itself is seal-wrapped in storage
    assert (await phys.get(KEYRING_PATH) or b"").startswith(SEAL_WRAP_MAGIC)
    # attacker 1: has the root key and the disk, not the HSM -> cannot even open the keyring
    attacker = Barrier(phys)
    with pytest.raises(BarrierInvalidKey):
        await attacker.unseal(root)
    # attacker 2: has the barrier's data keys (a barrier unsealed in memory) but no HSM
    ct_plain = await phys.get("logical/plain-mount/db")
    ct_wrapped = await phys.get("logical/seal-wrapped-mount/db")
    assert ct_plain is not None and ct_wrapped is not None
    assert barrier.decrypt("logical/plain-mount/db", ct_plain) == secret  # barrier keys suffice here...
    inner = barrier.decrypt("logical/seal-wrapped-mount/db", ct_wrapped)
    assert inner.startswith(SEAL_WRAP_MAGIC) and b"hunter2" not in inner  # ...but not here
    other = softhsm.new_token()  # an HSM that is not ours
    thief = _mgr(Barrier(phys), other)
    with pytest.raises(InternalError, match="seal unwrap"):
        await thief.seal_unwrap("logical/seal-wrapped-mount/db", inner)
    await _close(mgr, thief)


async def test_hsm_key_rotation_rewraps_on_next_unseal(phys: LocalPhysical, token: Token) -> None:
    barrier = Barrier(phys)
    mgr = _mgr(barrier, token)
    root, recovery = await _init_auto(mgr, barrier)
    await _close(mgr)
    before = {p: await phys.get(p) for p in (HSM_ROOT_KEY_KEY, RECOVERY_KEY_KEY, KEYRING_PATH)}
    barrier2 = Barrier(phys)
    rotated = _mgr(barrier2, token, key_label="vault-key-2")
    got = await rotated.try_auto_unseal()  # the old key (still in the token) opens it
    assert got == root
    await barrier2.unseal(got)
    await rotated.after_unseal()  # what core does once unsealed: re-wrap under vault-key-2
    for path, old in before.items():
        now = await phys.get(path)
        assert now is not None and now != old
    env = msgpack.unpackb((await phys.get(HSM_ROOT_KEY_KEY) or b"")[len(MAGIC):], raw=False)
    assert env["key"] == "vault-key-2"
    await _close(rotated)
    # afterwards the old key is not needed any more
    destroy_key(token, "vault-key")
    barrier3 = Barrier(phys)
    again = _mgr(barrier3, token, key_label="vault-key-2")
    got3 = await again.try_auto_unseal()
    assert got3 == root
    await barrier3.unseal(got3)
    await again.verify_recovery_key(_combine(recovery[0], recovery[1]))
    await _close(again)


async def test_migration_shamir_to_pkcs11_and_back(phys: LocalPhysical, token: Token) -> None:
    # a Shamir node with 3-of-2 unseal keys
    barrier = Barrier(phys)
    shamir = SealManager(barrier)
    root = os.urandom(32)
    shamir.check_init_params(3, 2, 0, 0)
    with pytest.raises(InvalidRequest, match="parameters recovery_shares not applicable to seal type shamir"):
        shamir.check_init_params(3, 2, 3, 0)
    await barrier.initialize(root)
    init = await shamir.wrap_new_root_key(root, 3, 2)
    await shamir.store_config(init.config)
    unseal_keys = init.keys
    keyring_shamir = await phys.get(KEYRING_PATH)
    assert keyring_shamir is not None and not keyring_shamir.startswith(SEAL_WRAP_MAGIC)

    # restart with seal "pkcs11" enabled: migration pending, auto-unseal refused
    barrier = Barrier(phys)
    to_hsm = _mgr(barrier, token)
    status = await to_hsm.status_fields(sealed=True)
    assert status["migration"] is True and status["type"] == "shamir" and (status["t"], status["n"]) == (2, 3)
    assert await to_hsm.try_auto_unseal() is None
    with pytest.raises(InvalidRequest, match="migrate option not provided and seal migration is pending"):
        await to_hsm.submit_share(unseal_keys[0].hex())
    assert await to_hsm.submit_share(unseal_keys[0].hex(), migrate=True) is None
    got = await to_hsm.submit_share(unseal_keys[1].hex(), migrate=True)
    assert got == root
    await barrier.unseal(got)
    await to_hsm.after_unseal()
    status = await to_hsm.status_fields(sealed=False)
    assert status["migration"] is False and status["type"] == "pkcs11" and (status["t"], status["n"]) == (2, 3)
    assert await phys.get(ROOT_KEY_KEY) is None
    assert (await phys.get(KEYRING_PATH) or b"").startswith(SEAL_WRAP_MAGIC)
    # the old unseal keys are now the recovery keys
    await to_hsm.verify_recovery_key(_combine(unseal_keys[0], unseal_keys[2]))
    await _close(to_hsm)
    barrier = Barrier(phys)
    auto = _mgr(barrier, token)
    assert await auto.try_auto_unseal() == root
    with pytest.raises(InvalidRequest, match="can't perform a seal migration, no migration seal found"):
        await auto.submit_share(unseal_keys[0].hex(), migrate=True)
    await _close(auto)

    # and back: the pkcs11 stanza disabled, no seal enabled
    barrier = Barrier(phys)
    back = _mgr(barrier, None, old=token)
    status = await back.status_fields(sealed=True)
    assert status["migration"] is True and status["type"] == "pkcs11"
    assert await back.submit_share(unseal_keys[2].hex(), migrate=True) is None
    got = await back.submit_share(unseal_keys[1].hex(), migrate=True)
    assert got == root
    await barrier.unseal(got)
    await back.after_unseal()
    assert (await back.status_fields(sealed=False))["type"] == "shamir"
    for path in (HSM_ROOT_KEY_KEY, RECOVERY_KEY_KEY, RECOVERY_CONFIG_KEY):
        assert await phys.get(path) is None
    assert not (await phys.get(KEYRING_PATH) or b"").startswith(SEAL_WRAP_MAGIC)
    await _close(back)
    # a plain Shamir node (no HSM configured at all) unseals with the same keys
    barrier = Barrier(phys)
    plain = SealManager(barrier)
    assert await plain.submit_share(unseal_keys[0].hex()) is None
    got = await plain.submit_share(unseal_keys[1].hex())
    assert got == root
    await barrier.unseal(got)


async def test_hsm_config_without_the_hsm_record_is_a_clear_error(phys: LocalPhysical, token: Token) -> None:
    barrier = Barrier(phys)
    mgr = _mgr(barrier, token)
    await _init_auto(mgr, barrier)
    await _close(mgr)
    # storage sealed by pkcs11, but the configuration no longer mentions it
    shamir = SealManager(Barrier(phys))
    mode = await shamir.mode()
    assert mode.kind == "error" and 'disabled = "true"' in mode.error
    status = await shamir.status_fields(sealed=True)
    assert any("sealed by a pkcs11 seal" in w for w in status["warnings"])
    with pytest.raises(InternalError, match="sealed by a pkcs11 seal"):
        await shamir.submit_share(os.urandom(33).hex())
