"""Raft snapshots through the API: save the whole store, restore it on every node.

``GET sys/storage/raft/snapshot`` writes a consistent copy of the store (ciphertext and
raw seal records only: it is taken below the barrier) in the file format of the Raft
layer's own snapshots, and the HTTP layer streams it. ``POST sys/storage/raft/snapshot``
(and ``snapshot-force``) replaces the state of the whole cluster with an uploaded one:

* the upload is verified (header, length, SHA-256) and, unless forced, must come from
  this cluster: its keyring must open with the current root key (Vault's "sealed
  hashes" check), else 400 with Vault's message;
* the active node refuses client writes, then commits ordinary storage batches through
  the log (puts of what differs, deletes of what the snapshot lacks, each entry below
  1 MiB) between a "started" and a "done" marker (a raw record at :data:`MARKER_KEY`).
  Every member applies the same entries in the same order, so every store ends equal;
* every node reacts to the "done" marker (:func:`attach` watches the log): it reloads its
  keyring and drops cached seal configuration and policies, or, when the restored
  keyring no longer opens with its root key (a forced restore from another cluster),
  it seals itself, as Vault does; it then needs the other cluster's unseal keys.

Readers are not held off: a request served during a restore may see a mix of old and
restored keys (writes are refused with 503). An interrupted restore leaves the
"started" marker behind; running the restore again repairs the state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Sequence

import msgpack
import structlog

from vaultraft.barrier import (
    KEYRING_PATH,
    BarrierError,
    BarrierInvalidKey,
    decrypt_detached,
)
from vaultraft.core import raft_ops
from vaultraft.core.cluster import LEADER_KEY, LeaderInfo
from vaultraft.core.seal_manager import SEAL_WRAP_MAGIC
from vaultraft.logical import (
    InternalError,
    InvalidRequest,
    NotLeader,
    Request,
    StorageEntry,
    Unavailable,
    VaultError,
)
from vaultraft.raft.node import (
    CommitTimeout,
    ConsensusStopped,
    NotLeaderError,
    RaftError,
    RaftPhysical,
)
from vaultraft.raft.snapshot import (
    SnapshotData,
    SnapshotError,
    extract_data,
    plan_restore,
    write_snapshot,
)
from vaultraft.storage import ApplyResult, Batch, Op

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.core")

MARKER_KEY = raft_ops.RESTORE_MARKER_KEY  # raw (unencrypted) record: the last restore's progress
CLUSTER_KEY = "core/cluster"
WORK_DIR = "snapshot-work"  # under the raft data dir: uploads, extracted copies, downloads
RESTORE_WINDOW = 4  # restore entries in flight at once
FOLLOWER_WAIT = 5.0
MAX_UPLOAD_BYTES = 16 << 30
BUSY = "a raft snapshot restore is in progress; writes are refused until it completes"
SHAMIR_MISMATCH = ("could not verify hash file, possibly the snapshot is using a different set of unseal keys; "
                   "use the snapshot-force API to bypass this check")
AUTOSEAL_MISMATCH = ("could not verify hash file, possibly the snapshot is using a different autoseal key; "
                     "use the snapshot-force API to bypass this check")


@dataclass
class Transfer:
    """The streaming half of one snapshot request, supplied by the HTTP layer.

    ``upload(dest)`` writes the request body to the file ``dest`` and returns its size
    (restore). ``path``/``size`` name the file to stream back (save; the HTTP layer
    deletes it). ``after`` is set when something must happen once the restore is
    answered (a node whose restored keyring needs other keys seals).
    """

    upload: Callable[[str], Awaitable[int]] | None = None
    path: str | None = None
    size: int = 0
    after: Callable[[], Awaitable[None]] | None = None


@dataclass
class _NodeState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    check_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seen: str | None = None  # id of the last "done" marker this node reacted to
    local: set[str] = field(default_factory=set)  # restores this node ran itself
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    attached: bool = False


_transfers: dict[str, Transfer] = {}
_states: "weakref.WeakKeyDictionary[Core, _NodeState]" = weakref.WeakKeyDictionary()


def _state(core: "Core") -> _NodeState:
    st = _states.get(core)
    if st is None:
        st = _states[core] = _NodeState()
    return st


@contextmanager
def registered(request_id: str, transfer: Transfer) -> Iterator[Transfer]:
    """Make ``transfer`` the streaming half of request ``request_id`` while the block runs."""
    _transfers[request_id] = transfer
    try:
        yield transfer
    finally:
        _transfers.pop(request_id, None)


def _transfer_for(req: Request) -> Transfer:
    t = _transfers.get(req.request_id)
    if t is None:
        raise InvalidRequest("this endpoint streams a binary snapshot and is only served over HTTP")
    return t


def work_dir(raft: RaftPhysical) -> str:
    """Where snapshot files live while a request uses them (0700, next to the store)."""
    path = os.path.join(raft.data_dir, WORK_DIR)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


async def _active_raft(core: "Core") -> RaftPhysical:
    raft = core.cluster.raft
    if raft is None:
        raise InvalidRequest("raft storage is not in use")
    if not core.active:
        info = await core.leader_info()
        raise NotLeader(info.api_addr if info else None)
    return raft


# ---- save ------------------------------------------------------------------------------------


async def save(core: "Core", req: Request) -> None:
    """``GET sys/storage/raft/snapshot``: write a snapshot file for the HTTP layer to stream."""
    transfer = _transfer_for(req)
    raft = await _active_raft(core)
    fd, path = tempfile.mkstemp(prefix="save-", suffix=".snap", dir=work_dir(raft))
    os.close(fd)
    header = {"kind": "api", "node_id": raft.node_id, "cluster": sorted(set(raft.status().peers) | {raft.self_addr})}
    try:
        async with _state(core).lock:  # never a copy of a half-restored store from this node
            await asyncio.to_thread(write_snapshot, path, raft.store, header)
    except BaseException:
        os.unlink(path)
        raise
    transfer.path, transfer.size = path, os.path.getsize(path)
    log.info("raft_snapshot_saved", bytes=transfer.size)


# ---- restore ---------------------------------------------------------------------------------


async def restore(core: "Core", req: Request, *, force: bool) -> None:
    """``POST sys/storage/raft/snapshot[-force]``: replace the cluster's state by the upload.

    Raises InvalidRequest for a malformed snapshot or (unless ``force``) one from another
    cluster; NotLeader/Unavailable when consensus fails (a restore cut short leaves a
    partial state: run it again). When the restored keyring needs other keys, sets
    ``transfer.after`` to seal this node once answered.
    """
    transfer = _transfer_for(req)
    if transfer.upload is None:
        raise InvalidRequest("no snapshot in the request body")
    raft = await _active_raft(core)
    work = tempfile.mkdtemp(prefix="restore-", dir=work_dir(raft))
    try:
        upload = os.path.join(work, "upload.snap")
        if await transfer.upload(upload) == 0:
            raise InvalidRequest("no snapshot in the request body")
        try:
            header = await asyncio.to_thread(extract_data, upload, work)
            os.unlink(upload)
            snap = await asyncio.to_thread(SnapshotData, work)
        except SnapshotError as e:
            raise InvalidRequest(f"invalid snapshot: {e}") from None
        try:
            if not force:
                await _check_same_cluster(core, snap)
            async with _state(core).lock:
                seal = await _replace_state(core, raft, snap, force, int(header["applied_index"]))
        finally:
            snap.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if seal:
        transfer.after = functools.partial(seal_after_restore, core)


async def _check_same_cluster(core: "Core", snap: SnapshotData) -> None:
    """InvalidRequest unless the snapshot's keyring opens with this cluster's root key."""
    mismatch = AUTOSEAL_MISMATCH if core.seals.recovery_supported else SHAMIR_MISMATCH
    blob, record = snap.get(KEYRING_PATH), snap.get(CLUSTER_KEY)
    if blob is None or record is None:
        raise InvalidRequest("invalid snapshot: it holds no initialized vaultraft store")
    try:
        if blob.startswith(SEAL_WRAP_MAGIC):
            blob = await core.seals.seal_unwrap(KEYRING_PATH, blob)
        decrypt_detached(core.barrier.root_key(), blob, CLUSTER_KEY, record)
    except (BarrierInvalidKey, BarrierError, VaultError, ValueError):
        raise InvalidRequest(mismatch) from None


def _marker(rid: str, state: str, force: bool, snapshot_index: int,
            members: dict[str, dict[str, Any]] | None = None) -> Batch:
    """The raw marker record; ``members`` (node id, addresses, voter: no secrets) lets the
    membership keep its names after a forced restore replaced the encrypted node records."""
    body: dict[str, Any] = {"v": 1, "id": rid, "state": state, "forced": force, "snapshot_index": snapshot_index}
    if members:
        body["members"] = [{"node_id": k, "address": str(r.get("address", "")), "api_addr": str(r.get("api_addr", "")),
                            "voter": bool(r.get("voter", True))} for k, r in sorted(members.items())]
    raw: bytes = msgpack.packb(body, use_bin_type=True)
    return Batch((Op.put(MARKER_KEY, raw),), secrets.token_bytes(16))


async def _raft_call(call: Awaitable[ApplyResult]) -> ApplyResult:
    try:
        result = await call
    except (NotLeaderError, ConsensusStopped):
        raise NotLeader(None, "this node lost the active role during the snapshot restore") from None
    except CommitTimeout:
        raise Unavailable("a snapshot restore entry was not committed in time (no raft quorum?)") from None
    except RaftError as e:
        raise Unavailable(f"raft error: {e}") from None
    if result.error is not None:
        raise InternalError(f"storage rejected a snapshot restore entry: {result.error}")
    return result


async def _replace_state(core: "Core", raft: RaftPhysical, snap: SnapshotData, force: bool, index: int) -> bool:
    """Commit the restore through the log with writes refused; True when this node must
    seal (the restored keyring does not open with its root key)."""
    state = _state(core)
    records = await _current_records(core)
    rid = secrets.token_hex(8)
    state.local.add(rid)
    started = False
    try:
        try:
            await raft.begin_exclusive(BUSY)
        except (NotLeaderError, ConsensusStopped):
            raise NotLeader(None, "this node lost the active role before the snapshot restore") from None
        except RaftError as e:
            raise Unavailable(f"raft error: {e}") from None
        await _raft_call(raft.apply_exclusive(_marker(rid, "started", force, index)))
        started = True
        entries = await _apply_plan(raft, snap)
        done = await _raft_call(raft.apply_exclusive(_marker(rid, "done", force, index, records)))
        foreign = await _reload(core)
        log.info("raft_snapshot_restored", entries=entries, index=done.index, forced=force, sealing=foreign)
    except VaultError:
        if started:
            log.error("raft_snapshot_restore_interrupted", action="the store holds a partial restore: restore again")
            try:
                await _reload(core)
            except Exception as e:  # best effort: the node's caches follow storage if they can
                log.warning("raft_snapshot_reload_failed", error=type(e).__name__)
        raise
    finally:
        await raft.end_exclusive()
    if foreign:
        await _wait_followers(raft)
    else:
        await _reregister(core, records)
    return foreign


def _topology_key(key: str) -> bool:
    """Records about the cluster's members rather than its data: never restored (a snapshot
    may come from an older membership or from another cluster); the active node writes
    its own again after a restore."""
    return key == "core/" + LEADER_KEY or key.startswith("core/" + raft_ops.NODES_PREFIX)


async def _apply_plan(raft: RaftPhysical, snap: SnapshotData) -> int:
    """Commit every batch of the plan (a few in flight at once); how many."""
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vr-restore-plan")
    plan = plan_restore(snap, raft.store, keep=lambda key: key == MARKER_KEY, exclude=_topology_key)
    pending: set[asyncio.Task[ApplyResult]] = set()
    count = 0
    try:
        while True:
            batch = await loop.run_in_executor(executor, next, plan, None)
            if batch is None:
                break
            if len(pending) >= RESTORE_WINDOW:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    t.result()
            pending.add(asyncio.ensure_future(_raft_call(raft.apply_exclusive(batch))))
            count += 1
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                t.result()
    finally:
        for t in pending:
            t.cancel()
        await loop.run_in_executor(executor, plan.close)
        executor.shutdown(wait=False)
    return count


async def _reload(core: "Core") -> bool:
    """Make this (active) node's caches follow the restored storage; True when the
    restored keyring does not open with this node's root key."""
    try:
        await core.barrier.reload_keyring()
    except BarrierInvalidKey:
        return True
    core.seals.forget_config()
    # Core has no public "reload everything": rebuild routes, policies and audit from storage.
    await core._load_tables(create=False)
    return False


