"""The seal side of replication, with real barriers, real SoftHSM2 tokens and no mocks.

A "primary" and a "secondary" are two stores with their own barrier and seal manager; what
the stream would carry (the keyring as shipped, the key holders record) is copied between
them. Covers the key holders record, Vault's four seal combinations (HSM → HSM, HSM →
Shamir, Shamir → HSM, Shamir → Shamir), shipping without the primary's HSM layer, and the
digest normalization.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator

import msgpack
import pytest
from hsm_fixtures import SoftHSM, Token, softhsm  # noqa: F401  (fixtures)

from vaultraft.barrier import KEYRING_PATH, Barrier, BarrierInvalidKey
from vaultraft.core.replication.seal_stream import ShippingTransform, _Normalizer, digest_items, wrapped_prefixes_of
from vaultraft.core.seal_manager import HSM_ROOT_KEY_KEY, RECOVERY_KEY_KEY, ROOT_KEY_KEY, SEAL_WRAP_MAGIC, SealManager
from vaultraft.core.seal_replica import (
    KEY_HOLDERS_PATH,
    KeyHolders,
    adopt,
    check_secondary_seal,
    describe_local,
    publish,
    read_published,
    reclaim_keyring,
    stage_root,
)
from vaultraft.core.seal_state import HSM_ROOT_KEY_NEXT_KEY, WRAPPED_ROOT_MARKER, wrapped_root_of
from vaultraft.core.views import BarrierView
from vaultraft.logical import InvalidRequest, StorageEntry
from vaultraft.seal.base import AsyncSeal
from vaultraft.seal.pkcs11 import Pkcs11Config, Pkcs11Seal
from vaultraft.seal.shamir import combine
from vaultraft.seal.shamir_seal import wrap_root_key
from vaultraft.storage import Batch, Op
from vaultraft.storage.local import LocalPhysical

# ---- pure pieces ------------------------------------------------------------------------------


def test_key_holders_record_round_trips_and_rejects_garbage() -> None:
    kh = KeyHolders("recovery", 5, 3, b"\x01" * 61, "abc")
    assert KeyHolders.decode(kh.encode()) == kh
    assert b"\x01" * 61 not in kh.encode()  # base64 in JSON
    assert "wrapped_root" not in repr(kh)
    assert (kh.config().secret_shares, kh.config().secret_threshold, kh.config().type) == (5, 3, "shamir")
    for bad in (b"", b"[]", b'{"v": 2}', json.dumps({"v": 1, "kind": "unseal"}).encode(),
                json.dumps({"v": 1, "kind": "other", "secret_shares": 1, "secret_threshold": 1,
                            "wrapped_root": ""}).encode(),
                json.dumps({"v": 1, "kind": "unseal", "secret_shares": 2, "secret_threshold": 3,
                            "wrapped_root": ""}).encode()):
        with pytest.raises(ValueError):
            KeyHolders.decode(bad)


def test_marked_recovery_record_is_told_apart_from_a_recovery_key() -> None:
    wrapped = wrap_root_key(os.urandom(32), os.urandom(32))
    assert wrapped_root_of(WRAPPED_ROOT_MARKER + wrapped) == wrapped
    assert wrapped_root_of(os.urandom(32)) is None
    assert wrapped_root_of(WRAPPED_ROOT_MARKER + os.urandom(26)) is None  # 32 bytes that start with the marker


def test_wrapped_prefixes_come_from_seal_wrap_rows() -> None:
    mounts = json.dumps([{"path": "a/", "uuid": "u1", "seal_wrap": True}, {"path": "b/", "uuid": "u2"},
                         {"path": "c/", "uuid": "", "seal_wrap": True}, "junk"]).encode()
    local = json.dumps([{"path": "l/", "uuid": "u3", "seal_wrap": True}]).encode()
    assert wrapped_prefixes_of([mounts, local, b"not json"]) == ("logical/u1/", "logical/u3/")


def test_digest_items_hashes_normalized_pairs_in_order() -> None:
    items = [("a", b"1"), ("b", b"2")]
    plain = hashlib.sha256(b"".join(msgpack.packb([k, v], use_bin_type=True) for k, v in items)).hexdigest()
    assert digest_items(iter(items), lambda k, v: v) == plain
    assert digest_items(iter(items), lambda k, v: v + b"x") != plain
    assert digest_items(iter(reversed(items)), lambda k, v: v) != plain


# ---- two clusters: stores, barriers and seals ---------------------------------------------------


@pytest.fixture
async def stores() -> AsyncIterator[tuple[LocalPhysical, LocalPhysical]]:
    a, b = await LocalPhysical.open("inmem"), await LocalPhysical.open("inmem")
    yield a, b
    await a.close()
    await b.close()


def _hsm(token: Token) -> AsyncSeal:
    return AsyncSeal(Pkcs11Seal(Pkcs11Config.from_options(token.options(), {})))


class Cluster:
    """One cluster's barrier and seal manager over ``phys`` (a new "process" each time)."""

    def __init__(self, phys: LocalPhysical, token: Token | None) -> None:
        self.phys, self.token = phys, token
        self.barrier = Barrier(phys)
        self.seals = SealManager(self.barrier, _hsm(token) if token else None)

    async def init(self) -> tuple[bytes, list[bytes]]:
        """What core's init does (minus tables and tokens); leaves it unsealed."""
        root = os.urandom(32)
        await self.seals.prepare_init()
        await self.barrier.initialize(root)
        if self.token:
            keys = await self.seals.wrap_new_root_key(root, 0, 0, recovery_shares=3, recovery_threshold=2)
            shares = keys.recovery_keys
        else:
            keys = await self.seals.wrap_new_root_key(root, 3, 2)
            shares = keys.keys
        await self.seals.store_config(keys.config)
        await self.barrier.unseal(root)
        return root, shares

    async def restart(self) -> "Cluster":
        await self.seals.shutdown()
        return Cluster(self.phys, self.token)


