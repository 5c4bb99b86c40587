"""``vault kv ...``: KV v1/v2 commands that find the engine version by a preflight request.

The preflight asks ``sys/internal/ui/mounts/<path>`` (as Vault's CLI does) for the mount
and its ``options.version``; when that endpoint is missing (404/405) it falls back to
``sys/mounts`` and the longest mount prefix. KV v2 paths get ``data/``, ``metadata/``,
``delete/``... inserted after the mount, exactly as ``addPrefixToKVPath`` does.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from vaultraft.cli.args import Flag, Kind
from vaultraft.cli.base import EXIT_OK, EXIT_REMOTE, CommandError, Context, Invocation, Registry, api_errors, begin
from vaultraft.cli.client import APIError, Client, ResponseError, Secret, parse_secret
from vaultraft.cli.generic import kv_data, output_listing, sanitize_path
from vaultraft.cli.secrets import mount_table
from vaultraft.cli.output import header_for_map, pad_equal_signs, warnings_text

MOUNT_FLAG = Flag("mount", usage="Where the KV engine is mounted; the argument is then the secret's path.")
VERSIONS_FLAG = Flag("versions", Kind.LIST, usage="Comma-separated versions (repeatable).")
MERGE_PATCH = "application/merge-patch+json"


def go_join(*parts: str) -> str:
    """Go's path.Join: join the non-empty parts with "/" and clean the result."""
    joined = "/".join(p for p in parts if p)
    if not joined:
        return ""
    cleaned = posixpath.normpath(joined)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


def add_prefix_to_kv_path(path: str, mount: str, api_prefix: str) -> str:
    """Vault's addPrefixToKVPath: ``secret/foo`` on mount ``secret/`` → ``secret/data/foo``."""
    if path in (mount, mount.rstrip("/")):
        return go_join(mount, api_prefix)
    rest = path.removeprefix(mount)
    while rest == path:
        # The mount may carry namespace segments the path does not: drop them one by one.
        head, sep, tail = mount.partition("/")
        if not sep or not tail:
            break
        mount = tail.rstrip("/")
        rest = rest.removeprefix(mount)
    return go_join(mount, api_prefix, rest)


def _version_of(options: Any) -> int:
    version = options.get("version") if isinstance(options, dict) else None
    return 2 if str(version or "") == "2" else 1


def mount_from_table(mounts: Mapping[str, Any], path: str) -> tuple[str, int]:
    """The longest mount in a ``sys/mounts`` table containing ``path``, and its KV version."""
    target = path.strip("/") + "/"
    best = ""
    for name, entry in mounts.items():
        if isinstance(entry, dict) and target.startswith(name) and len(name) > len(best):
            best = name
    if not best:
        return "", 1
    return best, _version_of(mounts[best].get("options"))


def kv_preflight(client: Client, path: str) -> tuple[str, int]:
    """(mount path, KV version) for ``path``; APIError when the server refuses to say."""
    try:
        body = client.call("GET", f"sys/internal/ui/mounts/{path}") or {}
    except ResponseError as err:
        if err.status not in (404, 405):
            raise
        return mount_from_table(mount_table(client.call("GET", "sys/mounts")), path)
    data = body.get("data") or {}
    return str(data.get("path") or ""), _version_of(data.get("options"))


@dataclass(frozen=True)
class KVPath:
    """A KV secret's location once the mount and engine version are known."""

    mount: str
    v2: bool
    partial: str
    mount_flag: bool

    def full(self, api_prefix: str) -> str:
        """The API path: with ``api_prefix`` after the mount on v2, the plain path on v1."""
        if self.v2:
            return add_prefix_to_kv_path(self.partial, self.mount, api_prefix)
        return go_join(self.mount, self.partial) if self.mount_flag else self.partial


def resolve(inv: Invocation, raw: str) -> KVPath:
    """Run the preflight for ``raw`` (or for ``-mount``) and build its KVPath."""
    mount_flag = inv.flags.text("mount")
    partial = raw.removeprefix("/")
    with api_errors(None):
        mount, version = kv_preflight(inv.client, sanitize_path(mount_flag) if mount_flag else partial)
    v2 = version == 2
    if mount_flag and v2:
        partial = go_join(mount, partial)
    return KVPath(mount=mount, v2=v2, partial=partial, mount_flag=bool(mount_flag))


