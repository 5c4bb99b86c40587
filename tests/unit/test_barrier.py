"""The AES-GCM barrier: format, integrity, keyring lifecycle, and no plaintext at rest."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultraft.barrier import (
    CIPHERTEXT_VERSION,
    HEADER_BYTES,
    KEYRING_PATH,
    Barrier,
    BarrierAlreadyInitialized,
    BarrierDecryptError,
    BarrierError,
    BarrierInvalidKey,
    BarrierNotInitialized,
    BarrierSealed,
)
from vaultraft.storage.local import LocalPhysical

paths = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60)
values = st.binary(max_size=300)


async def _unsealed_inmem() -> tuple[Barrier, LocalPhysical, bytes]:
    phys = await LocalPhysical.open("inmem")
    b = Barrier(phys)
    root = secrets.token_bytes(32)
    await b.initialize(root)
    await b.unseal(root)
    return b, phys, root


@pytest.fixture(scope="module")
def crypto_barrier() -> Iterator[Barrier]:
    """An unsealed barrier for the pure encrypt/decrypt properties (storage already closed)."""

    async def make() -> Barrier:
        b, phys, _ = await _unsealed_inmem()
        await phys.close()
        return b

    b = asyncio.run(make())
    yield b
    b.seal()


@pytest.fixture
async def fresh() -> AsyncIterator[tuple[Barrier, LocalPhysical, bytes]]:
    b, phys, root = await _unsealed_inmem()
    yield b, phys, root
    await phys.close()


# -- ciphertext properties -----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(path=paths, value=values)
def test_round_trip(crypto_barrier: Barrier, path: str, value: bytes) -> None:
    ct = crypto_barrier.encrypt(path, value)
    assert ct[0] == CIPHERTEXT_VERSION
    assert int.from_bytes(ct[1:5], "big") == crypto_barrier.key_status().term
    assert len(ct) == HEADER_BYTES + len(value) + 16
    assert crypto_barrier.decrypt(path, ct) == value
    if len(value) >= 8:
        assert value not in ct


@settings(max_examples=150, deadline=None)
@given(path=paths, value=values, data=st.data())
def test_any_tampered_byte_fails(crypto_barrier: Barrier, path: str, value: bytes, data: st.DataObject) -> None:
    ct = bytearray(crypto_barrier.encrypt(path, value))
    i = data.draw(st.integers(0, len(ct) - 1))
    ct[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BarrierDecryptError):
        crypto_barrier.decrypt(path, bytes(ct))


@settings(max_examples=60, deadline=None)
@given(path=paths, value=values, cut=st.integers(1, 40))
def test_truncated_ciphertext_fails(crypto_barrier: Barrier, path: str, value: bytes, cut: int) -> None:
    ct = crypto_barrier.encrypt(path, value)
    with pytest.raises(BarrierDecryptError):
        crypto_barrier.decrypt(path, ct[: max(0, len(ct) - cut)])


@settings(max_examples=100, deadline=None)
@given(p1=paths, p2=paths, value=values)
def test_moving_a_ciphertext_to_another_path_fails(crypto_barrier: Barrier, p1: str, p2: str, value: bytes) -> None:
    if p1 == p2:
        return
    with pytest.raises(BarrierDecryptError, match="message authentication failed"):
        crypto_barrier.decrypt(p2, crypto_barrier.encrypt(p1, value))


def test_unknown_term_and_version_are_clear_errors(crypto_barrier: Barrier) -> None:
    ct = bytearray(crypto_barrier.encrypt("p", b"v"))
    ct[1:5] = (999).to_bytes(4, "big")
    with pytest.raises(BarrierDecryptError, match="no decryption key available for term 999"):
        crypto_barrier.decrypt("p", bytes(ct))
    ct[0] = 7
    with pytest.raises(BarrierDecryptError, match="version"):
        crypto_barrier.decrypt("p", bytes(ct))


# -- lifecycle -----------------------------------------------------------------------------


async def test_get_apply_list_and_counts(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, phys, _ = fresh
    before = b.key_status().encryptions
    r = await b.apply([("secret/a", b"1", False), ("secret/b/c", b"2", True), ("secret/gone", None, False)])
    assert r.error is None
    assert await b.get("secret/a") == b"1"
    assert await b.get("secret/nope") is None
    assert await b.list("secret/") == ["a", "b/"]
    assert b.key_status().encryptions == before + 2
    raw = await phys.get("secret/a")
    assert raw is not None and raw != b"1" and b.decrypt("secret/a", raw) == b"1"
    await b.delete("secret/a")
    assert await b.get("secret/a") is None


async def test_rotate_keeps_old_terms(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, phys, root = fresh
    assert b.key_status().term == 1
    await b.put("old", b"under term 1")
    old_ct = await phys.get("old")
    assert await b.rotate() == 2
    status = b.key_status()
    assert status.term == 2 and status.encryptions == 0
    await b.put("new", b"under term 2")
    new_ct = await phys.get("new")
    assert old_ct is not None and new_ct is not None
    assert int.from_bytes(old_ct[1:5], "big") == 1 and int.from_bytes(new_ct[1:5], "big") == 2
    assert await b.get("old") == b"under term 1"
    # the rotated keyring is persisted: a fresh seal/unseal still reads both terms
    b.seal()
    await b.unseal(root)
    assert b.key_status().term == 2
    assert await b.get("old") == b"under term 1" and await b.get("new") == b"under term 2"


async def test_sealed_barrier_refuses_everything_but_raw(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, _, _ = fresh
    await b.put("k", b"v")
    ring = b._keyring  # the live key material, to check it is overwritten
    assert ring is not None
    b.seal()
    assert b.sealed
    assert ring.root_key == bytearray(32) and all(k.key == bytearray(32) for k in ring.keys.values())
    with pytest.raises(BarrierSealed, match="Vault is sealed"):
        await b.get("k")
    with pytest.raises(BarrierSealed):
        await b.apply([("k", b"x", False)])
    with pytest.raises(BarrierSealed):
        await b.list("")
    with pytest.raises(BarrierSealed):
        b.encrypt("k", b"x")
    with pytest.raises(BarrierSealed):
        b.key_status()
    with pytest.raises(BarrierSealed):
        await b.rotate()
    await b.raw_put("core/seal-config", b"{}")
    assert await b.raw_get("core/seal-config") == b"{}"
    assert await b.initialized()


async def test_unseal_errors(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, phys, root = fresh
    b.seal()
    with pytest.raises(BarrierInvalidKey, match="Unseal failed, invalid key"):
        await b.unseal(secrets.token_bytes(32))
    assert b.sealed
    with pytest.raises(BarrierAlreadyInitialized, match="Vault is already initialized"):
        await b.initialize(secrets.token_bytes(32))
    with pytest.raises(BarrierError):
        await b.unseal(b"short")
    with pytest.raises(BarrierError):
        await b.raw_put(KEYRING_PATH, b"overwrite")
    await b.unseal(root)
    await b.unseal(root)  # unsealing an unsealed barrier is a no-op
    assert not b.sealed
    empty_phys = await LocalPhysical.open("inmem")
    empty = Barrier(empty_phys)
    assert not await empty.initialized()
    with pytest.raises(BarrierNotInitialized, match="Vault is not initialized"):
        await empty.unseal(root)
    await empty_phys.close()


async def test_rekey_root(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, _, old_root = fresh
    await b.put("x", b"data")
    new_root = secrets.token_bytes(32)
    await b.rekey_root(new_root)
    assert b.root_key() == new_root
    b.seal()
    with pytest.raises(BarrierInvalidKey):
        await b.unseal(old_root)
    await b.unseal(new_root)
    assert await b.get("x") == b"data"


async def test_moved_ciphertext_in_storage_fails_on_read(fresh: tuple[Barrier, LocalPhysical, bytes]) -> None:
    b, phys, _ = fresh
    await b.put("a", b"for a")
    ct = await phys.get("a")
    assert ct is not None
    await b.raw_put("b", ct)  # an attacker with storage access copies a's ciphertext to b
    with pytest.raises(BarrierDecryptError):
        await b.get("b")


def _files_contain(root: Path, needle: bytes) -> bool:
    for dirpath, _, files in os.walk(root):
        for name in files:
            if needle in (Path(dirpath) / name).read_bytes():
                return True
    return False


async def test_no_plaintext_at_rest_in_lmdb(tmp_path: Path) -> None:
    marker = b"PLAINTEXT-" + secrets.token_hex(16).encode()
    root = secrets.token_bytes(32)

    enc_dir = tmp_path / "encrypted"
    phys = await LocalPhysical.open("raft", str(enc_dir), map_size=1 << 24)
    b = Barrier(phys)
    await b.initialize(root)
    await b.unseal(root)
    await b.put("secret/data/app", marker)
    await b.rotate()
    await b.put("secret/data/app2", marker * 3)
    ring = b._keyring
    assert ring is not None
    data_keys = [bytes(k.key) for k in ring.keys.values()]
    assert await b.get("secret/data/app") == marker
    b.seal()
    await phys.close()

    assert not _files_contain(enc_dir, marker)
    assert not _files_contain(enc_dir, root)
    for k in data_keys:
        assert not _files_contain(enc_dir, k)

    # control: the same scan does find a value written without the barrier
    plain_dir = tmp_path / "plain"
    phys2 = await LocalPhysical.open("raft", str(plain_dir), map_size=1 << 24)
    await Barrier(phys2).raw_put("core/seal-config", marker)
    await phys2.close()
    assert _files_contain(plain_dir, marker)
