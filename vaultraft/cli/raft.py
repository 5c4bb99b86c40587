"""``vault operator raft ...``, ``operator step-down`` and ``operator members``.

Output follows Vault's commands (``command/operator_raft_*.go``, ``operator_step_down.go``,
``operator_members.go``): the list-peers and members tables, autopilot's "pretty" text,
Vault's error prefixes and exit codes. Snapshots are streamed to and from disk (the
file is never held in memory whole), with redirects followed as the JSON client does.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.parse
from typing import Any, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import (
    EXIT_OK,
    EXIT_REMOTE,
    CommandError,
    Context,
    Registry,
    api_errors,
    begin,
)
from vaultraft.cli.client import (
    APIError,
    Client,
    ClientConfig,
    ResponseError,
    TransportError,
)
from vaultraft.cli.output import go_json, go_value, table_output

CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 307, 308})
_MAX_REDIRECTS = 5
_FORMATS = ("pretty", "table", "json")


# ---- streaming transfers ---------------------------------------------------------------------


def _tls(config: ClientConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=config.ca_cert or None, capath=config.ca_path or None)
    if config.client_cert:
        ctx.load_cert_chain(config.client_cert, config.client_key or None)
    if config.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _response_error(method: str, url: str, status: int, raw: bytes) -> ResponseError:
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return ResponseError(method, url, status, [text], raw=True)
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(body, dict):
        return ResponseError(method, url, status, [text], raw=True)
    return ResponseError(method, url, status, [str(e) for e in errors] if isinstance(errors, list) else [])


def stream(client: Client, method: str, path: str, *, upload: str | None = None, download: str | None = None) -> None:
    """Send ``upload`` (a file) as the body and/or write the response body to ``download``
    (created 0600 only once the server answered 2xx), following redirects with the same
    method and body. Raises APIError (TransportError, ResponseError) like :class:`Client`."""
    config = client.config
    url = client.url(path)
    headers = {"X-Vault-Request": "true"}
    if config.token:
        headers["X-Vault-Token"] = config.token
    if upload is not None:
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(os.path.getsize(upload))
    tls: ssl.SSLContext | None = None
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            tls = tls or _tls(config)
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=config.timeout,
                                               context=tls)
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=config.timeout)
        else:
            raise TransportError(f'{method.title()} "{url}": unsupported protocol scheme "{parts.scheme}"')
        try:
            try:
                if upload is not None:
                    with open(upload, "rb") as body:
                        conn.request(method, target, body=body, headers=headers)
                        resp = conn.getresponse()
                else:
                    conn.request(method, target, headers=headers)
                    resp = conn.getresponse()
                location = resp.getheader("Location")
                if resp.status in _REDIRECTS and location and config.follow_redirects:
                    resp.read()
                    url = urllib.parse.urljoin(url, location)
                    continue
                if resp.status >= 400:
                    raise _response_error(method, url, resp.status, resp.read())
                if download is not None:
                    _save(resp, download)
                else:
                    resp.read()
                return
            except ConnectionRefusedError:
                reason = f"dial tcp {parts.hostname}:{parts.port}: connect: connection refused"
            except ssl.SSLError as exc:
                reason = f"tls: {exc.reason or exc}"
            except TimeoutError:
                reason = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, OSError) and exc.filename is not None:
                    raise  # a local file, not the connection
                reason = str(exc) or type(exc).__name__
            raise TransportError(f'{method.title()} "{url}": {reason}')
        finally:
            conn.close()
    raise TransportError(f'{method.title()} "{url}": stopped after {_MAX_REDIRECTS} redirects')


def _save(resp: http.client.HTTPResponse, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := resp.read(CHUNK):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


def _os_error(path: str, err: OSError) -> str:
    """Go's ``*PathError`` text: ``open raft.snap: no such file or directory``."""
    reason = (err.strerror or str(err)).strip()
    return f"open {path}: {reason[:1].lower()}{reason[1:]}"


# ---- operator raft -------------------------------------------------------------------------


