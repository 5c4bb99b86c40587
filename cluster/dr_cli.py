"""``python -m cluster --dir .dr dr ...``: a DR primary + DR secondary pair and the DR drill.

    dr up [--size 1|3] [--base-port 8400]    start both sites, wire DR replication (idempotent)
    dr status [--json]                       roles, nodes, replication state and lag
    dr drill [--mode kill|partition] [--duration S] [--writers N] [--json FILE] [--no-fail-back]
    dr promote                               promote the DR secondary (operation token from the primary's keys)
    dr fail-back                             demote the old primary and make it the new DR secondary
    dr down [--purge]                        stop both sites (--purge: delete the dir, keys included)

The sites live in ``<dir>/primary`` and ``<dir>/dr``; each has a ``replication.json`` with
its DR role next to its ``state.json``. The unseal keys and root token that operate both
sites are in ``<dir>/primary/init.json`` (0600); nothing secret is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cluster.drill import MODES, run_drill, to_markdown
from cluster.local import ClusterError
from cluster.replication import DR_PORT_OFFSET, SITES, ReplicatedClusters

DEFAULT_DIR = ".dr"
DEFAULT_BASE_PORT = 8400


def add_parser(sub: Any) -> None:
    """Add the ``dr`` command and its subcommands to the launcher's subparsers."""
    dr = sub.add_parser("dr", help="a DR primary + DR secondary cluster pair and the DR drill (dr --help)")
    dsub = dr.add_subparsers(dest="dr_cmd", required=True)
    up = dsub.add_parser("up", help="start both sites and wire DR replication (idempotent)")
    up.add_argument("--size", type=int, choices=(1, 3), default=None, help="nodes per site (default 3)")
    up.add_argument("--base-port", type=int, default=None,
                    help=f"API port of the primary site's node0 (default {DEFAULT_BASE_PORT}); "
                         f"the dr site starts {DR_PORT_OFFSET} above")
    st = dsub.add_parser("status", help="roles, nodes, replication state and lag of both sites")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    drill = dsub.add_parser("drill", help="lose the primary under load, promote, measure RTO/RPO, fail back")
    drill.add_argument("--mode", choices=MODES, default="kill",
                       help="kill: kill -9 every primary node; partition: cut them off (root, cgroup2, iptables)")
    drill.add_argument("--duration", type=float, default=5.0, help="seconds of write load before the loss")
    drill.add_argument("--writers", type=int, default=4, help="concurrent writer threads")
    drill.add_argument("--json", metavar="FILE", default=None, help="also write the full result (JSON) to FILE")
    drill.add_argument("--no-fail-back", action="store_true", help="stop after promotion and the RPO check")
    dsub.add_parser("promote", help="promote the DR secondary (the old primary becomes a stale primary)")
    dsub.add_parser("fail-back", help="demote the stale primary and make it the DR secondary of the new primary")
    down = dsub.add_parser("down", help="stop both sites")
    down.add_argument("--purge", action="store_true", help="also delete the dir (data and keys)")
    for sp in [dr, *dsub.choices.values()]:  # the dir option is accepted after the subcommand too
        sp.add_argument("--dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _out(msg: str = "") -> None:
    print(msg, flush=True)


def _keys_note(rc: ReplicatedClusters) -> None:
    _out(f"unseal keys and root token for BOTH sites: {rc.keys_file} (mode 0600)")
    _out(f"  (the dr site's own {rc.sites['dr'].cluster.init_file.name} is meaningless after activation: "
         "it runs on the primary's keyring)")


def _summary(rc: ReplicatedClusters) -> None:
    st = rc.status()
    for s in st["sites"]:
        sid = f" as {s['secondary_id']}" if s["secondary_id"] else ""
        _out(f"{s['site']} site: {s['role']}{sid}  state {s['state'] or '-'}  epoch {s['epoch'] or '-'}  "
             f"{s['connection'] or ''}".rstrip())
        for n in s["nodes"]:
            _out(f"  {n['name']}: {n['api_addr']}  pid {n['pid'] or '-'}  {n['role']}")
        wal = s["last_wal"] if s["dr_mode"] == "primary" else s["last_remote_wal"]
        if wal is not None:
            _out(f"  {'last_wal' if s['dr_mode'] == 'primary' else 'last_remote_wal'} {wal}")
    if st["lag_wal_entries"] is not None:
        _out(f"replication lag: {st['lag_wal_entries']} WAL entries")
    _keys_note(rc)
    prim = next((s for s in st["sites"] if s["role"] == "primary"), None)
    if prim and prim["active"]:
        _out(f"  export VAULT_ADDR={prim['active']}")
        _out(f"  export VAULT_TOKEN=$(python3 -c 'import json; print(json.load(open(\"{rc.keys_file}\"))"
             "[\"root_token\"])')")


def cmd_up(args: argparse.Namespace) -> int:
    existing = ReplicatedClusters.exists(Path(args.dir))
    base = args.base_port if args.base_port is not None or existing else DEFAULT_BASE_PORT
    rc = ReplicatedClusters.open(Path(args.dir), args.size, base, progress=_out)
    _out(f"{'restarting' if existing else 'starting'} a DR pair of {rc.size}-node clusters in {rc.workdir}")
    rc.up()
    _summary(rc)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rc = ReplicatedClusters.load(Path(args.dir))
    if args.json:
        _out(json.dumps(rc.status(), indent=2))
    else:
        _summary(rc)
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    rc = ReplicatedClusters.load(Path(args.dir), progress=_out)
    result = run_drill(rc, mode=args.mode, writers=args.writers, duration=args.duration, progress=_out,
                       fail_back=not args.no_fail_back)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    _out()
    _out(to_markdown(result))
    _out(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    if args.json:
        _out(f"full result (with the timeline): {args.json}")
    bad = result["missing_at_or_below_replicated_index"] or result["lost_after_promotion"] \
        or result["merkle_equal"] is False
    return 1 if bad else 0


def cmd_promote(args: argparse.Namespace) -> int:
    rc = ReplicatedClusters.load(Path(args.dir), progress=_out)
    sec = rc.secondary
    act = rc.promote()
    _out(f"the {sec.name} site is the DR primary now ({act.addr}); the {rc.peer(sec).name} site is a stale "
         "primary: run `dr fail-back` to make it the DR secondary")
    _keys_note(rc)
    return 0


def cmd_fail_back(args: argparse.Namespace) -> int:
    rc = ReplicatedClusters.load(Path(args.dir), progress=_out)
    t = rc.fail_back()
    _out("fail-back done: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    _summary(rc)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if not ReplicatedClusters.exists(Path(args.dir)):
        if not any((Path(args.dir) / name / "state.json").exists() for name in SITES):
            raise ClusterError(f"no DR cluster pair in {args.dir}")
        _out(f"stopped {ReplicatedClusters.down_partial(Path(args.dir), args.purge)} nodes of a half-started pair")
        return 0
    rc = ReplicatedClusters.load(Path(args.dir))
    rc.down(purge=args.purge)
    _out(f"stopped {sum(len(s.cluster.nodes) for s in rc.sites.values())} nodes")
    if args.purge:
        _out(f"deleted {rc.workdir}")
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "drill": cmd_drill, "promote": cmd_promote,
            "fail-back": cmd_fail_back, "down": cmd_down}


def run(args: argparse.Namespace) -> int:
    """Run one ``dr`` subcommand (errors propagate to :func:`cluster.cli.main`)."""
    return COMMANDS[args.dr_cmd](args)