async def _current_records(core: "Core") -> dict[str, dict[str, Any]]:
    """The node records as they are before a restore (re-written after it)."""
    try:
        return await raft_ops.node_records(core)
    except Exception as e:  # an unreadable record must not block a restore
        log.warning("raft_node_records_unreadable", error=type(e).__name__)
        return {}


async def _reregister(core: "Core", records: dict[str, dict[str, Any]]) -> None:
    """After a same-cluster restore: advertise this active node again and write back the
    node records of the current membership (the restore does not take the snapshot's)."""
    raft = core.cluster.raft
    u = core.unsealed
    if raft is None or u.sys_view is None:
        return
    try:
        info = LeaderInfo(core.settings.api_addr, core.settings.cluster_addr, raft.node_id)
        await u.sys_view.put(StorageEntry(LEADER_KEY, info.encode()))
        for node_id, rec in records.items():
            await raft_ops.register_node(core, node_id, str(rec.get("address", "")), str(rec.get("api_addr", "")),
                                         not rec.get("voter", True))
    except VaultError as e:  # the restore itself succeeded; the next active node re-registers
        log.warning("raft_reregister_failed", error=str(e))


async def _wait_followers(raft: RaftPhysical) -> None:
    """Before sealing: let connected followers apply the "done" marker (they seal on it).

    A follower that acknowledged an entry committed after the marker was told the marker
    is committed; without this, a node sealing first could leave another without quorum
    and never learning of the restore.
    """
    try:
        result = await raft.noop()
    except RaftError:
        return
    target = result.index if result is not None else raft.applied_index()
    end = time.monotonic() + FOLLOWER_WAIT
    while time.monotonic() < end:
        st = raft.status()
        if all(st.match_index.get(p, 0) >= target for p in st.peers if p in st.connected):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # their next tick applies it


