"""``python -m cluster --dir .dr dr ...``: a DR primary + DR secondary pair, optionally a
performance secondary site and a fencing witness, and the DR drills.

    dr up [--size 1|3] [--base-port 8400] [--perf] [--witness [--failover-timeout 4]]
                                             start the sites, wire replication (idempotent)
    dr status [--json]                       roles, nodes, replication state and lag; perf site, witness
    dr drill [--mode kill|partition] [--duration S] [--writers N] [--json FILE] [--no-fail-back]
    dr drill --mode auto [--loss partition|kill] [--duration S] [--writers N] [--probes N] [--json FILE]
             [--fail-back]                   automatic promotion (needs --witness)
    dr promote                               promote the DR secondary (operation token from the primary's keys)
    dr fail-back                             demote the old primary and make it the new DR secondary
    dr down [--purge]                        stop everything (--purge: delete the dir, keys included)

The sites live in ``<dir>/primary``, ``<dir>/dr`` and ``<dir>/perf``; each has a
``replication.json`` with its role next to its ``state.json``; the witness, its bundles
and the fault proxies' daemon in ``<dir>/witness``. The unseal keys and root token that
operate the DR sites are in ``<dir>/primary/init.json`` (0600), the perf site's own root
token in ``<dir>/perf/root-token`` (0600); nothing secret is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cluster import drill_auto
from cluster.drill import MODES, run_drill, to_markdown
from cluster.local import ClusterError
from cluster.perf_site import PERF_PORT_OFFSET
from cluster.replication import DR_PORT_OFFSET, SITES, ReplicatedClusters
from cluster.sites import ReplicationSites
from cluster.witness import DEFAULT_FAILOVER_TIMEOUT, WITNESS_PORT_OFFSET

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
                         f"the dr site starts {DR_PORT_OFFSET} above, the perf site {PERF_PORT_OFFSET}, "
                         f"the witness and its proxies {WITNESS_PORT_OFFSET}")
    up.add_argument("--perf", action="store_true",
                    help="also a performance secondary site (<dir>/perf) of the primary site")
    up.add_argument("--witness", action="store_true",
                    help="also a fencing witness (<dir>/witness) and auto_promote on both DR sites, their links "
                         "through fault proxies (only when the pair is created)")
    up.add_argument("--failover-timeout", type=int, default=None, metavar="S",
                    help=f"with --witness: the primary's lease, seconds (default {DEFAULT_FAILOVER_TIMEOUT}, >= 3)")
    st = dsub.add_parser("status", help="roles, nodes, replication state and lag of both sites")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    drill = dsub.add_parser("drill", help="lose the primary under load, promote, measure RTO/RPO, fail back")
    drill.add_argument("--mode", choices=(*MODES, "auto"), default="kill",
                       help="kill: kill -9 every primary node; partition: cut them off (root, cgroup2, iptables); "
                            "auto: lose the primary (--loss) and let the DR site promote itself (needs --witness)")
    drill.add_argument("--loss", choices=drill_auto.LOSSES, default="partition",
                       help="auto mode: partition (cut the primary's links with the fault proxies) or kill (-9)")
    drill.add_argument("--duration", type=float, default=5.0, help="seconds of write load before the loss")
    drill.add_argument("--writers", type=int, default=4, help="concurrent writer threads")
    drill.add_argument("--probes", type=int, default=1, help="auto mode: threads writing to the DR site")
    drill.add_argument("--json", metavar="FILE", default=None, help="also write the full result (JSON) to FILE")
    drill.add_argument("--no-fail-back", action="store_true", help="stop after promotion and the RPO check")
    drill.add_argument("--fail-back", action="store_true",
                       help="auto mode: fail back after the drill (default: leave the old primary demoted)")
    dsub.add_parser("promote", help="promote the DR secondary (the old primary becomes a stale primary)")
    dsub.add_parser("fail-back", help="demote the stale primary and make it the DR secondary of the new primary")
    down = dsub.add_parser("down", help="stop every site, the witness and its proxies")
    down.add_argument("--purge", action="store_true", help="also delete the dir (data and keys)")
    for sp in [dr, *dsub.choices.values()]:  # the dir option is accepted after the subcommand too
        sp.add_argument("--dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _out(msg: str = "") -> None:
    print(msg, flush=True)


def _keys_note(rc: ReplicatedClusters) -> None:
    _out(f"unseal keys and root token for BOTH sites: {rc.keys_file} (mode 0600)")
    _out(f"  (the dr site's own {rc.sites['dr'].cluster.init_file.name} is meaningless after activation: "
         "it runs on the primary's keyring)")


def _summary(sites: ReplicationSites) -> None:
    rc = sites.rc
    st = sites.status()
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
    _perf_and_witness(st)
    _keys_note(rc)
    prim = next((s for s in st["sites"] if s["role"] == "primary"), None)
    if prim and prim["active"]:
        _out(f"  export VAULT_ADDR={prim['active']}")
        _out(f"  export VAULT_TOKEN=$(python3 -c 'import json; print(json.load(open(\"{rc.keys_file}\"))"
             "[\"root_token\"])')")


def _perf_and_witness(st: dict[str, Any]) -> None:
    p = st.get("perf")
    if p:
        sid = f" as {p['secondary_id']}" if p["secondary_id"] else ""
        of = f" of the {p['primary_site']} site" if p["primary_site"] else ""
        _out(f"perf site: {p['role']}{sid}{of}  state {p['state'] or '-'}  {p['connection'] or ''}".rstrip())
        for n in p["nodes"]:
            _out(f"  {n['name']}: {n['api_addr']}  pid {n['pid'] or '-'}  {n['role']}")
        if p["last_remote_wal"] is not None:
            lag = f"  (lag {p['lag_wal_entries']} WAL entries)" if p["lag_wal_entries"] is not None else ""
            _out(f"  last_remote_wal {p['last_remote_wal']}{lag}")
        if p["root_token_file"]:
            _out(f"  its own root token: {p['root_token_file']} (mode 0600; the primary's token does not work there)")
    w = st.get("witness")
    if w:
        state = f"pid {w['pid']}" if w["alive"] else "NOT RUNNING"
        quarantine = f", refuses promotions for {w['quarantine_left_s']}s more" if w["quarantine_left_s"] else ""
        _out(f"witness: {w['address']}  {state}  epoch {w['epoch'] or '-'}  failover_timeout "
             f"{w['failover_timeout_s']}s  max lease {w['max_lease_s']}s{quarantine}")
        for name, px in (w["proxies"] or {}).items():
            if isinstance(px, dict):
                _out(f"  proxy {name}: {px['address']} -> {px['upstream']}  {'CUT' if px['cut'] else 'forwarding'}")
        if not w["proxies"]:
            _out("  fault proxies: NOT RUNNING (run `dr up`)")


def cmd_up(args: argparse.Namespace) -> int:
    existing = ReplicatedClusters.exists(Path(args.dir))
    base = args.base_port if args.base_port is not None or existing else DEFAULT_BASE_PORT
    sites = ReplicationSites.open(Path(args.dir), args.size, base, perf=args.perf, witness=args.witness,
                                  failover_timeout=args.failover_timeout, progress=_out)
    extra = [x for x, on in (("a perf site", sites.perf is not None), ("a witness", sites.witness is not None)) if on]
    _out(f"{'restarting' if existing else 'starting'} a DR pair of {sites.rc.size}-node clusters"
         f"{' with ' + ' and '.join(extra) if extra else ''} in {sites.workdir}")
    sites.up()
    _summary(sites)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    sites = ReplicationSites.load(Path(args.dir))
    if args.json:
        _out(json.dumps(sites.status(), indent=2))
    else:
        _summary(sites)
    return 0


def _report(result: dict[str, Any], markdown: str, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
    _out()
    _out(markdown)
    _out(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    if path:
        _out(f"full result (with the timeline): {path}")


def cmd_drill(args: argparse.Namespace) -> int:
    sites = ReplicationSites.load(Path(args.dir), progress=_out)
    if args.mode == "auto":
        result = drill_auto.run_auto_drill(sites, loss=args.loss, writers=args.writers, probes=args.probes,
                                           duration=args.duration, progress=_out, fail_back=args.fail_back)
        _report(result, drill_auto.to_markdown(result), args.json)
        return 0 if result["passed"] else 1
    if sites.witness is not None:
        raise ClusterError("these sites promote themselves (auto_promote with a witness): a manual promotion is "
                           "refused while the primary's lease may run; use `dr drill --mode auto`")
    result = run_drill(sites.rc, mode=args.mode, writers=args.writers, duration=args.duration, progress=_out,
                       fail_back=not args.no_fail_back)
    _report(result, to_markdown(result), args.json)
    bad = result["missing_at_or_below_replicated_index"] or result["lost_after_promotion"] \
        or result["merkle_equal"] is False
    return 1 if bad else 0


def cmd_promote(args: argparse.Namespace) -> int:
    sites = ReplicationSites.load(Path(args.dir), progress=_out)
    rc = sites.rc
    sec = rc.secondary
    act = sites.promote()
    _out(f"the {sec.name} site is the DR primary now ({act.addr}); the {rc.peer(sec).name} site is a stale "
         "primary: run `dr fail-back` to make it the DR secondary")
    _keys_note(rc)
    return 0


def cmd_fail_back(args: argparse.Namespace) -> int:
    sites = ReplicationSites.load(Path(args.dir), progress=_out)
    t = sites.fail_back()
    _out("fail-back done: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    _summary(sites)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if not ReplicatedClusters.exists(d):
        if not any((d / name / "state.json").exists() for name in (*SITES, "perf")) \
                and not (d / "witness" / "witness.json").exists():
            raise ClusterError(f"no DR cluster pair in {args.dir}")
        _out(f"stopped {ReplicationSites.down_partial(d, args.purge)} nodes of a half-started setup")
        return 0
    sites = ReplicationSites.load(d)
    n = sites.down(purge=args.purge)
    _out(f"stopped {n} nodes" + (", the witness and its fault proxies" if sites.witness is not None else ""))
    if args.purge:
        _out(f"deleted {sites.workdir}")
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "drill": cmd_drill, "promote": cmd_promote,
            "fail-back": cmd_fail_back, "down": cmd_down}


def run(args: argparse.Namespace) -> int:
    """Run one ``dr`` subcommand (errors propagate to :func:`cluster.cli.main`)."""
    return COMMANDS[args.dr_cmd](args)