def output_path(inv: Invocation, path: str, title: str) -> None:
    """Vault's outputPath: a ``== title ==`` banner, the path and a blank line."""
    inv.ui.output(pad_equal_signs(title, len(path)))
    inv.ui.output(path)
    inv.ui.output("")


def _versions(inv: Invocation) -> list[Any]:
    return [int(v) if v.isdigit() else v for v in inv.flags.items("versions")]


def _written(inv: Invocation, secret: Secret | None, path: str) -> int:
    if secret is None:
        if inv.table:
            inv.ui.output(f"Success! Data written to: {path}")
        return EXIT_OK
    return inv.ui.secret(secret)


def _show_write_metadata(inv: Invocation, secret: Secret | None, path: str) -> int:
    """What ``kv put``/``kv patch`` print: the path and the new version's metadata."""
    if secret is None:
        return _written(inv, secret, path)
    if inv.flags.text("field"):
        return inv.ui.field(secret, inv.flags.text("field"))
    if not inv.table:
        return inv.ui.secret(secret)
    output_path(inv, path, "Secret Path")
    inv.ui.output(header_for_map("Metadata", secret.data or {}))
    return inv.ui.data(secret.data or {})


def _data_args(inv: Invocation, *, allow_empty: bool = False) -> dict[str, Any]:
    if not inv.args:
        raise CommandError("Not enough arguments (expected >1, got 0)")
    if len(inv.args) == 1 and not allow_empty:
        raise CommandError("Must supply data")
    return kv_data(inv, inv.args[1:])