def cmd_join(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft join [-non-voter] [-retry] [LEADER_API_ADDR]: join this node to a Raft cluster."""
    inv = begin(ctx, argv, [
        Flag("non-voter", Kind.BOOL), Flag("retry", Kind.BOOL), Flag("leader-ca-cert"),
        Flag("leader-client-cert"), Flag("leader-client-key"),
    ])
    if len(inv.args) > 1:
        raise CommandError(f"Too many arguments (expected 0-1, got {len(inv.args)})")
    body: dict[str, Any] = {"leader_api_addr": inv.args[0].strip() if inv.args else "",
                            "retry": inv.flags.on("retry"), "non_voter": inv.flags.on("non-voter")}
    for flag in ("leader-ca-cert", "leader-client-cert", "leader-client-key"):
        if inv.flags.text(flag):
            body[flag.replace("-", "_")] = inv.flags.text(flag)
    with api_errors("Error joining the node to the Raft cluster"):
        resp = inv.client.call("POST", "sys/storage/raft/join", body=body) or {}
    joined = bool(resp.get("joined"))
    if not inv.table:
        return inv.ui.data({"joined": joined})
    inv.ui.output(table_output(["Key | Value", f"Joined | {go_value(joined)}"]))
    return EXIT_OK


def cmd_list_peers(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft list-peers: the Raft peer set (Node, Address, State, Voter)."""
    inv = begin(ctx, argv, [Flag("dr-token")])
    with api_errors("Error reading the raft cluster configuration"):
        secret = inv.client.read("sys/storage/raft/configuration")
    if secret is None:
        raise CommandError("No raft cluster configuration found", EXIT_REMOTE)
    if not inv.table:
        return inv.ui.secret(secret)
    servers = ((secret.data or {}).get("config") or {}).get("servers") or []
    rows = ["Node | Address | State | Voter"]
    for s in servers:
        state = "leader" if s.get("leader") else "follower"
        rows.append(f"{s.get('node_id', '')} | {s.get('address', '')} | {state} | {go_value(bool(s.get('voter')))}")
    inv.ui.output(table_output(rows))
    return EXIT_OK


def cmd_remove_peer(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft remove-peer SERVER_ID: remove a node from the Raft cluster."""
    inv = begin(ctx, argv, [Flag("dr-token")])
    if len(inv.args) != 1:
        raise CommandError(f"Incorrect arguments (expected 1, got {len(inv.args)})")
    server_id = inv.args[0].strip()
    if not server_id:
        raise CommandError("Server id is required")
    with api_errors("Error removing the peer from raft cluster"):
        inv.client.write("sys/storage/raft/remove-peer", {"server_id": server_id})
    inv.ui.output("Peer removed successfully!")
    return EXIT_OK


def cmd_snapshot_save(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft snapshot save FILE: save a snapshot of the Raft cluster to FILE."""
    inv = begin(ctx, argv, [])
    if len(inv.args) != 1:
        raise CommandError(f"Incorrect arguments (expected 1, got {len(inv.args)})")
    path = inv.args[0].strip()
    if not path:
        raise CommandError("Output file name is required")
    try:
        stream(inv.client, "GET", "sys/storage/raft/snapshot", download=path)
    except APIError as err:
        raise CommandError(f"Error taking the snapshot: {err}", EXIT_REMOTE) from err
    except OSError as err:
        raise CommandError(f"Error taking the snapshot: {_os_error(path, err)}", EXIT_REMOTE) from err
    return EXIT_OK


def cmd_snapshot_restore(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft snapshot restore [-force] FILE: install a snapshot on the cluster."""
    inv = begin(ctx, argv, [Flag("force", Kind.BOOL)])
    if len(inv.args) != 1:
        raise CommandError(f"Incorrect arguments (expected 1, got {len(inv.args)})")
    path = inv.args[0].strip()
    if not path:
        raise CommandError("Snapshot file name is required")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:  # Vault's wording, "policy" included
        raise CommandError(f"Error opening policy file: {_os_error(path, err)}", EXIT_REMOTE) from err
    endpoint = "sys/storage/raft/snapshot-force" if inv.flags.on("force") else "sys/storage/raft/snapshot"
    try:
        stream(inv.client, "POST", endpoint, upload=path)
    except APIError as err:
        raise CommandError(f"Error installing the snapshot: {err}", EXIT_REMOTE) from err
    return EXIT_OK


def autopilot_pretty(state: dict[str, Any]) -> str:
    """Vault's PrettyFormatter.OutputAutopilotState text (ends with a newline)."""
    out = [
        f"Healthy:                      {go_value(bool(state.get('healthy')))}",
        f"Failure Tolerance:            {int(state.get('failure_tolerance') or 0)}",
        f"Leader:                       {state.get('leader') or ''}",
        "Voters:",
        *(f"   {v}" for v in state.get("voters") or []),
    ]
    if state.get("non_voters"):
        out += ["Non Voters:", *(f"   {v}" for v in state["non_voters"])]
    out.append("Servers:")
    servers = state.get("servers") or {}
    for sid in sorted(servers):
        s = servers[sid] or {}
        out += [
            f"   {s.get('id', '')}",
            f"      Name:            {s.get('name', '')}",
            f"      Address:         {s.get('address', '')}",
            f"      Status:          {s.get('status', '')}",
            f"      Node Status:     {s.get('node_status', '')}",
            f"      Healthy:         {go_value(bool(s.get('healthy')))}",
            f"      Last Contact:    {s.get('last_contact') or ''}",
            f"      Last Term:       {int(s.get('last_term') or 0)}",
            f"      Last Index:      {int(s.get('last_index') or 0)}",
        ]
        meta = s.get("meta") or {}
        if meta:
            out.append("      Meta")
            out += [f"         {json.dumps(str(k))}: {json.dumps(str(meta[k]))}" for k in sorted(meta)]
    return "\n".join(out) + "\n"


def cmd_autopilot_state(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator raft autopilot state: the cluster as autopilot sees it (format "pretty" by default)."""
    inv = begin(ctx, argv, [Flag("format", env="VAULT_FORMAT", default="pretty"), Flag("dr-token")], output=False)
    fmt = inv.flags.text("format").lower() or "pretty"
    if fmt not in _FORMATS:
        raise CommandError(f"Invalid output format: {fmt}")
    if inv.args:
        raise CommandError(f"Incorrect arguments (expected 0, got {len(inv.args)})")
    with api_errors("Error checking autopilot state"):
        secret = inv.client.read("sys/storage/raft/autopilot/state")
    if secret is None or secret.data is None:
        return EXIT_OK
    if fmt == "json":
        inv.ui.output(go_json(secret.data))
    else:
        inv.ui.output(autopilot_pretty(secret.data))
    return EXIT_OK


# ---- operator step-down / members ------------------------------------------------------------


def cmd_step_down(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator step-down: force the active node to give up active duty."""
    inv = begin(ctx, argv, [], output=False)
    if inv.args:
        raise CommandError(f"Too many arguments (expected 0, got {len(inv.args)})")
    with api_errors("Error stepping down"):
        inv.client.call("PUT", "sys/step-down")
    inv.ui.output(f"Success! Stepped down: {inv.client.config.address}")
    return EXIT_OK


_HA_FIELDS = ("hostname", "api_address", "cluster_address", "active_node", "last_echo", "version",
              "upgrade_version", "redundancy_zone")


def _ha_node(node: dict[str, Any]) -> dict[str, Any]:
    """api.HANode's JSON: its fields in struct order, the omitempty ones dropped when empty."""
    out = {k: node.get(k, False if k == "active_node" else None if k == "last_echo" else "") for k in _HA_FIELDS}
    for k in ("upgrade_version", "redundancy_zone"):
        if not out[k]:
            del out[k]
    return out


def members_table(nodes: Sequence[dict[str, Any]]) -> str:
    """Vault's ``operator members`` table."""
    rows = [("Host Name | API Address | Cluster Address | Active Node | Version | Upgrade Version | "
             "Redundancy Zone | Last Echo")]
    for n in nodes:
        cols = [str(n.get("hostname") or ""), str(n.get("api_address") or ""), str(n.get("cluster_address") or ""),
                go_value(bool(n.get("active_node"))), str(n.get("version") or ""), str(n.get("upgrade_version") or ""),
                str(n.get("redundancy_zone") or ""), str(n.get("last_echo") or "")]
        rows.append(" | ".join(cols))
    return table_output(rows)


def cmd_members(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator members: the nodes of the HA cluster (sys/ha-status)."""
    inv = begin(ctx, argv, [])
    with api_errors(None):
        secret = inv.client.read("sys/ha-status")
    nodes = list(((secret.data if secret is not None else None) or {}).get("nodes") or [])
    if inv.table:
        inv.ui.output(members_table(nodes))
        return EXIT_OK
    text = json.dumps({"nodes": [_ha_node(n) for n in nodes]}, indent=2, ensure_ascii=False)
    inv.ui.output(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher: path → (handler, synopsis)."""
    return {
        ("operator", "raft", "join"): (cmd_join, "Joins a node to the Raft cluster"),
        ("operator", "raft", "list-peers"): (cmd_list_peers, "Returns the Raft peer set"),
        ("operator", "raft", "remove-peer"): (cmd_remove_peer, "Removes a node from the Raft cluster"),
        ("operator", "raft", "snapshot", "save"): (
            cmd_snapshot_save, "Saves a snapshot of the current state of the Raft cluster into a file"),
        ("operator", "raft", "snapshot", "restore"): (
            cmd_snapshot_restore, "Installs the provided snapshot, returning the cluster to the state defined in it"),
        ("operator", "raft", "autopilot", "state"): (
            cmd_autopilot_state, "Displays the state of the raft cluster under integrated storage as seen by autopilot"),
        ("operator", "step-down"): (cmd_step_down, "Forces Vault to resign active duty"),
        ("operator", "members"): (cmd_members, "Returns the list of nodes in the cluster"),
    }