async def _ship(primary: Cluster, secondary: Cluster, root: bytes) -> None:
    """The part of a bulk sync that matters here, then the activation's switch and adopt."""
    t = ShippingTransform(primary.barrier, primary.seals)
    ops = []
    for key in (KEYRING_PATH, KEY_HOLDERS_PATH):
        raw = await primary.phys.get(key)
        assert raw is not None
        ops.append(Op.put(key, await t.value(key, raw)))
    await secondary.phys.apply(Batch(tuple(ops)))
    await secondary.barrier.switch_root_key(root)
    assert await adopt(secondary.seals, secondary.barrier) is True
    assert await adopt(secondary.seals, secondary.barrier) is False  # already follows


async def test_hsm_primary_to_hsm_secondary(stores: tuple[LocalPhysical, LocalPhysical], softhsm: SoftHSM) -> None:  # noqa: F811
    p = Cluster(stores[0], softhsm.new_token())
    s = Cluster(stores[1], softhsm.new_token())
    root, p_keys = await p.init()
    _, s_keys = await s.init()
    assert (await p.barrier.raw_get(KEYRING_PATH) or b"").startswith(SEAL_WRAP_MAGIC)
    assert await publish(p.seals, p.barrier) is True
    assert await publish(p.seals, p.barrier) is False  # same records: nothing to write
    await check_secondary_seal(s.seals)
    await _ship(p, s, root)
    # a new process of the secondary: its own HSM opens the PRIMARY's root key
    s = await s.restart()
    assert await s.seals.try_auto_unseal() == root
    await s.barrier.unseal(root)
    await s.seals.verify_shares_key(combine([p_keys[0], p_keys[2]]))  # the primary's recovery keys
    with pytest.raises(InvalidRequest, match="recovery key does not match"):
        await s.seals.verify_shares_key(combine([s_keys[0], s_keys[1]]))  # its own former ones
    # sealed, recovery shares are verified against the marked record too (then the HSM unseals)
    s.barrier.seal()
    assert await s.seals.submit_share(p_keys[1].hex()) is None
    assert await s.seals.submit_share(p_keys[2].hex()) == root
    # a primary rekey of its recovery key reaches the secondary's records
    new_key = os.urandom(32)
    await p.seals.set_recovery_key(new_key, KeyHolders("recovery", 1, 1, b"").config())
    assert await publish(p.seals, p.barrier) is True
    await s.barrier.unseal(root)
    await s.phys.apply(Batch((Op.put(KEY_HOLDERS_PATH, await p.phys.get(KEY_HOLDERS_PATH) or b""),)))
    assert await adopt(s.seals, s.barrier) is True
    await s.seals.verify_shares_key(new_key)
    assert (await s.seals.share_config()).secret_threshold == 1  # type: ignore[union-attr]
    await p.seals.shutdown()
    await s.seals.shutdown()


