"""``vault operator init|unseal|seal`` and the seal-status table shared with ``status``
(``rotate``, ``key-status``, ``rekey`` and ``generate-root`` are in :mod:`operator_keys`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import (
    EXIT_LOCAL,
    EXIT_OK,
    EXIT_REMOTE,
    CommandError,
    Context,
    Invocation,
    Registry,
    api_errors,
    begin,
    read_secret_input,
)
from vaultraft.cli.client import APIError, ResponseError
from vaultraft.cli.output import go_value, table_output, wrap_at_length

# Field order of Vault's SealStatusResponse, then the leader fields the CLI adds.
_SEAL_FIELDS: tuple[tuple[str, Any], ...] = (
    ("type", ""),
    ("initialized", False),
    ("sealed", False),
    ("t", 0),
    ("n", 0),
    ("progress", 0),
    ("nonce", ""),
    ("version", ""),
    ("build_date", ""),
    ("migration", False),
    ("cluster_name", ""),
    ("cluster_id", ""),
    ("recovery_seal", False),
    ("storage_type", ""),
)
_LEADER_FIELDS = (
    ("is_self", "is_self"),
    ("active_time", "active_time"),
    ("leader_address", "leader_address"),
    ("leader_cluster_address", "leader_cluster_address"),
    ("performance_standby", "performance_standby"),
    ("performance_standby_last_remote_wal", "performance_standby_last_remote_wal"),
    ("last_wal", "last_wal"),
    ("raft_committed_index", "raft_committed_index"),
    ("raft_applied_index", "raft_applied_index"),
)
_ZERO_TIME = "0001-01-01T00:00:00Z"


def seal_status_document(status: Mapping[str, Any], leader: Mapping[str, Any]) -> dict[str, Any]:
    """Vault's SealStatusOutput: seal-status fields in order plus the non-empty leader fields."""
    doc: dict[str, Any] = {name: status.get(name, default) for name, default in _SEAL_FIELDS}
    for name, value in status.items():
        doc.setdefault(name, value)
    doc["ha_enabled"] = bool(leader.get("ha_enabled"))
    for name, key in _LEADER_FIELDS:
        value = leader.get(key)
        if value and value != _ZERO_TIME:
            doc[name] = value
    return doc


def seal_status_table(doc: Mapping[str, Any]) -> str:
    """Vault's TableFormatter.OutputSealStatusStruct rendered from a seal-status document."""
    b = go_value
    prefix = "Recovery " if doc.get("recovery_seal") else ""
    sealed = bool(doc.get("sealed"))
    out = [
        "Key | Value",
        f"{prefix}Seal Type | {doc.get('type', '')}",
        f"Initialized | {b(bool(doc.get('initialized')))}",
        f"Sealed | {b(sealed)}",
        f"Total {prefix}Shares | {doc.get('n', 0)}",
        f"Threshold | {doc.get('t', 0)}",
    ]
    if sealed:
        out.append(f"Unseal Progress | {doc.get('progress', 0)}/{doc.get('t', 0)}")
        out.append(f"Unseal Nonce | {doc.get('nonce', '')}")
    if doc.get("migration"):
        out.append("Seal Migration in Progress | true")
    out.append(f"Version | {doc.get('version', '')}")
    out.append(f"Build Date | {doc.get('build_date', '')}")
    out.append(f"Storage Type | {doc.get('storage_type', '')}")
    if doc.get("cluster_name") and doc.get("cluster_id"):
        out.append(f"Cluster Name | {doc['cluster_name']}")
        out.append(f"Cluster ID | {doc['cluster_id']}")
    ha = bool(doc.get("ha_enabled"))
    out.append(f"HA Enabled | {b(ha)}")
    if ha and not sealed:
        out.append(f"HA Cluster | {doc.get('leader_cluster_address', '')}")
        if doc.get("is_self"):
            out.append("HA Mode | active")
            if doc.get("active_time"):
                out.append(f"Active Since | {doc['active_time']}")
        else:
            out.append("HA Mode | standby")
            out.append(f"Active Node Address | {doc.get('leader_address') or '<none>'}")
    if doc.get("raft_committed_index"):
        out.append(f"Raft Committed Index | {doc['raft_committed_index']}")
    if doc.get("raft_applied_index"):
        out.append(f"Raft Applied Index | {doc['raft_applied_index']}")
    if doc.get("last_wal"):
        out.append(f"Last WAL | {doc['last_wal']}")
    return table_output(out)


