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

_lock = threading.Lock()
_pool = b""
_pos = 0


def _reset_after_fork() -> None:
    global _pool, _pos, _lock
    _pool, _pos, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def unique_bytes(n: int) -> bytes:
    """``n`` bytes from the kernel CSPRNG, never handed out before (``0 < n <= 256``)."""
    global _pool, _pos
    if not 0 < n <= 256:
        raise ValueError("unique_bytes serves 1 to 256 bytes")
    with _lock:
        end = _pos + n
        if end > len(_pool):
            _pool, _pos, end = os.urandom(POOL_BYTES), 0, n
        out = _pool[_pos:end]
        _pos = end
    return out


def uuid4_str() -> str:
    """A random (version 4, RFC 4122 variant) UUID as text, like ``str(uuid.uuid4())``."""
    b = bytearray(unique_bytes(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
