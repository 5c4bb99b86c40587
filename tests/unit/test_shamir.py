"""Shamir sharing over GF(256), the unseal progress tracker, root-key wrapping, seal config."""

from __future__ import annotations

import itertools
import os
import secrets
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultraft.barrier import Barrier
from vaultraft.seal import (
    DUPLICATE_GENERATE_ROOT,
    RootKeyUnwrapError,
    SealConfig,
    SealConfigError,
    ShareError,
    UnsealProgress,
    combine,
    split,
    unwrap_root_key,
    wrap_root_key,
)
from vaultraft.seal.shamir import eval_polynomial, gf_div, gf_mul
from vaultraft.storage.local import LocalPhysical


def _slow_mul(a: int, b: int) -> int:
    """Schoolbook carry-less multiplication reduced by x^8+x^4+x^3+x+1."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return r


def test_field_tables_match_schoolbook_arithmetic() -> None:
    for a in range(256):
        for b in range(256):
            assert gf_mul(a, b) == _slow_mul(a, b)
            if b:
                assert gf_mul(gf_div(a, b), b) == a
    with pytest.raises(ZeroDivisionError):
        gf_div(1, 0)


@st.composite
def split_case(draw: st.DrawFn) -> tuple[bytes, int, int, list[int]]:
    secret = draw(st.binary(min_size=16, max_size=48))
    n = draw(st.integers(2, 10))
    t = draw(st.integers(2, n))
    order = draw(st.permutations(range(n)))
    return secret, n, t, list(order)


@settings(max_examples=80, deadline=None)
@given(case=split_case())
def test_any_threshold_subset_recovers_and_fewer_do_not(case: tuple[bytes, int, int, list[int]]) -> None:
    secret, n, t, order = case
    shares = split(secret, n, t)
    assert len(shares) == n
    assert all(len(s) == len(secret) + 1 for s in shares)
    xs = [s[-1] for s in shares]
    assert len(set(xs)) == n and 0 not in xs
    assert combine([shares[i] for i in order[:t]]) == secret
    assert combine([shares[i] for i in order]) == secret  # more than t also works
    if t > 2:
        # t-1 shares interpolate a different polynomial: with 16+ random bytes a match is ~2^-128
        assert combine([shares[i] for i in order[: t - 1]]) != secret


def test_every_subset_of_a_3_of_5_split() -> None:
    secret = os.urandom(32)
    shares = split(secret, 5, 3)
    for k in (3, 4, 5):
        for subset in itertools.combinations(shares, k):
            assert combine(list(subset)) == secret


def test_one_share_carries_no_information_exhaustive_t2() -> None:
    """For t=2 the share at x is s + a1·x with a1 uniform over ALL of GF(256) (as split
    draws it). For every secret s the distribution of the share is exactly uniform, so
    one share says nothing about s. (Vault's "non-zero top coefficient" would make the
    share never equal s, leaking one excluded value per byte.)"""
    for x in (1, 2, 0x53, 0xFF):
        for s in range(256):
            counts = Counter(eval_polynomial([s, a1], x) for a1 in range(256))
            assert len(counts) == 256 and set(counts.values()) == {1}


def test_two_shares_carry_no_information_exhaustive_t3() -> None:
    """For t=3, any two shares (y1, y2) are uniform over GF(256)^2 whatever the secret."""
    x1, x2 = 0x07, 0xC4
    for s in (0x00, 0x5A, 0xFF):
        seen = set()
        for a1 in range(256):
            for a2 in range(256):
                seen.add((eval_polynomial([s, a1, a2], x1), eval_polynomial([s, a1, a2], x2)))
        assert len(seen) == 256 * 256


def test_split_rejects_bad_parameters_with_vault_messages() -> None:
    with pytest.raises(ValueError, match="parts cannot be less than threshold"):
        split(b"k" * 16, 2, 3)
    with pytest.raises(ValueError, match="parts cannot exceed 255"):
        split(b"k" * 16, 256, 3)
    with pytest.raises(ValueError, match="threshold must be at least 2"):
        split(b"k" * 16, 3, 1)
    with pytest.raises(ValueError, match="cannot split an empty secret"):
        split(b"", 3, 2)


def test_one_of_one_is_the_secret_itself() -> None:
    secret = os.urandom(32)
    assert split(secret, 1, 1) == [secret]


def test_combine_rejects_bad_shares() -> None:
    shares = split(os.urandom(16), 3, 2)
    with pytest.raises(ValueError, match="less than two parts"):
        combine(shares[:1])
    with pytest.raises(ValueError, match="all parts must be the same length"):
        combine([shares[0], shares[1][:-2] + shares[1][-1:]])
    with pytest.raises(ValueError, match="duplicate part detected"):
        combine([shares[0], shares[0]])
    with pytest.raises(ValueError, match="at least two bytes"):
        combine([b"\x01", b"\x02"])


# -- UnsealProgress ------------------------------------------------------------------------


def test_unseal_progress_collects_until_threshold() -> None:
    key = os.urandom(32)
    shares = split(key, 5, 3)
    p = UnsealProgress(3)
    assert p.progress == 0 and p.nonce == ""
    assert p.add(shares[4]) is None
    nonce = p.nonce
    assert p.progress == 1 and len(nonce) == 36
    assert p.add(shares[4]) is None  # Vault's unseal ignores a repeated share
    assert p.progress == 1
    assert p.add(shares[1]) is None
    assert p.progress == 2 and p.nonce == nonce
    assert p.add(shares[2]) == key
    assert p.progress == 0 and p.nonce == ""  # reset after each attempt
    p.add(shares[0])
    assert p.nonce not in ("", nonce)  # a new attempt gets a new nonce
    p.reset()
    assert p.progress == 0


def test_unseal_progress_duplicates_and_sizes() -> None:
    shares = split(os.urandom(32), 3, 2)
    p = UnsealProgress(2, duplicate_error=DUPLICATE_GENERATE_ROOT)
    p.add(shares[0])
    with pytest.raises(ShareError, match="given key has already been provided during this generation operation"):
        p.add(shares[0])
    with pytest.raises(ShareError, match="key is shorter than minimum 16 bytes"):
        p.add(b"short")
    with pytest.raises(ShareError, match="key is longer than maximum 33 bytes"):
        p.add(b"x" * 34)
    with pytest.raises(ShareError, match="failed to compute combined key"):
        p.add(os.urandom(20))  # a share of another length cannot be combined
    assert p.progress == 0


def test_unseal_progress_threshold_one() -> None:
    key = os.urandom(32)
    assert UnsealProgress(1).add(split(key, 1, 1)[0]) == key


# -- root key wrapping and the whole unseal flow ------------------------------------------


def test_wrap_unwrap_root_key() -> None:
    kek, root = os.urandom(32), os.urandom(32)
    blob = wrap_root_key(kek, root)
    assert root not in blob
    assert unwrap_root_key(kek, blob) == root
    with pytest.raises(RootKeyUnwrapError, match="message authentication failed"):
        unwrap_root_key(os.urandom(32), blob)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(RootKeyUnwrapError):
        unwrap_root_key(kek, bytes(tampered))
    with pytest.raises(RootKeyUnwrapError):
        unwrap_root_key(kek[:16], blob)


async def test_shares_unseal_a_barrier_end_to_end() -> None:
    phys = await LocalPhysical.open("inmem")
    barrier = Barrier(phys)
    kek, root = secrets.token_bytes(32), secrets.token_bytes(32)
    shares = split(kek, 5, 3)
    await barrier.initialize(root)
    await barrier.raw_put("core/root-key", wrap_root_key(kek, root))
    await barrier.raw_put("core/seal-config", SealConfig(5, 3).to_bytes())

    config = SealConfig.from_bytes(await barrier.raw_get("core/seal-config") or b"")
    progress = UnsealProgress(config.secret_threshold)
    combined = None
    for s in (shares[3], shares[0], shares[4]):
        combined = progress.add(s)
    assert combined == kek
    await barrier.unseal(unwrap_root_key(combined, await barrier.raw_get("core/root-key") or b""))
    assert not barrier.sealed

    # two shares from one split plus one from another: wrong key, clear error
    other = split(secrets.token_bytes(32), 5, 3)
    progress = UnsealProgress(3)
    progress.add(shares[0])
    progress.add(shares[1])
    # (x coordinates are random per split: take one that neither of the two shares uses)
    stranger = next(o for o in other if o[-1] not in (shares[0][-1], shares[1][-1]))
    bad = progress.add(stranger)
    assert bad is not None and bad != kek
    with pytest.raises(RootKeyUnwrapError):
        unwrap_root_key(bad, await barrier.raw_get("core/root-key") or b"")
    await phys.close()


# -- SealConfig ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    shares=st.integers(1, 255),
    threshold=st.integers(1, 255),
    nonce=st.text(max_size=40),
    rec=st.integers(0, 10),
)
def test_seal_config_round_trip(shares: int, threshold: int, nonce: str, rec: int) -> None:
    cfg = SealConfig(shares, threshold, nonce=nonce, recovery_shares=rec, recovery_threshold=rec)
    assert SealConfig.from_bytes(cfg.to_bytes()) == cfg


def test_seal_config_vault_names_and_validation() -> None:
    d = SealConfig(5, 3).to_dict()
    assert d["type"] == "shamir" and d["secret_shares"] == 5 and d["secret_threshold"] == 3
    assert d["stored_shares"] == 1
    SealConfig(5, 3).validate()
    SealConfig(1, 1).validate()
    cases = {
        (0, 1): "shares must be at least one",
        (1, 0): "threshold must be at least one",
        (3, 1): "threshold must be greater than one for multiple shares",
        (256, 3): "shares must be less than 256",
        (3, 4): "threshold cannot be larger than shares",
    }
    for (n, t), msg in cases.items():
        with pytest.raises(SealConfigError, match=msg):
            SealConfig(n, t).validate()
    with pytest.raises(SealConfigError, match="recovery threshold cannot be larger"):
        SealConfig(1, 1, recovery_shares=2, recovery_threshold=3).validate()
    with pytest.raises(SealConfigError):
        SealConfig.from_bytes(b"not json")
    with pytest.raises(SealConfigError):
        SealConfig.from_bytes(b'{"secret_shares": 1}')
