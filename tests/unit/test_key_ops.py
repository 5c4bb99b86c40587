"""Rekey, generate-root and automatic rotation against a real in-process core (inmem storage).

Shares, tokens and keyrings are the real ones: a rekeyed node is sealed and unsealed
again with the new shares; a generated root token is looked up in the token store.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vaultraft.core.core import Core, CoreSettings
from vaultraft.core.key_ops import (
    OTP_LENGTH,
    KeyOps,
    RekeyRequest,
    active_key_ops,
    decode_share,
    decode_token,
    encode_token,
)
from vaultraft.core.sys.keys import (
    MAX_OPERATIONS,
    ROTATION_CONFIG_KEY,
    RotationConfig,
    go_duration,
    maybe_auto_rotate,
    rotation_config,
    rotation_due,
)
from vaultraft.core.views import BarrierView
from vaultraft.logical import InvalidRequest, NotFound, Sealed, StorageEntry
from vaultraft.storage.local import LocalPhysical


async def _core(shares: int = 3, threshold: int = 2) -> tuple[Core, list[bytes], str]:
    phys = await LocalPhysical.open("inmem")
    core = Core(phys, CoreSettings())
    result = await core.initialize(shares, threshold)
    for k in result.keys[:threshold]:
        await core.unseal(k.hex())
    assert not core.sealed
    return core, list(result.keys), result.root_token


@pytest.fixture
async def node() -> AsyncIterator[tuple[Core, list[bytes], str]]:
    core, keys, root = await _core()
    yield core, keys, root
    await core.seal()
    await core.physical.close()  # type: ignore[attr-defined]


async def _unseals_with(core: Core, keys: list[bytes]) -> bool:
    """Seal, then try ``keys``; True when they unseal the node."""
    await core.seal()
    try:
        for k in keys:
            await core.unseal(k.hex())
    except InvalidRequest:
        return False
    return not core.sealed


# ---- encodings ---------------------------------------------------------------------------------


def test_token_xor_encoding_is_vaults() -> None:
    token = "hvs." + "a" * 24
    otp = "B" * OTP_LENGTH
    encoded = encode_token(token, otp)
    assert "=" not in encoded  # Vault: base64.RawStdEncoding
    assert base64.b64decode(encoded + "=" * (-len(encoded) % 4)) == bytes(a ^ b for a, b in zip(token.encode(), otp.encode()))
    assert decode_token(encoded, otp) == token
    with pytest.raises(ValueError):
        decode_token(encoded, otp[:-1])


def test_decode_share_accepts_hex_and_base64() -> None:
    raw = os.urandom(33)
    assert decode_share(raw.hex()) == raw
    assert decode_share(base64.b64encode(raw).decode()) == raw
    with pytest.raises(InvalidRequest, match="valid hex or base64"):
        decode_share("not a key!")


def test_rotation_due_and_go_duration() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cfg = RotationConfig(max_operations=1_000_000, interval=86400)
    assert rotation_due(cfg, t0, 10, t0) == ""
    assert rotation_due(cfg, t0, 1_000_000, t0) == "max_operations"
    assert rotation_due(cfg, t0, 0, t0 + dt.timedelta(days=1)) == "interval"
    assert rotation_due(RotationConfig(1_000_000, 86400, enabled=False), t0, 5_000_000, t0 + dt.timedelta(days=9)) == ""
    assert go_duration(0) == "0s" and go_duration(4320 * 3600) == "4320h0m0s" and go_duration(90) == "1m30s"


# ---- generate-root -------------------------------------------------------------------------------


async def test_generate_root_with_generated_otp(node: tuple[Core, list[bytes], str]) -> None:
    core, keys, _ = node
    ops = await active_key_ops(core)
    idle = await ops.generate_root_status()
    assert idle["started"] is False and idle["required"] == 2 and idle["otp_length"] == OTP_LENGTH
    started = await ops.start_generate_root("", "")
    otp, nonce = started["otp"], started["nonce"]
    assert len(otp) == OTP_LENGTH and otp.isalnum() and started["started"] is True
    assert (await ops.generate_root_status())["otp"] == ""  # shown only once
    with pytest.raises(InvalidRequest, match="root generation already in progress"):
        await ops.start_generate_root("", "")
    with pytest.raises(InvalidRequest, match="incorrect nonce supplied"):
        await ops.update_generate_root(keys[0], "wrong")
    first = await ops.update_generate_root(keys[0], nonce)
    assert first["progress"] == 1 and first["complete"] is False
    with pytest.raises(InvalidRequest, match="given key has already been provided during this generation operation"):
        await ops.update_generate_root(keys[0], nonce)
    done = await ops.update_generate_root(keys[2], nonce)
    assert done["complete"] is True and done["encoded_token"] == done["encoded_root_token"]
    token = decode_token(done["encoded_token"], otp)
    entry = await core.unsealed.tokens.lookup(token)
    assert entry is not None and entry.policies == ("root",)
    assert (await ops.generate_root_status())["started"] is False


async def test_generate_root_with_own_otp_and_wrong_shares(node: tuple[Core, list[bytes], str]) -> None:
    core, _, _ = node
    other, other_keys, _ = await _core()
    try:
        ops = await active_key_ops(core)
        with pytest.raises(InvalidRequest, match="OTP string is wrong length"):
            await ops.start_generate_root("short", "")
        with pytest.raises(InvalidRequest, match="only one of"):
            await ops.start_generate_root("x" * OTP_LENGTH, "a2V5")
        st = await ops.start_generate_root("Z" * OTP_LENGTH, "")
        assert st["otp"] == ""  # the caller's own OTP is never echoed
        await ops.update_generate_root(other_keys[0], st["nonce"])
        with pytest.raises(InvalidRequest, match="root generation aborted: unable to authenticate"):
            await ops.update_generate_root(other_keys[1], st["nonce"])
        again = await ops.generate_root_status()
        assert again["started"] is True and again["progress"] == 0  # progress reset, attempt kept
        await ops.cancel_generate_root()
        assert (await ops.generate_root_status())["started"] is False
    finally:
        await other.seal()
        await other.physical.close()  # type: ignore[attr-defined]


async def test_key_ops_need_an_unsealed_node(node: tuple[Core, list[bytes], str]) -> None:
    core, _, _ = node
    await core.seal()
    with pytest.raises(Sealed):
        await active_key_ops(core)


# ---- rekey ---------------------------------------------------------------------------------------


async def test_rekey_replaces_the_unseal_shares(node: tuple[Core, list[bytes], str]) -> None:
    core, keys, _ = node
    ops = await active_key_ops(core)
    with pytest.raises(InvalidRequest, match="provided threshold greater than the total shares"):
        await ops.start_rekey(False, RekeyRequest(2, 3))
    with pytest.raises(InvalidRequest, match="invalid rekey seal configuration: threshold must be greater than one"):
        await ops.start_rekey(False, RekeyRequest(4, 1))
    with pytest.raises(InvalidRequest, match="cannot request a backup"):
        await ops.start_rekey(False, RekeyRequest(3, 2, backup=True))
    with pytest.raises(InvalidRequest, match="recovery rekeying not supported"):
        await ops.start_rekey(True, RekeyRequest(3, 2))
    st = await ops.start_rekey(False, RekeyRequest(5, 3))
    assert (st["started"], st["n"], st["t"], st["required"], st["progress"]) == (True, 5, 3, 2, 0)
    nonce = st["nonce"]
    with pytest.raises(InvalidRequest, match="rekey already in progress"):
        await ops.start_rekey(False, RekeyRequest(5, 3))
    assert (await ops.update_rekey(False, keys[1], nonce))["progress"] == 1
    done = await ops.update_rekey(False, keys[2], nonce)
    assert done["complete"] is True and len(done["keys"]) == 5 and done["verification_required"] is False
    new = [bytes.fromhex(k) for k in done["keys"]]
    assert [base64.b64decode(k) for k in done["keys_base64"]] == new
    assert (await core.seal_status())["n"] == 5 and (await core.seal_status())["t"] == 3
    assert not await _unseals_with(core, keys[:2])  # the old shares are dead
    assert await _unseals_with(core, new[2:5])


async def test_rekey_with_verification(node: tuple[Core, list[bytes], str]) -> None:
    core, keys, _ = node
    ops = await active_key_ops(core)
    st = await ops.start_rekey(False, RekeyRequest(3, 2, require_verification=True))
    assert st["verification_required"] is True
    with pytest.raises(InvalidRequest, match="no rekey verification in progress"):
        await ops.verify_status(False)
    await ops.update_rekey(False, keys[0], st["nonce"])
    done = await ops.update_rekey(False, keys[1], st["nonce"])
    assert done["verification_required"] is True and done["verification_nonce"]
    new = [bytes.fromhex(k) for k in done["keys"]]
    with pytest.raises(InvalidRequest, match="rekey operation already finished; verification must be performed"):
        await ops.update_rekey(False, keys[2], st["nonce"])
    vnonce = done["verification_nonce"]
    assert (await ops.verify_status(False)) == {"nonce": vnonce, "started": True, "t": 2, "n": 3, "progress": 0}
    # the OLD shares do not verify, and a failed verification rotates the nonce
    await ops.update_verify(False, keys[0], vnonce)
    with pytest.raises(InvalidRequest, match="rekey verification failed; incorrect key shares supplied"):
        await ops.update_verify(False, keys[1], vnonce)
    vnonce2 = (await ops.verify_status(False))["nonce"]
    assert vnonce2 != vnonce
    restarted = await ops.restart_verify(False)
    assert restarted["nonce"] not in (vnonce, vnonce2) and restarted["progress"] == 0
    vnonce3 = restarted["nonce"]
    await ops.update_verify(False, new[2], vnonce3)
    with pytest.raises(InvalidRequest, match="given key has already been provided during this verify operation"):
        await ops.update_verify(False, new[2], vnonce3)
    # until verification completes the old shares still unseal (nothing was written)
    assert (await core.seal_status())["n"] == 3
    fin = await ops.update_verify(False, new[0], vnonce3)
    assert fin == {"nonce": vnonce3, "complete": True}
    assert not await _unseals_with(core, keys[:2])
    assert await _unseals_with(core, new[:2])


async def test_rekey_wrong_shares_and_cancel(node: tuple[Core, list[bytes], str]) -> None:
    core, keys, _ = node
    other, other_keys, _ = await _core()
    try:
        ops = await active_key_ops(core)
        st = await ops.start_rekey(False, RekeyRequest(1, 1))
        await ops.update_rekey(False, other_keys[0], st["nonce"])
        with pytest.raises(InvalidRequest, match="root key verification failed: unable to authenticate"):
            await ops.update_rekey(False, other_keys[1], st["nonce"])
        assert (await ops.rekey_status(False))["progress"] == 0
        with pytest.raises(InvalidRequest, match="invalid request"):
            await ops.cancel_rekey(False, "not-the-nonce")  # within 10 minutes the nonce is needed
        await ops.cancel_rekey(False, st["nonce"])
        assert (await ops.rekey_status(False))["started"] is False
        with pytest.raises(InvalidRequest, match="no barrier rekey in progress"):
            await ops.update_rekey(False, keys[0], st["nonce"])
        # a 1-of-1 rekey: the single new share is the unseal key itself
        st = await ops.start_rekey(False, RekeyRequest(1, 1))
        await ops.update_rekey(False, keys[0], st["nonce"])
        done = await ops.update_rekey(False, keys[1], st["nonce"])
        (single,) = [bytes.fromhex(k) for k in done["keys"]]
        assert len(single) == 32
        assert await _unseals_with(core, [single])
    finally:
        await other.seal()
        await other.physical.close()  # type: ignore[attr-defined]


async def test_key_ops_state_is_dropped_on_seal(node: tuple[Core, list[bytes], str]) -> None:
    core, keys, _ = node
    ops = await active_key_ops(core)
    await ops.start_rekey(False, RekeyRequest(3, 2))
    await ops.start_generate_root("", "")
    assert await _unseals_with(core, keys[:2])
    fresh = await active_key_ops(core)
    assert isinstance(fresh, KeyOps) and fresh is not ops
    assert (await fresh.rekey_status(False))["started"] is False
    assert (await fresh.generate_root_status())["started"] is False


# ---- PGP in rekey (real gpg keys) ------------------------------------------------------------------


def _gpg_key(home: Path, name: str) -> str:
    """A fresh gpg key pair in ``home``; returns the public key as Vault takes it."""
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>",
                    "future-default", "default", "never"], check=True, capture_output=True, env=env)
    pub = subprocess.run(["gpg", "--batch", "--export", f"{name}@example.com"], check=True, capture_output=True, env=env)
    return base64.b64encode(pub.stdout).decode()


def _gpg_decrypt(home: Path, blob_b64: str) -> str:
    env = dict(os.environ, GNUPGHOME=str(home))
    out = subprocess.run(["gpg", "--batch", "--quiet", "--decrypt"], input=base64.b64decode(blob_b64),
                         check=True, capture_output=True, env=env)
    return out.stdout.decode()


async def test_rekey_with_pgp_keys_and_backup(node: tuple[Core, list[bytes], str], tmp_path: Path) -> None:
    core, keys, _ = node
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    pubs = [_gpg_key(home, f"holder{i}") for i in range(2)]
    ops = await active_key_ops(core)
    with pytest.raises(InvalidRequest, match="incorrect number of PGP keys for rekey"):
        await ops.start_rekey(False, RekeyRequest(3, 2, pgp_keys=tuple(pubs)))
    with pytest.raises(InvalidRequest, match="error decoding given PGP key"):
        await ops.start_rekey(False, RekeyRequest(2, 2, pgp_keys=("!!", pubs[1])))
    st = await ops.start_rekey(False, RekeyRequest(2, 2, pgp_keys=tuple(pubs), backup=True))
    assert st["backup"] is True and len(st["pgp_fingerprints"]) == 2
    with pytest.raises(NotFound):
        await ops.read_backup(False)
    await ops.update_rekey(False, keys[0], st["nonce"])
    done = await ops.update_rekey(False, keys[1], st["nonce"])
    assert done["pgp_fingerprints"] == st["pgp_fingerprints"] and done["backup"] is True
    hex_shares = [_gpg_decrypt(home, b) for b in done["keys_base64"]]
    assert all(len(h) == 66 for h in hex_shares)  # hex of a 33-byte share
    backup = await ops.read_backup(False)
    assert backup["nonce"] == st["nonce"]
    assert sorted(backup["keys"]) == sorted(st["pgp_fingerprints"])
    assert [backup["keys_base64"][fp][0] for fp in done["pgp_fingerprints"]] == done["keys_base64"]
    raw = await core.physical.get("core/unseal-keys-backup")
    assert raw is not None and st["nonce"].encode() not in raw  # stored behind the barrier
    await ops.delete_backup(False)
    with pytest.raises(NotFound):
        await ops.read_backup(False)
    assert await _unseals_with(core, [bytes.fromhex(h) for h in hex_shares])
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)


# ---- automatic rotation ---------------------------------------------------------------------------


async def test_auto_rotation(node: tuple[Core, list[bytes], str]) -> None:
    core, _, _ = node
    assert await rotation_config(core) == RotationConfig(MAX_OPERATIONS, 0, True)
    term = core.barrier.key_status().term
    assert await maybe_auto_rotate(core) is None
    view = BarrierView(core.barrier, "core/", local=False)
    # a config below the API's minimum, written directly, makes the next check rotate at once
    await view.put(StorageEntry(ROTATION_CONFIG_KEY, RotationConfig(max_operations=1).to_bytes()))
    new_term = await maybe_auto_rotate(core)
    assert new_term == term + 1 and core.barrier.key_status().term == term + 1
    await view.put(StorageEntry(ROTATION_CONFIG_KEY, RotationConfig(max_operations=1, enabled=False).to_bytes()))
    assert await maybe_auto_rotate(core) is None
