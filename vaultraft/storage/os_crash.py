"""Whether an LMDB environment committed without fsync can be trusted: the boot-id marker.

A store that is a copy of a durable log (a Raft node's store: the journal and snapshots
hold every entry) commits without fsync (LMDB's ``MDB_NOSYNC``). A *process* crash then
loses nothing: every write is in the kernel's page cache, in the order LMDB made it, and
the environment is exactly as consistent as with fsync. An *OS* crash or a power loss may
write those pages back in any order and tear the environment. So, before the first
unsynced commit, the store records the kernel's boot id in a marker file (fsynced); a
clean close syncs the environment and removes the marker. Opening with a marker left by
another boot means the OS went down while unsynced commits may have been in flight: the
environment is set aside (``data.mdb.untrusted``, ciphertext only) and the node rebuilds
its store from its snapshot and journal, then from the leader.

Where no boot id can be read, the store keeps fsyncing every commit.
"""

from __future__ import annotations

import os

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
MARKER = "unsynced-boot-id"
UNTRUSTED = "data.mdb.untrusted"


def current_boot_id(path: str = BOOT_ID_PATH) -> str | None:
    """This kernel boot's id (changes at every boot), or None where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            boot = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return boot or None


def guard(directory: str, boot_id: str) -> bool:
    """Call before opening the environment in ``directory`` without fsync.

    Sets a torn-by-an-OS-crash environment aside (True when it did) and records
    ``boot_id`` durably, so the next open can tell whether this boot ended cleanly.
    """
    marker = os.path.join(directory, MARKER)
    try:
        with open(marker, encoding="ascii") as f:
            recorded: str | None = f.read().strip()
    except FileNotFoundError:
        recorded = None
    except (OSError, UnicodeDecodeError):
        recorded = ""  # unreadable: trust nothing
    if recorded == boot_id:
        return False
    set_aside = False
    if recorded is not None:
        data = os.path.join(directory, "data.mdb")
        if os.path.exists(data):
            os.replace(data, os.path.join(directory, UNTRUSTED))
            set_aside = True
        lock = os.path.join(directory, "lock.mdb")
        if os.path.exists(lock):
            os.unlink(lock)
    tmp = marker + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, boot_id.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, marker)
    _sync_dir(directory)
    return set_aside


def clear(directory: str) -> None:
    """After the environment was synced and closed: the next open needs no check."""
    try:
        os.unlink(os.path.join(directory, MARKER))
    except FileNotFoundError:
        return
    _sync_dir(directory)


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