def output_seal_status(inv: Invocation, status: Mapping[str, Any]) -> int:
    """Vault's OutputSealStatus: ask sys/leader, then print the combined status; 0 or 1."""
    try:
        leader = inv.client.call("GET", "sys/leader") or {}
    except ResponseError as err:
        if not any("Vault is sealed" in e for e in err.errors):
            inv.ui.error(f"Error checking leader status: {err}")
            return EXIT_LOCAL
        leader = {"ha_enabled": True}  # sealed HA node: the leader cannot be asked
    except APIError as err:
        inv.ui.error(f"Error checking leader status: {err}")
        return EXIT_LOCAL
    doc = seal_status_document(status, leader)
    if inv.table:
        inv.ui.output(seal_status_table(doc))
    else:
        inv.ui.data(doc, ordered=True)
    return EXIT_OK


def cmd_init(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator init [-key-shares=5 -key-threshold=3 -pgp-keys=f1,f2 -root-token-pgp-key=f -status]."""
    inv = begin(
        ctx,
        argv,
        [
            Flag("key-shares", Kind.INT, default=5, aliases=("n",)),
            Flag("key-threshold", Kind.INT, default=3, aliases=("t",)),
            Flag("recovery-shares", Kind.INT, default=5),
            Flag("recovery-threshold", Kind.INT, default=3),
            Flag("status", Kind.BOOL),
            Flag("pgp-keys", Kind.LIST),
            Flag("recovery-pgp-keys", Kind.LIST),
            Flag("root-token-pgp-key"),
        ],
    )
    inv.at_most(0)
    if inv.flags.on("status"):
        with api_errors("Error checking init status", EXIT_LOCAL):
            body = inv.client.call("GET", "sys/init") or {}
        initialized = bool(body.get("initialized"))
        if inv.table:
            inv.ui.output("Vault is initialized" if initialized else "Vault is not initialized")
        else:
            inv.ui.data({"Initialized": initialized})
        return EXIT_OK if initialized else EXIT_REMOTE
    # As Vault's CLI: with an auto-unseal seal the defaults are recovery shares (5/3) and
    # no key shares; with Shamir, key shares (5/3) and no recovery shares.
    with api_errors("Error checking seal status", EXIT_LOCAL):
        seal = inv.client.call("GET", "sys/seal-status") or {}
    auto = bool(seal.get("recovery_seal"))
    request: dict[str, Any] = {}
    if not auto or inv.flags.is_set("key-shares") or inv.flags.is_set("key-threshold"):
        request["secret_shares"] = inv.flags.number("key-shares") or 0
        request["secret_threshold"] = inv.flags.number("key-threshold") or 0
    for flag, key in (("recovery-shares", "recovery_shares"), ("recovery-threshold", "recovery_threshold")):
        if inv.flags.is_set(flag) or auto:
            request[key] = inv.flags.number(flag)
    from vaultraft.cli.operator_keys import pgp_key_list, read_pgp_key_file

    for flag, key in (("pgp-keys", "pgp_keys"), ("recovery-pgp-keys", "recovery_pgp_keys")):
        keys = pgp_key_list(inv, flag)
        if keys:
            request[key] = keys
    if inv.flags.text("root-token-pgp-key"):
        request["root_token_pgp_key"] = read_pgp_key_file(inv.flags.text("root-token-pgp-key"))
    shares = int(request.get("secret_shares") or 0)
    threshold = int(request.get("secret_threshold") or 0)
    with api_errors("Error initializing"):
        resp = inv.client.call("PUT", "sys/init", body=request) or {}
    keys_hex = list(resp.get("keys") or [])
    keys_b64 = list(resp.get("keys_base64") or [])
    rec_hex = list(resp.get("recovery_keys") or [])
    rec_b64 = list(resp.get("recovery_keys_base64") or [])
    root = str(resp.get("root_token", ""))
    if not inv.table:
        return inv.ui.data(
            {
                "unseal_keys_b64": keys_b64,
                "unseal_keys_hex": keys_hex,
                "unseal_shares": shares if keys_hex else 1,
                "unseal_threshold": threshold if keys_hex else 1,
                "recovery_keys_b64": rec_b64,
                "recovery_keys_hex": rec_hex,
                "recovery_keys_shares": request.get("recovery_shares", 0),
                "recovery_keys_threshold": request.get("recovery_threshold", 0),
                "root_token": root,
            },
            ordered=True,
        )
    out = inv.ui.output
    shown = keys_b64 if len(keys_b64) == len(keys_hex) else keys_hex
    for i, key in enumerate(shown, 1):
        out(f"Unseal Key {i}: {key}")
    shown_rec = rec_b64 if len(rec_b64) == len(rec_hex) else rec_hex
    for i, key in enumerate(shown_rec, 1):
        out(f"Recovery Key {i}: {key}")
    out("")
    out(f"Initial Root Token: {root}")
    if keys_hex:
        out("")
        out(wrap_at_length(
            f"Vault initialized with {shares} key shares and a key threshold of {threshold}. Please "
            "securely distribute the key shares printed above. When the Vault is re-sealed, "
            f"restarted, or stopped, you must supply at least {threshold} of these keys to unseal it "
            "before it can start servicing requests."
        ))
        out("")
        out(wrap_at_length(
            f"Vault does not store the generated root key. Without at least {threshold} keys to "
            "reconstruct the root key, Vault will remain permanently sealed!"
        ))
        out("")
        out(wrap_at_length(
            "It is possible to generate new unseal keys, provided you have a quorum of existing "
            'unseal keys shares. See "vault operator rekey" for more information.'
        ))
    else:
        out("")
        out("Success! Vault is initialized")
    if rec_hex:
        out("")
        out(wrap_at_length(
            f"Recovery key initialized with {request.get('recovery_shares', 0)} key shares and a key "
            f"threshold of {request.get('recovery_threshold', 0)}. Please securely distribute the key "
            "shares printed above."
        ))
    return EXIT_OK


def cmd_unseal(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator unseal [-reset] [KEY]: submit one key share (prompted or from stdin)."""
    inv = begin(ctx, argv, [Flag("reset", Kind.BOOL), Flag("migrate", Kind.BOOL)])
    inv.at_most(1)
    if inv.flags.on("reset"):
        with api_errors("Error resetting unseal process"):
            status = inv.client.call("PUT", "sys/unseal", body={"reset": True}) or {}
        return output_seal_status(inv, status)
    key = inv.args[0].strip() if inv.args else ""
    if not key:
        key = read_secret_input(ctx, "Unseal Key (will be hidden): ")
    if not key:
        raise CommandError("An unseal key is required: give it as the argument or on stdin")
    body: dict[str, Any] = {"key": key}
    if inv.flags.on("migrate"):
        body["migrate"] = True
    with api_errors("Error unsealing"):
        status = inv.client.call("PUT", "sys/unseal", body=body) or {}
    return output_seal_status(inv, status)


def cmd_seal(ctx: Context, argv: Sequence[str]) -> int:
    """vault operator seal: seal the server this client talks to."""
    inv = begin(ctx, argv, [])
    inv.at_most(0)
    with api_errors("Error sealing"):
        inv.client.call("PUT", "sys/seal")
    inv.ui.output("Success! Vault is sealed.")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher: path → (handler, synopsis), including
    the key ceremonies of :mod:`vaultraft.cli.operator_keys`."""
    from vaultraft.cli import operator_keys

    return {
        ("operator", "init"): (cmd_init, "Initializes a server"),
        ("operator", "unseal"): (cmd_unseal, "Unseals the Vault server"),
        ("operator", "seal"): (cmd_seal, "Seals the Vault server"),
        **operator_keys.register(),
    }

