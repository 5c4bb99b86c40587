"""``python -m cluster``: a local multi-node vaultraft cluster for development and drills.

    python -m cluster up [--nodes 3] [--base-port 8200] [--dir .cluster]
    python -m cluster status [--json]
    python -m cluster down [--purge]
    python -m cluster kill|stop|pause|resume|unseal N
    python -m cluster restart N [--no-unseal]
    python -m cluster partition N | heal [N]     (root: cgroup2 + iptables)
    python -m cluster --dir .dr dr up|status|drill|promote|fail-back|down   (see cluster.dr_cli)

Nodes run detached; every command after ``up`` finds them through ``<dir>/state.json``.
``N`` is a node's index (0-based), its name (``node1``) or its API port. The unseal keys
and root token go to ``<dir>/init.json`` (0600) and are never printed. Run as root with
cgroup2 mounted, ``up`` starts each node in its own cgroup so that ``partition`` can cut
it off from its peers with tagged iptables rules (``heal`` deletes exactly those).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

from cluster import dr_cli
from cluster.local import ClusterError, LocalCluster, role_name
from cluster.partition import cgroups_usable

DEFAULT_DIR = ".cluster"
DEFAULT_BASE_PORT = 8200


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster", description="A local vaultraft cluster on 127.0.0.1.")
    p.add_argument("--dir", default=None, help="work dir (default: .cluster; .dr for the dr commands)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start, initialize, unseal and join the nodes (idempotent)")
    up.add_argument("--nodes", type=int, default=None, help="number of nodes (default 3)")
    up.add_argument("--base-port", type=int, default=None,
                    help="API port of node0; node i uses base+10i (API) and base+10i+1 (Raft); default 8200")
    st = sub.add_parser("status", help="each node's pid, role and applied index")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    down = sub.add_parser("down", help="stop every node")
    down.add_argument("--purge", action="store_true", help="also delete the cluster dir (data and keys)")
    for name, text in (("kill", "SIGKILL the node's process group"), ("stop", "SIGTERM the node and wait"),
                       ("pause", "SIGSTOP the node"), ("resume", "SIGCONT the node"),
                       ("unseal", "unseal the node with the cluster's keys")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("node", help="index (0-based), name (node1) or API port")
    rs = sub.add_parser("restart", help="stop the node if running, start it, unseal it")
    rs.add_argument("node", help="index (0-based), name (node1) or API port")
    rs.add_argument("--no-unseal", action="store_true", help="leave it sealed")
    pt = sub.add_parser("partition", help="cut the node off from its peers (clients still reach it)")
    pt.add_argument("node", help="index (0-based), name (node1) or API port")
    hl = sub.add_parser("heal", help="remove the partition rules (of one node, or all)")
    hl.add_argument("node", nargs="?", default=None, help="index (0-based), name (node1) or API port")
    dr_cli.add_parser(sub)
    # the dir option is accepted after the subcommand too
    for name, sp in sub.choices.items():
        if name != "dr":  # dr_cli adds its own, to its subcommands too
            sp.add_argument("--dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _out(msg: str = "") -> None:
    print(msg, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Bring the cluster up (or back up) and print where it is."""
    if args.nodes is not None and args.nodes < 1:
        raise ClusterError("--nodes must be at least 1")
    existing = (Path(args.dir) / "state.json").exists()
    c = LocalCluster.open(Path(args.dir), args.nodes,
                          args.base_port if args.base_port is not None or existing else DEFAULT_BASE_PORT,
                          cgroups=cgroups_usable())
    _out(f"{'restarting' if existing else 'starting'} a {c.size}-node cluster in {c.workdir}")
    c.up()
    _print_summary(c)
    return 0


def _print_summary(c: LocalCluster) -> None:
    d = c.describe()
    for n in d["nodes"]:
        _out(f"  {n['name']}: {n['api_addr']}  (raft {n['cluster_addr']}, pid {n['pid']}, {n['role']})")
    _out(f"active node: {d['active'] or 'none'}")
    _out(f"unseal keys and root token: {d['init_file']} (mode 0600)")
    if d["active"]:
        _out(f"  export VAULT_ADDR={d['active']}")
        _out(f"  export VAULT_TOKEN=$(python3 -c 'import json; print(json.load(open(\"{d['init_file']}\"))"
             "[\"root_token\"])')")


