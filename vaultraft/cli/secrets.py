"""``vault secrets enable|disable|list|tune`` over ``sys/mounts``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import EXIT_OK, Context, Invocation, Registry, api_errors, begin
from vaultraft.cli.generic import sanitize_path
from vaultraft.cli.output import go_value, table_output

_TTL_FLAGS = (
    Flag("default-lease-ttl", Kind.DURATION),
    Flag("max-lease-ttl", Kind.DURATION),
)


def mount_table(body: Any) -> dict[str, Any]:
    """The path → entry map from a sys/mounts (or sys/audit) response."""
    if not isinstance(body, dict):
        return {}
    data = body.get("data")
    source = data if isinstance(data, dict) else body
    return {k: v for k, v in source.items() if isinstance(v, dict)}


def _ttl_config(inv: Invocation) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for flag in ("default-lease-ttl", "max-lease-ttl"):
        seconds = inv.flags.seconds(flag)
        if seconds is not None:
            config[flag.replace("-", "_")] = f"{seconds}s"
    return config


def _options(inv: Invocation) -> dict[str, str]:
    options = inv.flags.pairs("options")
    version = inv.flags.number("version") or 0
    if version > 0:
        options["version"] = str(version)
    return options


def cmd_enable(ctx: Context, argv: Sequence[str]) -> int:
    """vault secrets enable [-path -version -description -local -seal-wrap -options k=v ...] TYPE."""
    inv = begin(
        ctx,
        argv,
        [
            Flag("path"),
            Flag("description"),
            *_TTL_FLAGS,
            Flag("force-no-cache", Kind.BOOL),
            Flag("local", Kind.BOOL),
            Flag("seal-wrap", Kind.BOOL),
            Flag("external-entropy-access", Kind.BOOL),
            Flag("options", Kind.MAP),
            Flag("version", Kind.INT, default=0),
            Flag("plugin-name"),
        ],
    )
    inv.exactly(1)
    engine = inv.args[0].strip()
    if engine == "plugin":
        engine = inv.flags.text("plugin-name")
    path = sanitize_path(inv.flags.text("path") or engine)
    config = _ttl_config(inv)
    if inv.flags.on("force-no-cache"):
        config["force_no_cache"] = True
    body: dict[str, Any] = {
        "type": engine,
        "description": inv.flags.text("description"),
        "config": config,
        "local": inv.flags.on("local"),
        "seal_wrap": inv.flags.on("seal-wrap"),
        "external_entropy_access": inv.flags.on("external-entropy-access"),
    }
    options = _options(inv)
    if options:
        body["options"] = options
    with api_errors("Error enabling"):
        inv.client.call("POST", f"sys/mounts/{path}", body=body)
    inv.ui.output(f"Success! Enabled the {engine} secrets engine at: {path}/")
    return EXIT_OK


def cmd_disable(ctx: Context, argv: Sequence[str]) -> int:
    """vault secrets disable PATH: unmount PATH (revoking its leases)."""
    inv = begin(ctx, argv, [])
    inv.exactly(1)
    path = sanitize_path(inv.args[0])
    with api_errors(f"Error disabling secrets engine at {path}/"):
        inv.client.call("DELETE", f"sys/mounts/{path}")
    inv.ui.output(f"Success! Disabled the secrets engine (if it existed) at: {path}/")
    return EXIT_OK


def _ttl_cell(mount_type: str, ttl: Any) -> str:
    if mount_type in ("system", "cubbyhole"):
        return ""
    return str(ttl) if ttl else "system"


def mounts_rows(mounts: Mapping[str, Any], detailed: bool) -> list[str]:
    """The lines of Vault's ``secrets list`` table (``-detailed`` adds config columns)."""
    if not detailed:
        rows = ["Path | Type | Accessor | Description"]
        for path in sorted(mounts):
            m = mounts[path]
            rows.append(f"{path} | {m.get('type', '')} | {m.get('accessor', '')} | {m.get('description', '')}")
        return rows
    rows = ["Path | Plugin | Accessor | Default TTL | Max TTL | Force No Cache | Replication | Seal Wrap | Options | Description | UUID"]
    for path in sorted(mounts):
        m = mounts[path]
        config = m.get("config") or {}
        kind = str(m.get("type", ""))
        plugin = (config.get("plugin_name") or kind) if kind == "plugin" else kind
        rows.append(
            " | ".join(
                [
                    path,
                    plugin,
                    str(m.get("accessor", "")),
                    _ttl_cell(kind, config.get("default_lease_ttl")),
                    _ttl_cell(kind, config.get("max_lease_ttl")),
                    go_value(bool(config.get("force_no_cache"))),
                    "local" if m.get("local") else "replicated",
                    go_value(bool(m.get("seal_wrap"))),
                    go_value(m.get("options") or {}),
                    str(m.get("description", "")),
                    str(m.get("uuid", "")),
                ]
            )
        )
    return rows


def cmd_list(ctx: Context, argv: Sequence[str]) -> int:
    """vault secrets list [-detailed]: the enabled secrets engines."""
    inv = begin(ctx, argv, [Flag("detailed", Kind.BOOL)])
    inv.at_most(0)
    with api_errors("Error listing secrets engines"):
        mounts = mount_table(inv.client.call("GET", "sys/mounts"))
    if not inv.table:
        return inv.ui.data(mounts)
    inv.ui.output(table_output(mounts_rows(mounts, inv.flags.on("detailed"))))
    return EXIT_OK


def cmd_tune(ctx: Context, argv: Sequence[str]) -> int:
    """vault secrets tune [-default-lease-ttl -max-lease-ttl -description -options k=v -version] PATH."""
    inv = begin(
        ctx,
        argv,
        [*_TTL_FLAGS, Flag("description"), Flag("options", Kind.MAP), Flag("version", Kind.INT, default=0), Flag("listing-visibility")],
    )
    inv.exactly(1)
    path = sanitize_path(inv.args[0])
    body: dict[str, Any] = _ttl_config(inv)
    if inv.flags.is_set("description"):
        body["description"] = inv.flags.text("description")
    if inv.flags.is_set("listing-visibility"):
        body["listing_visibility"] = inv.flags.text("listing-visibility")
    options = _options(inv)
    if options:
        body["options"] = options
    with api_errors(f"Error tuning secrets engine {path}/"):
        inv.client.call("POST", f"sys/mounts/{path}/tune", body=body)
    inv.ui.output(f"Success! Tuned the secrets engine at: {path}/")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("secrets", "enable"): (cmd_enable, "Enable a secrets engine"),
        ("secrets", "disable"): (cmd_disable, "Disable a secrets engine"),
        ("secrets", "list"): (cmd_list, "List enabled secrets engines"),
        ("secrets", "tune"): (cmd_tune, "Tune a secrets engine configuration"),
    }
