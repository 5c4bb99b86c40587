"""The pooled source of unique (non-secret) random bytes."""

from __future__ import annotations

import os
import uuid

import pytest

from vaultraft import randpool
from vaultraft.barrier.keyring import HEADER_BYTES, seal_with


def test_values_are_distinct_and_sized_across_pool_refills() -> None:
    seen = set()
    for _ in range(3 * randpool.POOL_BYTES // 12):  # crosses several refills
        b = randpool.unique_bytes(12)
        assert len(b) == 12
        seen.add(b)
    assert len(seen) == 3 * randpool.POOL_BYTES // 12


def test_bad_sizes_are_refused() -> None:
    for n in (0, -1, 257):
        with pytest.raises(ValueError):
            randpool.unique_bytes(n)


def test_uuid4_text_is_a_version_4_uuid() -> None:
    u = uuid.UUID(randpool.uuid4_str())
    assert u.version == 4 and u.variant == uuid.RFC_4122
    assert randpool.uuid4_str() != randpool.uuid4_str()


def test_barrier_nonces_never_repeat() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(os.urandom(32))
    nonces = {seal_with(aead, 1, b"p", b"x")[5:HEADER_BYTES] for _ in range(2000)}
    assert len(nonces) == 2000


def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    randpool.unique_bytes(16)  # the parent holds a partly used pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next value
        os.write(w, randpool.unique_bytes(16))
        os._exit(0)
    os.close(w)
    child = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != randpool.unique_bytes(16)


def test_uuid4_text_matches_the_uuid_module() -> None:
    for _ in range(200):
        text = randpool.uuid4_str()
        assert str(uuid.UUID(text)) == text
        assert uuid.UUID(text).version == 4


def test_threads_draw_distinct_values() -> None:
    import threading

    out: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        got = [randpool.unique_bytes(16) for _ in range(500)]
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 2000
