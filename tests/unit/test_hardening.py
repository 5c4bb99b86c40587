"""Process hardening, checked from inside a child process (it must not lock pytest's memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import ctypes, json, resource, sys
from vaultraft.hardening import harden_process
if sys.argv[2] == "drop":  # lose CAP_IPC_LOCK (bit 14) and get a tiny RLIMIT_MEMLOCK: mlockall must fail
    libc0 = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    assert libc0.capget(header, data) == 0
    data[0] &= ~(1 << 14)
    data[1] &= ~(1 << 14)
    assert libc0.capset(header, data) == 0
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
report = harden_process(disable_mlock=sys.argv[1] == "1")
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
libc = ctypes.CDLL(None, use_errno=True)
print(json.dumps({
    "locked": report.memory_locked, "skipped": report.mlock_skipped, "warnings": report.warnings,
    "core": resource.getrlimit(resource.RLIMIT_CORE), "dumpable": libc.prctl(3, 0, 0, 0, 0),
    "vmlck_kb": int(status["VmLck"].split()[0]),
}))
"""


def _probe(disable_mlock: bool, *, drop_ipc_lock: bool = False) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if disable_mlock else "0",
                          "drop" if drop_ipc_lock else "keep"], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_core_dumps_off_not_dumpable_and_memory_locked() -> None:
    r = _probe(False)
    assert r["core"] == [0, 0]
    assert r["dumpable"] == 0
    if os.geteuid() == 0:  # CAP_IPC_LOCK: mlockall must succeed
        assert r["locked"] is True and r["warnings"] == []
        assert isinstance(r["vmlck_kb"], int) and r["vmlck_kb"] > 0
    else:
        assert r["locked"] is (r["vmlck_kb"] != 0)


def test_disable_mlock_skips_locking() -> None:
    r = _probe(True)
    assert r["skipped"] is True and r["locked"] is False and r["vmlck_kb"] == 0
    assert r["core"] == [0, 0] and r["dumpable"] == 0


def test_refused_mlock_is_a_warning_not_a_crash() -> None:
    r = _probe(False, drop_ipc_lock=True)
    assert r["locked"] is False
    warnings = r["warnings"]
    assert isinstance(warnings, list) and len(warnings) == 1
    assert "cannot lock memory" in warnings[0] and "disable_mlock" in warnings[0]
    assert r["core"] == [0, 0] and r["vmlck_kb"] == 0
