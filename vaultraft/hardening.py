"""Process hardening for a process that holds keys in memory.

* ``RLIMIT_CORE = 0``: a crash writes no core dump (which would hold the keyring).
* ``prctl(PR_SET_DUMPABLE, 0)``: no core dumps even if the limit is raised later, and other
  processes of the same user cannot ``ptrace`` this one or read its ``/proc/<pid>/mem``.
* ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``: pages are never swapped out, so key
  material cannot land in swap. ``MCL_ONFAULT`` (Linux ≥ 4.4) locks pages as they are
  touched instead of faulting in every mapping at once; without it, the LMDB map and
  every thread stack would be populated and pinned in full. Older kernels fall back to
  plain ``MCL_CURRENT | MCL_FUTURE``. Locking needs ``CAP_IPC_LOCK`` or a large enough
  ``RLIMIT_MEMLOCK``; when it is refused the server logs one warning and runs on (Vault
  refuses to start instead; ``disable_mlock = true`` silences the attempt).

Every step is best effort and reported: the caller decides whether to go on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import resource
import sys
from dataclasses import dataclass

import structlog

log = structlog.get_logger("vaultraft.hardening")

MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class HardeningReport:
    """What :func:`harden_process` achieved, and one warning per step that failed."""

    core_dumps_disabled: bool
    not_dumpable: bool
    memory_locked: bool
    mlock_skipped: bool
    warnings: tuple[str, ...] = ()


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def disable_core_dumps() -> str | None:
    """Set RLIMIT_CORE to 0; None on success, else a warning."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        return None
    except (ValueError, OSError) as e:
        return f"could not disable core dumps (RLIMIT_CORE): {e}"


def set_not_dumpable(libc: ctypes.CDLL | None) -> str | None:
    """prctl(PR_SET_DUMPABLE, 0); None on success, else a warning."""
    if libc is None:
        return "could not mark the process non-dumpable: prctl is Linux-only"
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return f"could not mark the process non-dumpable: {os.strerror(ctypes.get_errno())}"
    return None


def lock_memory(libc: ctypes.CDLL | None) -> str | None:
    """mlockall(CURRENT|FUTURE|ONFAULT), falling back without ONFAULT; None on success."""
    if libc is None:
        return "cannot lock memory: mlockall is not available on this platform"
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return None
    err = ctypes.get_errno()
    if err == errno.EINVAL and libc.mlockall(MCL_CURRENT | MCL_FUTURE) == 0:
        return None
    err = ctypes.get_errno() if err == errno.EINVAL else err
    why = {errno.EPERM: "not permitted (needs CAP_IPC_LOCK)",
           errno.ENOMEM: "RLIMIT_MEMLOCK is lower than the process size"}.get(err, os.strerror(err))
    return (f"cannot lock memory: {why}; keys may be swapped to disk. Grant CAP_IPC_LOCK or raise "
            "RLIMIT_MEMLOCK (LimitMEMLOCK=infinity in systemd), use encrypted or no swap, "
            "or set disable_mlock = true")


def harden_process(*, disable_mlock: bool = False) -> HardeningReport:
    """Apply every hardening step; log one warning per failed step and one summary line."""
    libc = _libc()
    warnings: list[str] = []
    core_warn = disable_core_dumps()
    dump_warn = set_not_dumpable(libc)
    lock_warn = None if disable_mlock else lock_memory(libc)
    for w in (core_warn, dump_warn, lock_warn):
        if w:
            warnings.append(w)
            log.warning("hardening_incomplete", detail=w)
    report = HardeningReport(
        core_dumps_disabled=core_warn is None,
        not_dumpable=dump_warn is None,
        memory_locked=not disable_mlock and lock_warn is None,
        mlock_skipped=disable_mlock,
        warnings=tuple(warnings),
    )
    log.info("process_hardened", core_dumps=not report.core_dumps_disabled, dumpable=not report.not_dumpable,
             mlock=report.memory_locked, mlock_disabled=disable_mlock)
    return report