def cmd_status(args: argparse.Namespace) -> int:
    """Print each node's state."""
    c = LocalCluster.load(Path(args.dir))
    rows = []
    for n in c.nodes:
        alive = n.alive()
        code = c.health(n) if alive else None
        leader = c.leader_status(n) if code in (200, 429, 473) else None
        rows.append({"name": n.name, "api_addr": n.addr, "cluster_port": n.cluster_port,
                     "pid": n.pid if alive else None, "running": alive,
                     "role": role_name(code) if alive and code is not None else ("unresponsive" if alive else "down"),
                     "health": code,
                     "applied_index": leader["raft_applied_index"] if leader else None,
                     "leader": leader["leader_address"] if leader else None})
    if args.json:
        _out(json.dumps({"dir": str(c.workdir), "init_file": str(c.init_file), "nodes": rows}, indent=2))
        return 0
    _out(f"cluster in {c.workdir}")
    for r in rows:
        idx = "-" if r["applied_index"] is None else r["applied_index"]
        _out(f"  {r['name']}: {r['api_addr']}  pid {r['pid'] or '-'}  {r['role']}  applied_index {idx}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop every node; with --purge also delete the dir."""
    c = LocalCluster.load(Path(args.dir))
    c.stop()
    _out(f"stopped {len(c.nodes)} nodes")
    if args.purge:
        shutil.rmtree(c.workdir)
        _out(f"deleted {c.workdir}")
    return 0


def _one(action: Callable[[LocalCluster, str], str]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        c = LocalCluster.load(Path(args.dir))
        _out(action(c, args.node))
        c.save_state()
        return 0
    return run


def _kill(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    if not n.alive():
        return f"{n.name} is not running"
    pid = n.pid
    c.kill(n)
    return f"killed {n.name} (process group {pid}, SIGKILL)"


def _stop(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    n.stop()
    return f"stopped {n.name}"


def _pause(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    if not n.alive():
        raise ClusterError(f"{n.name} is not running")
    c.pause(n)
    return f"paused {n.name} (SIGSTOP); `resume {which}` continues it"


def _resume(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    if not n.alive():
        raise ClusterError(f"{n.name} is not running")
    c.resume(n)
    return f"resumed {n.name} (SIGCONT)"


def _unseal(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    if not n.alive():
        raise ClusterError(f"{n.name} is not running")
    c.unseal(n)
    return f"unsealed {n.name} ({role_name(n.wait_health({200, 429, 473}, timeout=30))})"


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop (if running) and start one node; unseal it unless --no-unseal."""
    c = LocalCluster.load(Path(args.dir))
    n = c.node(args.node)
    c.restart(n, unseal=not args.no_unseal)
    c.save_state()
    if args.no_unseal:
        _out(f"restarted {n.name} (pid {n.pid}), sealed")
    else:
        _out(f"restarted {n.name} (pid {n.pid}), {role_name(n.wait_health({200, 429, 473}, timeout=30))}")
    return 0


def _partition(c: LocalCluster, which: str) -> str:
    n = c.node(which)
    rules = c.partition(n)
    return f"partitioned {n.name} from its peers ({rules} iptables rules tagged {c.tag}-{n.name}); " \
           f"`heal {which}` removes them"


def cmd_heal(args: argparse.Namespace) -> int:
    """Delete this cluster's partition rules."""
    c = LocalCluster.load(Path(args.dir))
    n = c.node(args.node) if args.node is not None else None
    _out(f"removed {c.heal(n)} iptables rules")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up, "status": cmd_status, "down": cmd_down, "restart": cmd_restart,
    "kill": _one(_kill), "stop": _one(_stop), "pause": _one(_pause), "resume": _one(_resume),
    "unseal": _one(_unseal), "partition": _one(_partition), "heal": cmd_heal, "dr": dr_cli.run,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 1 with a message on stderr otherwise."""
    args = _parser().parse_args(argv)
    if args.dir is None:
        args.dir = dr_cli.DEFAULT_DIR if args.cmd == "dr" else DEFAULT_DIR
    try:
        return COMMANDS[args.cmd](args)
    except (ClusterError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
