"""Getting a DR secondary cluster's followers to follow, with the primary's keys.

After a DR secondary cluster takes the primary's keyring (activation, ``update-primary``),
its followers must be unsealed with the primary's unseal keys. :class:`FollowerRepair`
waits until the cluster streams and every node follows. It unseals followers that sealed
themselves, and works around two server issues it announces and records: followers that
keep answering 429 (restarted), and followers left uninitialized by a self-seal in the
middle of a bulk sync (rebuilt: data dir wiped, joined again).
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import dr_api
from cluster.dr_api import (
    HEALTH_DR_SECONDARY,
    HEALTH_PERF_STANDBY,
    HEALTH_SEALED,
    HEALTH_STANDBY,
    HEALTH_UNINITIALIZED,
)
from cluster.local import REQUEST_ERRORS, ClusterNode, LocalCluster

#: Seconds a follower may answer 429 (after catching up) or 501 before it is repaired.
STUCK_GRACE = 3.0


@dataclass
class FollowerRepair:
    """The DR secondary ``cluster`` (site ``name``), whose ``init`` holds the primary's keys
    (from ``keys_file``). Lines go to ``progress``; workarounds are appended to ``notes``."""

    cluster: LocalCluster
    name: str
    keys_file: Path
    progress: Callable[[str], None]
    notes: list[str]

    def converge(self, want: int | None, timeout: float = 60.0, settle: float = 1.0) -> float | None:
        """Bring the DR secondary cluster to a steady state; when its active node first
        streamed at WAL index ``want`` or beyond (``time.monotonic()``; None if ``want`` is None).

        Done when the active node streams (``stream-wals``) at ``want`` (if given) and every
        node answers 472 and applied what the active node had then, for ``settle`` seconds
        in a row. Meanwhile the followers are repaired, because the site may need them to
        get there (a bulk sync needs a Raft quorum):

        * a sealed follower (503) is unsealed with the primary's keys at once (it sealed
          itself when it could not open the keyring: after activation, or in the middle of a
          bulk sync, when the keyring is briefly absent);
        * a follower answering 429 for :data:`STUCK_GRACE` seconds after it caught up is
          stuck (server issue: it cannot read the replication record under the primary's
          keyring, never learns it is a DR secondary and does not seal itself): restarted and
          unsealed with the primary's keys;
        * a follower answering 501 for as long is broken (server issue: it sealed itself
          in the middle of a bulk sync and its storage has no seal configuration; sealed, it
          does not run Raft to get it back): rebuilt (data dir wiped, joined again through
          the active node, unsealed).

        Each workaround is announced through ``progress`` and recorded in :attr:`notes`.
        """
        nodes = self.cluster.nodes
        end = time.monotonic() + timeout
        caught_up_at: float | None = None
        target: int | None = None
        stable_since: float | None = None
        odd_since: dict[str, float] = {}
        quorum_lost = False
        while True:
            now = time.monotonic()
            codes = {n.name: dr_api.health(n) for n in nodes if n.alive()}
            sealed = [n for n in nodes if codes.get(n.name) == HEALTH_SEALED]
            # sealed (503) and uninitialized (501) nodes do not run Raft; a node that does not
            # answer in time is not counted either way
            out = sum(1 for c in codes.values() if c in (HEALTH_SEALED, HEALTH_UNINITIALIZED))
            if want is not None and caught_up_at is None and out > len(nodes) // 2 and not quorum_lost:
                quorum_lost = True
                note = (f"the {self.name} site lost its Raft quorum during the bulk sync: followers sealed themselves "
                        f"(health {codes}; server.log: keyring_unreadable_sealing BarrierNotInitialized). The server "
                        "may then never finish the activation (no replication_secondary_activated in the active "
                        "node's server.log; promote answers 'this cluster is not a DR secondary')")
                self.notes.append(note)
                self.progress(f"warning: {note}")
            if sealed:
                self.progress(f"unsealing {', '.join(n.name for n in sealed)} of the {self.name} site "
                              f"with the primary's keys ({self.keys_file})")
                self.cluster.unseal_all(sealed)
                continue
            act = next((n for n in nodes if codes.get(n.name) == HEALTH_DR_SECONDARY and dr_api.is_self_active(n)),
                       None)
            stream: dict[str, Any] = {}
            if act is not None:
                try:
                    stream = dr_api.dr_status(act, timeout=2)
                except dr_api.DRError:
                    stream = {}
                streaming = stream.get("state") == "stream-wals" and (
                    want is None or int(stream.get("last_remote_wal") or 0) >= want)
                if streaming and target is None:
                    caught_up_at, target = now, applied_index(act) or 0
            applied = {n.name: applied_index(n) or 0 for n in nodes if n.alive()}
            lagging = [name for name, a in applied.items() if target is None or a < target]
            stuck: list[ClusterNode] = []
            broken: list[ClusterNode] = []
            for n in nodes:
                code = codes.get(n.name)
                odd = act is not None and n is not act and (code == HEALTH_UNINITIALIZED or (
                    target is not None and code in (HEALTH_STANDBY, HEALTH_PERF_STANDBY)
                    and applied.get(n.name, 0) >= target))
                if not odd:
                    odd_since.pop(n.name, None)
                elif now - odd_since.setdefault(n.name, now) >= STUCK_GRACE:
                    (broken if code == HEALTH_UNINITIALIZED else stuck).append(n)
                    odd_since.pop(n.name)
            if stuck:
                self._restart_stuck(stuck)
            if broken and act is not None:
                self._rebuild(broken, act)
            if stuck or broken:
                continue
            settled = target is not None and not lagging and all(c == HEALTH_DR_SECONDARY for c in codes.values())
            if settled:
                stable_since = stable_since or now
                if now - stable_since >= settle:
                    return caught_up_at if want is not None else None
            else:
                stable_since = None
            if now > end:
                raise TimeoutError(
                    f"the {self.name} site did not converge within {timeout:.0f}s: health {codes}, active "
                    f"{act.name if act else None}, state {stream.get('state')}, last_remote_wal "
                    f"{stream.get('last_remote_wal')} (want {want}), lagging {lagging} (target index {target})")
            time.sleep(0.1)

    def _restart_stuck(self, nodes: list[ClusterNode]) -> None:
        """Restart DR secondary followers that answer 429 but cannot read anything, and unseal
        them with the primary's keys (see :meth:`converge`)."""
        for node in nodes:
            note = (f"{self.name}/{node.name} answered 429 (standby) on a DR secondary instead of sealing "
                    "itself (server.log: replication_reconcile_failed BarrierDecryptError); restarted it and "
                    "unsealed it with the primary's keys")
            self.notes.append(note)
            self.progress(f"warning: {note}")
        parallel([functools.partial(self.cluster.restart, n, unseal=True) for n in nodes])

    def _rebuild(self, nodes: list[ClusterNode], act: ClusterNode) -> None:
        """Wipe DR secondary followers that report 501 (their storage lost the seal
        configuration mid bulk sync), join them again through ``act`` and unseal them."""
        for node in nodes:
            note = (f"{self.name}/{node.name} sealed itself during a bulk sync and is stuck uninitialized (501; "
                    "server.log: keyring_unreadable_sealing BarrierNotInitialized); wiped its data dir, joined "
                    f"it again through {act.name} and unsealed it with the primary's keys")
            self.notes.append(note)
            self.progress(f"warning: {note}")
            node.stop()
            shutil.rmtree(node.data_dir, ignore_errors=True)
            node.start()
            # LocalCluster.join looks for a 200 node; a DR secondary's active node answers 472
            dr_api.call(node, "PUT", "sys/storage/raft/join", {"leader_api_addr": act.addr})
            self.cluster.unseal(node)
        self.cluster.save_state()


def applied_index(node: ClusterNode) -> int | None:
    """The node's applied Raft index (sys/leader), None when it does not answer."""
    try:
        code, body = node.request("GET", "sys/leader", timeout=2.0)
    except REQUEST_ERRORS:
        return None
    if code != 200 or not isinstance(body, dict) or "raft_applied_index" not in body:
        return None
    return int(body["raft_applied_index"])


def parallel(fns: list[Callable[[], Any]]) -> None:
    """Run ``fns`` in threads; re-raise the first exception in the caller."""
    errors: list[BaseException] = []

    def run(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
