"""Random bytes for values that must be unique but are not secret: AES-GCM nonces, batch
request ids, request ids.

``os.urandom`` is one system call per value; every system call releases the GIL, and on a
busy node taking it back costs a thread switch (the Raft thread is always waiting for it).
A write needs four such values, so :func:`unique_bytes` slices them from one kernel read of
:data:`POOL_BYTES`. The bytes come from the same kernel CSPRNG, each is handed out once,
and a forked child starts a fresh pool (it never repeats the parent's bytes). Never use
this for keys or anything that must stay secret: take ``secrets``/``os.urandom`` for those.
"""

from __future__ import annotations

import os
import threading

#: Bytes read from the kernel at a time.
POOL_BYTES = 4096

class _Pool(threading.local):
    """One pool per thread: no lock on the request path (the event loop's thread draws
    almost all of them)."""

    data = b""
    pos = 0


_pool = _Pool()


def _reset_after_fork() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_reset_after_fork)


def unique_bytes(n: int) -> bytes:
    """``n`` bytes from the kernel CSPRNG, never handed out before (``0 < n <= 256``)."""
    if not 0 < n <= 256:
        raise ValueError("unique_bytes serves 1 to 256 bytes")
    pool = _pool
    pos = pool.pos
    end = pos + n
    if end > len(pool.data):
        pool.data, pos, end = os.urandom(POOL_BYTES), 0, n
    pool.pos = end
    return pool.data[pos:end]


def uuid4_str() -> str:
    """A random (version 4, RFC 4122 variant) UUID as text, like ``str(uuid.uuid4())``."""
    b = bytearray(unique_bytes(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
