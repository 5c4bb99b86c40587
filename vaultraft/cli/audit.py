"""``vault audit enable|disable|list`` over ``sys/audit``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vaultraft.cli.args import Flag, Kind, parse_kv_strings
from vaultraft.cli.base import EXIT_OK, EXIT_REMOTE, CommandError, Context, Registry, api_errors, begin
from vaultraft.cli.generic import sanitize_path
from vaultraft.cli.output import go_value, table_output
from vaultraft.cli.secrets import mount_table


def cmd_enable(ctx: Context, argv: Sequence[str]) -> int:
    """vault audit enable [-path -description -local] TYPE [k=v...]: enable an audit device."""
    inv = begin(ctx, argv, [Flag("path"), Flag("description"), Flag("local", Kind.BOOL)])
    if not inv.args:
        raise CommandError(
            "Error enabling audit device: audit type missing. Valid types include 'file', 'socket' and 'syslog'."
        )
    kind = inv.args[0].strip()
    path = sanitize_path(inv.flags.text("path") or kind)
    try:
        options = parse_kv_strings(inv.args[1:], ctx.stdin)
    except ValueError as err:
        raise CommandError(f"Failed to parse K=V data: {err}") from err
    body: dict[str, Any] = {
        "type": kind,
        "description": inv.flags.text("description"),
        "options": options,
        "local": inv.flags.on("local"),
    }
    with api_errors("Error enabling audit device"):
        inv.client.call("PUT", f"sys/audit/{path}", body=body)
    inv.ui.output(f"Success! Enabled the {kind} audit device at: {path}/")
    return EXIT_OK


def cmd_disable(ctx: Context, argv: Sequence[str]) -> int:
    """vault audit disable PATH: disable the audit device at PATH."""
    inv = begin(ctx, argv, [])
    inv.exactly(1)
    path = sanitize_path(inv.args[0])
    with api_errors("Error disabling audit device"):
        inv.client.call("DELETE", f"sys/audit/{path}")
    inv.ui.output(f"Success! Disabled audit device (if it was enabled) at: {path}/")
    return EXIT_OK


def audit_rows(devices: Mapping[str, Any], detailed: bool) -> list[str]:
    """The lines of Vault's ``audit list`` table."""
    rows = ["Path | Type | Description" + (" | Replication | Options" if detailed else "")]
    for key in sorted(devices):
        device = devices[key]
        cells = [str(device.get("path") or key), str(device.get("type", "")), str(device.get("description", ""))]
        if detailed:
            cells.append("local" if device.get("local") else "replicated")
            cells.append(go_value(device.get("options") or {}))
        rows.append(" | ".join(cells))
    return rows


def cmd_list(ctx: Context, argv: Sequence[str]) -> int:
    """vault audit list [-detailed]: the enabled audit devices (exit 2 when there are none)."""
    inv = begin(ctx, argv, [Flag("detailed", Kind.BOOL)])
    inv.at_most(0)
    with api_errors("Error listing audits"):
        devices = mount_table(inv.client.call("GET", "sys/audit"))
    if not inv.table:
        return inv.ui.data(devices)
    if not devices:
        inv.ui.output("No audit devices are enabled.")
        return EXIT_REMOTE
    inv.ui.output(table_output(audit_rows(devices, inv.flags.on("detailed"))))
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("audit", "enable"): (cmd_enable, "Enables an audit device"),
        ("audit", "disable"): (cmd_disable, "Disables an audit device"),
        ("audit", "list"): (cmd_list, "Lists enabled audit devices"),
    }
