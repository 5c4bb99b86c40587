"""Shamir secret sharing over GF(2^8) (AES field, reduction polynomial 0x11b).

Share format is Vault's: ``len(secret) + 1`` bytes, the y value for each secret byte
followed by the share's x coordinate as the LAST byte. Each secret byte gets its own
random polynomial of degree ``threshold - 1`` whose constant term is that byte.

Differences from Vault, on purpose:

* x coordinates are distinct random values in 1..255 (current Vault randomises them too);
* every non-constant coefficient is uniformly random, zero included. Vault re-draws until
  the top coefficient is non-zero, which lets a single share of a 2-of-n split exclude
  one candidate value per byte; uniform coefficients make ``t-1`` shares carry exactly
  zero information (tests check this exhaustively for a one-byte secret).

Arithmetic is table-driven and branch-free in the field operations (masks instead of
``if``); Python cannot promise constant time, but nothing branches on secret bytes.
"""

from __future__ import annotations

import secrets
from typing import Sequence

SHARE_OVERHEAD = 1
_POLY = 0x11B
_GENERATOR = 0x03


def _build_tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    exp = [0] * 510
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        # multiply by the generator 3: x*2 xor x, reduced by the AES polynomial
        x2 = x << 1
        if x2 & 0x100:
            x2 ^= _POLY
        x = x2 ^ x
    for i in range(255, 510):
        exp[i] = exp[i - 255]
    return tuple(exp), tuple(log)


EXP, LOG = _build_tables()


def gf_add(a: int, b: int) -> int:
    """Addition (and subtraction) in GF(2^8)."""
    return a ^ b


def gf_mul(a: int, b: int) -> int:
    """Multiplication in GF(2^8); zero operands are masked rather than branched on."""
    mask = (-a >> 8) & (-b >> 8) & 0xFF
    return EXP[LOG[a] + LOG[b]] & mask


def gf_div(a: int, b: int) -> int:
    """Division ``a / b`` in GF(2^8); raises ZeroDivisionError for ``b == 0``."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    mask = (-a >> 8) & 0xFF
    return EXP[LOG[a] + 255 - LOG[b]] & mask


def eval_polynomial(coefficients: Sequence[int], x: int) -> int:
    """Value at ``x`` of the polynomial ``c0 + c1·x + ...`` (Horner's rule)."""
    out = 0
    for c in reversed(coefficients):
        out = gf_mul(out, x) ^ c
    return out


def split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``parts`` shares, any ``threshold`` of which recover it.

    Requires 2 ≤ threshold ≤ parts ≤ 255 and a non-empty secret. As Vault's ``sys/init``
    does, ``parts == threshold == 1`` returns ``[secret]`` unchanged: the single unseal
    key IS the secret, with no x-coordinate byte. Raises ValueError with Vault's messages.
    """
    if parts == 1 and threshold == 1:
        if not secret:
            raise ValueError("cannot split an empty secret")
        return [bytes(secret)]
    if parts < threshold:
        raise ValueError("parts cannot be less than threshold")
    if parts > 255:
        raise ValueError("parts cannot exceed 255")
    if threshold < 2:
        raise ValueError("threshold must be at least 2")
    if threshold > 255:
        raise ValueError("threshold cannot exceed 255")
    if not secret:
        raise ValueError("cannot split an empty secret")

    xs = secrets.SystemRandom().sample(range(1, 256), parts)
    rows = [bytearray(len(secret) + 1) for _ in range(parts)]
    for i, x in enumerate(xs):
        rows[i][-1] = x
    coeffs = bytearray(threshold)
    for idx, byte in enumerate(secret):
        coeffs[0] = byte
        coeffs[1:] = secrets.token_bytes(threshold - 1)
        for i, x in enumerate(xs):
            rows[i][idx] = eval_polynomial(coeffs, x)
    coeffs[:] = bytes(threshold)
    return [bytes(r) for r in rows]


def combine(shares: Sequence[bytes]) -> bytes:
    """Recover the secret from at least two shares made by :meth:`split`.

    With fewer shares than the split's threshold the result is unrelated garbage (this
    cannot be detected here; the caller verifies the key). Raises ValueError with Vault's
    messages for fewer than two shares, short or unequal shares, or a repeated x.
    """
    if len(shares) < 2:
        raise ValueError("less than two parts cannot be used to reconstruct the secret")
    size = len(shares[0])
    if size < 2:
        raise ValueError("parts must be at least two bytes")
    if any(len(s) != size for s in shares):
        raise ValueError("all parts must be the same length")
    xs = [s[-1] for s in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate part detected")

    # Lagrange basis at x = 0: l_i = prod_{j != i} x_j / (x_i - x_j); shared by every byte.
    basis: list[int] = []
    for i, xi in enumerate(xs):
        b = 1
        for j, xj in enumerate(xs):
            if i != j:
                b = gf_mul(b, gf_div(xj, xi ^ xj))
        basis.append(b)

    out = bytearray(size - 1)
    for idx in range(size - 1):
        acc = 0
        for share, b in zip(shares, basis):
            acc ^= gf_mul(share[idx], b)
        out[idx] = acc
    return bytes(out)