async def test_an_activation_cut_short_still_auto_unseals(stores: tuple[LocalPhysical, LocalPhysical],
                                                         softhsm: SoftHSM) -> None:  # noqa: F811
    p = Cluster(stores[0], softhsm.new_token())
    s = Cluster(stores[1], softhsm.new_token())
    root, _ = await p.init()
    own_root, _ = await s.init()
    await publish(p.seals, p.barrier)
    await stage_root(s.seals, s.barrier, root)  # at activation, before the bulk sync
    keyring = await ShippingTransform(p.barrier, p.seals).value(KEYRING_PATH, await p.phys.get(KEYRING_PATH) or b"")
    await s.phys.apply(Batch((Op.put(KEYRING_PATH, keyring),)))  # the bulk sync replaced it... crash
    s = await s.restart()
    assert await s.seals.try_auto_unseal() == own_root
    with pytest.raises(BarrierInvalidKey):
        await s.barrier.unseal(own_root)
    assert await s.seals.staged_root() == root  # what core tries next
    await s.barrier.unseal(root)
    await s.phys.apply(Batch((Op.put(KEY_HOLDERS_PATH, await p.phys.get(KEY_HOLDERS_PATH) or b""),)))
    assert await adopt(s.seals, s.barrier) is True  # a later activation: the staged key is done with
    assert await s.barrier.raw_get(HSM_ROOT_KEY_NEXT_KEY) is None
    assert await s.seals.try_auto_unseal() == root
    await p.seals.shutdown()
    await s.seals.shutdown()


async def test_hsm_primary_to_shamir_secondary(stores: tuple[LocalPhysical, LocalPhysical], softhsm: SoftHSM) -> None:  # noqa: F811
    p = Cluster(stores[0], softhsm.new_token())
    s = Cluster(stores[1], None)
    root, p_keys = await p.init()
    _, s_keys = await s.init()
    await publish(p.seals, p.barrier)
    await _ship(p, s, root)
    # Vault's table: a Shamir secondary of an auto-unseal primary is unsealed with its recovery keys
    s = await s.restart()
    cfg = await s.seals.config()
    assert cfg is not None and (cfg.type, cfg.secret_shares, cfg.secret_threshold) == ("shamir", 3, 2)
    assert await s.seals.submit_share(s_keys[0].hex()) is None
    with pytest.raises(InvalidRequest):
        await s.seals.submit_share(s_keys[1].hex())
    assert await s.seals.submit_share(p_keys[0].hex()) is None
    assert await s.seals.submit_share(p_keys[1].hex()) == root
    await p.seals.shutdown()


async def test_shamir_primary_to_hsm_secondary(stores: tuple[LocalPhysical, LocalPhysical], softhsm: SoftHSM) -> None:  # noqa: F811
    p = Cluster(stores[0], None)
    s = Cluster(stores[1], softhsm.new_token())
    root, p_keys = await p.init()
    await s.init()
    assert await publish(p.seals, p.barrier) is True
    published = await read_published(p.barrier)
    assert published is not None and published.kind == "unseal"
    assert published.wrapped_root == await p.barrier.raw_get(ROOT_KEY_KEY)
    await _ship(p, s, root)
    s = await s.restart()
    assert await s.seals.try_auto_unseal() == root
    await s.barrier.unseal(root)
    await s.seals.verify_shares_key(combine([p_keys[1], p_keys[2]]))  # the primary's unseal keys
    # promoted later, it publishes the same key holders (as recovery keys of its own seal)
    again = await describe_local(s.seals, s.barrier)
    assert again is not None and again.kind == "recovery" and again.wrapped_root == published.wrapped_root
    await s.seals.shutdown()


