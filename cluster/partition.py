"""Network partitions between nodes on one machine: cgroup2 + iptables (root only).

Every node listens on 127.0.0.1, so ports alone cannot tell one node's outgoing
connections from another's. A node started inside its own cgroup2 directory can be
matched with ``-m cgroup --path``: a socket keeps the cgroup it was created in, which is
why the launcher starts the node there (cluster.local.ClusterNode) instead of moving it.

Isolating node X (its API port stays reachable for clients):

- X's process may not connect to any peer's Raft or API port (cgroup match);
- nothing leaves or reaches X's Raft port (``--sport``/``--dport`` on it);
- on connections X had already dialled to peers, the peers' side is dropped too (the
  exact port pairs, read from /proc/PID/fd and /proc/net/tcp).

Every rule carries ``-m comment --comment <tag>`` and healing deletes exactly the rules
with that tag; nothing else in the table is touched (see
/work/shared/design/faults-on-one-machine.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHAIN = "OUTPUT"
_ESTABLISHED = "01"


class PartitionError(RuntimeError):
    """iptables or cgroup2 is missing or refused (the message says which)."""


@dataclass(frozen=True)
class Endpoint:
    """What a partition needs to know about a node."""

    name: str
    api_port: int
    cluster_port: int
    pid: int | None = None
    cgroup: str | None = None  # path relative to the cgroup2 root


def cgroup2_root() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (hybrid hosts: /sys/fs/cgroup/unified), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def cgroups_usable() -> bool:
    """Whether this process can create cgroup2 directories (root, cgroup2 mounted)."""
    root = cgroup2_root()
    return root is not None and os.geteuid() == 0 and os.access(root, os.W_OK)


def remove_cgroup(path: Path) -> None:
    """Move any process left in ``path`` back to the root cgroup and remove the directory."""
    if not path.is_dir():
        return
    root = cgroup2_root()
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        pids = []
    if root is not None:
        for pid in pids:
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
    try:
        path.rmdir()
    except OSError:
        pass


def _iptables(*args: str) -> str:
    exe = shutil.which("iptables")
    if exe is None:
        raise PartitionError("iptables is not installed (apt-get install -y iptables)")
    proc = subprocess.run([exe, "-w", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PartitionError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def established_ports(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of every established TCP connection of process ``pid``."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return []
    out: list[tuple[int, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == _ESTABLISHED and f[9] in inodes:
                out.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)))
    return out


def isolation_rules(target: Endpoint, peers: list[Endpoint]) -> list[list[str]]:
    """The match parts of the DROP rules that cut ``target`` off from ``peers``."""
    if target.cgroup is None:
        raise PartitionError(f"{target.name} was not started in its own cgroup; restart it with cgroups "
                             "enabled to partition it")
    rules: list[list[str]] = []
    peer_ports = {p for peer in peers for p in (peer.cluster_port, peer.api_port)}
    for port in sorted(peer_ports):
        rules.append(["-m", "cgroup", "--path", target.cgroup, "-p", "tcp", "--dport", str(port)])
    rules.append(["-p", "tcp", "--sport", str(target.cluster_port)])
    rules.append(["-p", "tcp", "--dport", str(target.cluster_port)])
    if target.pid is not None:
        for local, remote in established_ports(target.pid):
            if remote in peer_ports:
                rules.append(["-p", "tcp", "--sport", str(remote), "--dport", str(local)])
    return rules


def isolate(target: Endpoint, peers: list[Endpoint], tag: str) -> int:
    """Add DROP rules (tagged ``tag``) cutting ``target`` off from ``peers``; how many."""
    rules = isolation_rules(target, peers)
    added = 0
    try:
        for match in rules:
            _iptables("-A", CHAIN, *match, "-m", "comment", "--comment", tag, "-j", "DROP")
            added += 1
    except PartitionError:
        heal(tag)
        raise
    return added


def tagged_rules(tag: str) -> list[list[str]]:
    """Rules in the chain carrying exactly the comment ``tag`` (as ``-A`` argument lists)."""
    out = []
    for line in _iptables("-S", CHAIN).splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", CHAIN] and any(w == "--comment" and i + 1 < len(words) and words[i + 1] == tag
                                              for i, w in enumerate(words)):
            out.append(words)
    return out


def heal(tag: str) -> int:
    """Delete every rule tagged ``tag`` (and nothing else); how many were deleted."""
    if shutil.which("iptables") is None:
        return 0
    rules = tagged_rules(tag)
    for words in rules:
        _iptables("-D", *words[1:])
    return len(rules)
