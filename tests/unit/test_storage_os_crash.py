"""A rebuildable store commits without fsync: trusted after a process crash, set aside
after an OS crash (another boot id in its marker), trusted again after a clean close."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vaultraft.storage import Batch, Op, os_crash
from vaultraft.storage.lmdb_store import LMDBStore

BOOT = os_crash.current_boot_id()  # Linux always has one


def test_boot_id_is_read_and_missing_one_is_none(tmp_path: Path) -> None:
    f = tmp_path / "boot_id"
    f.write_text("abc-123\n")
    assert os_crash.current_boot_id(str(f)) == "abc-123"
    assert os_crash.current_boot_id(str(tmp_path / "absent")) is None
    f.write_text("")
    assert os_crash.current_boot_id(str(f)) is None


def test_guard_records_the_boot_and_sets_aside_only_after_another_boot(tmp_path: Path) -> None:
    d = tmp_path / "env"
    d.mkdir()
    (d / "data.mdb").write_bytes(b"pages")
    assert os_crash.guard(str(d), "boot-1") is False  # no marker: a clean start
    assert (d / os_crash.MARKER).read_text() == "boot-1" and (d / "data.mdb").exists()
    assert os_crash.guard(str(d), "boot-1") is False  # same boot: a process restart
    assert (d / "data.mdb").read_bytes() == b"pages"
    (d / "lock.mdb").write_bytes(b"lock")
    assert os_crash.guard(str(d), "boot-2") is True  # the OS went down with unsynced commits
    assert not (d / "data.mdb").exists() and not (d / "lock.mdb").exists()
    assert (d / os_crash.UNTRUSTED).read_bytes() == b"pages"
    assert (d / os_crash.MARKER).read_text() == "boot-2"
    os_crash.clear(str(d))
    assert not (d / os_crash.MARKER).exists()
    os_crash.clear(str(d))  # idempotent


def test_clean_close_is_trusted_and_os_crash_starts_empty(tmp_path: Path) -> None:
    assert BOOT is not None
    path = str(tmp_path / "db")
    s = LMDBStore(path, map_size=1 << 22, rebuildable=True)
    assert (Path(path) / os_crash.MARKER).read_text() == BOOT
    s.apply(Batch((Op.put("k", b"v"),)), 1)
    s.close()
    assert not (Path(path) / os_crash.MARKER).exists()

    s = LMDBStore(path, map_size=1 << 22, rebuildable=True)
    assert not s.rebuilt and s.get("k") == b"v" and s.applied_index() == 1
    s.close()

    # an OS crash while unsynced commits were in flight: the marker names another boot, and
    # the pages on disk may be torn (here: garbage LMDB would refuse or misread)
    (Path(path) / os_crash.MARKER).write_text("some-earlier-boot")
    (Path(path) / "data.mdb").write_bytes(os.urandom(8192))
    s = LMDBStore(path, map_size=1 << 22, rebuildable=True)
    try:
        assert s.rebuilt and s.applied_index() == 0 and s.get("k") is None  # the log rebuilds it
        assert (Path(path) / os_crash.UNTRUSTED).exists()
    finally:
        s.close()


def test_process_crash_loses_no_unsynced_commit(tmp_path: Path) -> None:
    assert BOOT is not None
    path = str(tmp_path / "db")
    code = (
        "import os, sys\n"
        "from vaultraft.storage import Batch, Op\n"
        "from vaultraft.storage.lmdb_store import LMDBStore\n"
        "s = LMDBStore(sys.argv[1], map_size=1 << 22, rebuildable=True)\n"
        "for i in range(1, 51):\n"
        "    s.apply(Batch((Op.put(f'k{i}', b'v%d' % i),)), i)\n"
        "os._exit(0)  # no close, no sync: as kill -9\n"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)
    assert (Path(path) / os_crash.MARKER).read_text() == BOOT  # left behind by the crash
    s = LMDBStore(path, map_size=1 << 22, rebuildable=True)
    try:
        assert not s.rebuilt and s.applied_index() == 50 and s.get("k50") == b"v50"
    finally:
        s.close()


def test_a_plain_store_keeps_fsyncing_and_writes_no_marker(tmp_path: Path) -> None:
    path = tmp_path / "db"
    s = LMDBStore(str(path), map_size=1 << 22)
    try:
        s.apply(Batch((Op.put("k", b"v"),)), 1)
        assert not (path / os_crash.MARKER).exists()
    finally:
        s.close()