async def test_shamir_to_shamir_copies_the_primary_seal_records(stores: tuple[LocalPhysical, LocalPhysical]) -> None:
    p, s = Cluster(stores[0], None), Cluster(stores[1], None)
    root, p_keys = await p.init()
    await s.init()
    await publish(p.seals, p.barrier)
    await _ship(p, s, root)
    assert await s.barrier.raw_get(ROOT_KEY_KEY) == await p.barrier.raw_get(ROOT_KEY_KEY)
    assert await s.barrier.raw_get(HSM_ROOT_KEY_KEY) is None and await s.barrier.raw_get(RECOVERY_KEY_KEY) is None
    s = await s.restart()
    assert await s.seals.submit_share(p_keys[0].hex()) is None
    assert await s.seals.submit_share(p_keys[2].hex()) == root


async def test_shipping_removes_the_primary_hsm_layer(stores: tuple[LocalPhysical, LocalPhysical],
                                                      softhsm: SoftHSM) -> None:  # noqa: F811
    p = Cluster(stores[0], softhsm.new_token())
    root, _ = await p.init()
    mount = json.dumps([{"path": "w/", "type": "kv", "uuid": "u1", "seal_wrap": True}]).encode()
    await p.barrier.put("core/mounts", mount)
    view = BarrierView(p.barrier, "logical/u1/", local=False, wrapper=p.seals)
    await view.put(StorageEntry("secret", b"plaintext value"))
    stored = await p.phys.get("logical/u1/secret")
    assert stored is not None and p.barrier.decrypt("logical/u1/secret", stored).startswith(SEAL_WRAP_MAGIC)
    t = ShippingTransform(p.barrier, p.seals)
    shipped = await t.value("logical/u1/secret", stored)
    assert b"plaintext value" not in shipped  # still barrier ciphertext
    assert p.barrier.decrypt("logical/u1/secret", shipped) == b"plaintext value"  # without the HSM layer
    keyring = await p.phys.get(KEYRING_PATH) or b""
    assert not (await t.value(KEYRING_PATH, keyring)).startswith(SEAL_WRAP_MAGIC)
    assert await t.value("logical/other", b"as is") == b"as is"
    raw = Batch((Op.put("logical/u1/secret", stored, local=False), Op.delete("x", local=True)), b"rid").encode()
    out = Batch.decode(await t.batch(raw))
    assert out.request_id == b"rid" and out.ops[1] == Op.delete("x", local=True)
    assert p.barrier.decrypt("logical/u1/secret", out.ops[0].value or b"") == b"plaintext value"
    untouched = Batch((Op.put("sys/token/x", b"v"),)).encode()
    assert await t.batch(untouched) is untouched
    # the digest sees the plaintext of a seal-wrapped value however it is wrapped or encrypted
    loop = asyncio.get_running_loop()
    n = _Normalizer(p.barrier, p.seals, ("logical/u1/",), loop)
    a = await asyncio.to_thread(n, "logical/u1/secret", stored)
    b = await asyncio.to_thread(n, "logical/u1/secret", shipped)
    assert a == b and b"plaintext value" not in a
    assert await asyncio.to_thread(n, KEYRING_PATH, keyring) == await t.value(KEYRING_PATH, keyring)
    # a former secondary holding that unwrapped keyring wraps it again with its own HSM
    await p.phys.apply(Batch((Op.put(KEYRING_PATH, await t.value(KEYRING_PATH, keyring)),)))
    p.seals.follows_primary = True
    assert await reclaim_keyring(p.seals, p.barrier) is False
    p.seals.follows_primary = False
    assert await reclaim_keyring(p.seals, p.barrier) is True
    assert (await p.phys.get(KEYRING_PATH) or b"").startswith(SEAL_WRAP_MAGIC)
    assert root == p.barrier.root_key()
    await p.seals.shutdown()