def cmd_put(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv put [-cas=N] [-mount=M] KEY k=v...: write a new version."""
    inv = begin(ctx, argv, [MOUNT_FLAG, Flag("cas", Kind.INT, default=-1)])
    data = _data_args(inv)
    target = resolve(inv, inv.args[0])
    body: dict[str, Any] = data
    if target.v2:
        cas = inv.flags.number("cas")
        body = {"data": data, "options": {"cas": cas} if cas is not None and cas > -1 else {}}
    path = target.full("data")
    with api_errors(f"Error writing data to {path}"):
        secret = inv.client.write(path, body)
    return _show_write_metadata(inv, secret, path)


def _patch_read_then_write(inv: Invocation, path: str, data: dict[str, Any]) -> Secret | None:
    """Vault's readThenWrite: read the latest version, merge locally, write it back with cas."""
    with api_errors(f"Error doing pre-read at {path}"):
        current = inv.client.read(path)
    if current is None or current.data is None:
        raise CommandError(f"No value found at {path}", EXIT_REMOTE)
    meta = current.data.get("metadata")
    if not isinstance(meta, dict):
        raise CommandError(f"No metadata found at {path}; patch only works on existing data", EXIT_REMOTE)
    existing = current.data.get("data")
    if not isinstance(existing, dict):
        raise CommandError(f"No data found at {path}; patch only works on existing data", EXIT_REMOTE)
    merged = dict(existing)
    for key, value in data.items():
        if value is None:  # -remove-data: drop the key rather than store a null
            merged.pop(key, None)
        else:
            merged[key] = value
    with api_errors(f"Error writing data to {path}"):
        return inv.client.write(path, {"data": merged, "options": {"cas": meta.get("version")}})


def _patch_merge(inv: Invocation, path: str, data: dict[str, Any], fallback: bool) -> Secret | None:
    """Vault's mergePatch: HTTP PATCH with a JSON merge patch, falling back to read-then-write
    on 405 (no PATCH on the server) or 403 (no "patch" capability) unless -method=patch."""
    cas = inv.flags.number("cas") or 0
    body = {"data": data, "options": {"cas": cas} if cas > 0 else {}}
    try:
        decoded = inv.client.call("PATCH", path, body=body, content_type=MERGE_PATCH)
    except ResponseError as err:
        if fallback and err.status == 405:
            return _patch_read_then_write(inv, path, data)
        if fallback and err.status == 403:
            inv.ui.warn(
                f'Data was written to {path} but we recommend that you add the "patch" capability '
                "to your ACL policy in order to use HTTP PATCH in the future."
            )
            return _patch_read_then_write(inv, path, data)
        raise CommandError(f"Error writing data to {path}: {err}", EXIT_REMOTE) from err
    except APIError as err:
        raise CommandError(f"Error writing data to {path}: {err}", EXIT_REMOTE) from err
    return parse_secret(decoded)


def cmd_patch(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv patch [-cas=N] [-method=patch|rw] [-remove-data=k] KEY k=v...: merge into the latest version."""
    inv = begin(ctx, argv, [MOUNT_FLAG, Flag("cas", Kind.INT, default=0), Flag("method"), Flag("remove-data", Kind.LIST)])
    removed = inv.flags.items("remove-data")
    data = _data_args(inv, allow_empty=bool(removed))
    data.update({key: None for key in removed})
    target = resolve(inv, inv.args[0])
    if not target.v2:
        raise CommandError("K/V engine mount must be version 2 for patch support", EXIT_REMOTE)
    path = target.full("data")
    method = inv.flags.text("method")
    if method == "rw":
        secret = _patch_read_then_write(inv, path, data)
    elif method in ("", "patch"):
        secret = _patch_merge(inv, path, data, fallback=method == "")
    else:
        raise CommandError(f"Unsupported method provided to -method flag: {method}", EXIT_REMOTE)
    return _show_write_metadata(inv, secret, path)


def cmd_get(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv get [-version=N] [-mount=M] KEY: print a secret (path, metadata and data on v2)."""
    inv = begin(ctx, argv, [MOUNT_FLAG, Flag("version", Kind.INT, default=0)])
    inv.exactly(1)
    target = resolve(inv, inv.args[0])
    path = target.full("data")
    version = inv.flags.number("version") or 0
    params = {"version": str(version)} if target.v2 and version > 0 else None
    with api_errors(f"Error reading {path}"):
        secret = inv.client.read(path, params)
    if secret is None:
        raise CommandError(f"No value found at {path}", EXIT_REMOTE)
    data = secret.data or {}
    field = inv.flags.text("field")
    if field:
        if not target.v2:
            return inv.ui.field(secret, field)
        inner = data.get("data")
        if not isinstance(inner, dict):
            raise CommandError(f"No data found at {path}", EXIT_REMOTE)
        if field == "data" and "data" not in inner:
            return inv.ui.field(secret, field)
        return inv.ui.field(inner, field)
    if not inv.table:
        return inv.ui.secret(secret)
    if secret.warnings:
        inv.ui.warn(warnings_text(secret))
    if target.v2:
        output_path(inv, path, "Secret Path")
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        inv.ui.output(header_for_map("Metadata", metadata))
        inv.ui.data(metadata)
        inv.ui.output("")
    shown = data.get("data") if target.v2 else data
    if isinstance(shown, dict):
        inv.ui.output(header_for_map("Data", shown))
        inv.ui.data(shown)
    return EXIT_OK


def cmd_list(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv list [-mount=M] [PATH]: the keys under PATH (metadata/ on v2)."""
    inv = begin(ctx, argv, [MOUNT_FLAG])
    inv.at_most(1)
    if not inv.args and not inv.flags.text("mount"):
        raise CommandError("Not enough arguments (expected 1, got 0)")
    target = resolve(inv, sanitize_path(inv.args[0]) if inv.args else "")
    path = target.full("metadata")
    with api_errors(f"Error listing {path}"):
        secret = inv.client.list(path)
    return output_listing(inv, secret, path)


def cmd_delete(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv delete [-versions=1,2] [-mount=M] KEY: soft-delete the latest or given versions."""
    inv = begin(ctx, argv, [MOUNT_FLAG, VERSIONS_FLAG])
    inv.exactly(1)
    target = resolve(inv, inv.args[0])
    versions = _versions(inv)
    path = target.full("data")  # what Vault reports, even when -versions posts to delete/
    with api_errors(f"Error deleting {path}"):
        if target.v2 and versions:
            secret = inv.client.write(target.full("delete"), {"versions": versions})
        else:
            secret = inv.client.delete(path)
    if secret is not None and (secret.data or secret.warnings):
        return inv.ui.secret(secret)
    if inv.table:
        inv.ui.output(f"Success! Data deleted (if it existed) at: {path}")
    return EXIT_OK


def _version_command(ctx: Context, argv: Sequence[str], verb: str) -> int:
    inv = begin(ctx, argv, [MOUNT_FLAG, VERSIONS_FLAG])
    inv.exactly(1)
    versions = _versions(inv)
    if not versions:
        raise CommandError(f'No versions provided, use the "-versions" flag to specify the version to {verb}.')
    target = resolve(inv, inv.args[0])
    if not target.v2:
        raise CommandError(f"{verb.capitalize()} not supported on KV Version 1")
    path = target.full(verb)
    with api_errors(f"Error writing data to {path}"):
        secret = inv.client.write(path, {"versions": versions})
    return _written(inv, secret, path)


def cmd_undelete(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv undelete -versions=N KEY: restore soft-deleted versions."""
    return _version_command(ctx, argv, "undelete")


def cmd_destroy(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv destroy -versions=N KEY: permanently remove versions' data."""
    return _version_command(ctx, argv, "destroy")


def _metadata_target(inv: Invocation) -> tuple[KVPath, str]:
    inv.exactly(1)
    target = resolve(inv, inv.args[0])
    if not target.v2:
        raise CommandError("Metadata not supported on KV Version 1")
    return target, target.full("metadata")


def cmd_metadata_get(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv metadata get KEY: the key's metadata and each version's state."""
    inv = begin(ctx, argv, [MOUNT_FLAG])
    _, path = _metadata_target(inv)
    with api_errors(f"Error reading {path}"):
        secret = inv.client.read(path)
    if secret is None:
        raise CommandError(f"No value found at {path}", EXIT_REMOTE)
    if inv.flags.text("field"):
        return inv.ui.field(secret, inv.flags.text("field"))
    if not inv.table:
        return inv.ui.secret(secret)
    data = dict(secret.data or {})
    versions = data.pop("versions", None)
    if not isinstance(versions, dict):
        inv.ui.error(f"No value found at {path}")
        inv.ui.secret(secret)
        return EXIT_REMOTE
    output_path(inv, path, "Metadata Path")
    inv.ui.output(header_for_map("Metadata", data))
    inv.ui.secret(dataclasses.replace(secret, data=data))
    for number in sorted(versions, key=lambda v: int(v) if str(v).isdigit() else 0):
        entry = versions[number]
        inv.ui.output("\n" + header_for_map(f"Version {number}", entry if isinstance(entry, dict) else {}))
        inv.ui.data(entry)
    return EXIT_OK


def cmd_metadata_put(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv metadata put [-max-versions -cas-required -delete-version-after -custom-metadata k=v] KEY."""
    inv = begin(
        ctx,
        argv,
        [
            MOUNT_FLAG,
            Flag("max-versions", Kind.INT, default=-1),
            Flag("cas-required", Kind.BOOL),
            Flag("delete-version-after", Kind.DURATION),
            Flag("custom-metadata", Kind.MAP),
        ],
    )
    _, path = _metadata_target(inv)
    body: dict[str, Any] = {}
    max_versions = inv.flags.number("max-versions")
    if max_versions is not None and max_versions >= 0:
        body["max_versions"] = max_versions
    if inv.flags.is_set("cas-required"):
        body["cas_required"] = inv.flags.on("cas-required")
    after = inv.flags.seconds("delete-version-after")
    if after is not None:
        body["delete_version_after"] = f"{after}s"
    if inv.flags.is_set("custom-metadata"):
        body["custom_metadata"] = inv.flags.pairs("custom-metadata")
    with api_errors(f"Error writing data to {path}"):
        secret = inv.client.write(path, body)
    return _written(inv, secret, path)


def cmd_metadata_delete(ctx: Context, argv: Sequence[str]) -> int:
    """vault kv metadata delete KEY: remove the key, all its versions and metadata."""
    inv = begin(ctx, argv, [MOUNT_FLAG])
    _, path = _metadata_target(inv)
    with api_errors(f"Error deleting {path}"):
        inv.client.delete(path)
    if inv.table:
        inv.ui.output(f"Success! Data deleted (if it existed) at: {path}")
    return EXIT_OK


def register() -> Registry:
    """This module's commands for the dispatcher."""
    return {
        ("kv", "put"): (cmd_put, "Sets or updates data in the KV store"),
        ("kv", "patch"): (cmd_patch, "Sets or updates data in the KV store without overwriting"),
        ("kv", "get"): (cmd_get, "Retrieves data from the KV store"),
        ("kv", "list"): (cmd_list, "List data or secrets"),
        ("kv", "delete"): (cmd_delete, "Deletes versions in the KV store"),
        ("kv", "undelete"): (cmd_undelete, "Undeletes versions in the KV store"),
        ("kv", "destroy"): (cmd_destroy, "Permanently removes one or more versions in the KV store"),
        ("kv", "metadata", "get"): (cmd_metadata_get, "Retrieves key metadata from the KV store"),
        ("kv", "metadata", "put"): (cmd_metadata_put, "Sets or updates key settings in the KV store"),
        ("kv", "metadata", "delete"): (cmd_metadata_delete, "Deletes all versions and metadata for a key in the KV store"),
    }