async def seal_after_restore(core: "Core") -> None:
    """Seal this node: its data now needs the unseal keys of the snapshot's cluster."""
    core.seals.forget_config()
    try:
        await core.seal()
    except Exception as e:
        # A background task of the unsealed state (the role loop) may have died on the
        # restored keyring, and seal() re-raises its error after dropping the unsealed
        # state; sealing again finishes the job (barrier keys, consensus, seal manager).
        log.warning("seal_after_restore_retry", error=type(e).__name__)
        await core.seal()
    core.seals.forget_config()
    log.warning("sealed_after_raft_restore", reason="the restored keyring needs the snapshot's unseal keys")


# ---- every node: react to a restore --------------------------------------------------------


def attach(core: "Core") -> None:
    """Watch the log for completed restores on this node (once; the event loop must run).

    Chains onto the Raft state machine's observer: when the restore marker (or the
    keyring, e.g. after a Raft snapshot install) is applied, :func:`_check` runs.
    """
    raft = core.cluster.raft
    state = _state(core)
    if raft is None or state.attached:
        return
    state.attached = True
    loop = asyncio.get_running_loop()
    shutil.rmtree(os.path.join(raft.data_dir, WORK_DIR), ignore_errors=True)  # leftovers of a crash
    marker = raft_ops.read_marker(raft.store.get(MARKER_KEY))
    state.seen = marker["id"] if marker is not None and marker.get("state") == "done" else None
    previous = raft.fsm.observer

    def observer(index: int, keys: Sequence[str]) -> None:
        try:
            if previous is not None:
                previous(index, keys)
        finally:
            if MARKER_KEY in keys or KEYRING_PATH in keys:
                loop.call_soon_threadsafe(_spawn_check, core)

    raft.fsm.observer = observer


def _spawn_check(core: "Core") -> None:
    state = _state(core)
    task = asyncio.get_running_loop().create_task(_check(core), name="raft_restore_check")
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def _check(core: "Core") -> None:
    """React once to a completed restore this node did not run: reload or seal."""
    state = _state(core)
    raft = core.cluster.raft
    if raft is None:
        return
    async with state.check_lock:
        marker = raft_ops.read_marker(await raft.get(MARKER_KEY))
        if marker is None or marker.get("state") != "done" or marker["id"] == state.seen:
            return
        state.seen = marker["id"]
        if marker["id"] in state.local or core.sealed:
            return
        try:
            await core.barrier.reload_keyring()
        except BarrierInvalidKey:
            log.warning("raft_restore_foreign_keyring", action="sealing")
            await seal_after_restore(core)
            return
        except Exception as e:  # sealed meanwhile, or storage trouble: the next change retries
            log.warning("raft_restore_reload_failed", error=type(e).__name__)
            return
        core.seals.forget_config()
        if not core.sealed:
            core.unsealed.policies.invalidate()
        log.info("raft_restore_applied", forced=bool(marker.get("forced")))
