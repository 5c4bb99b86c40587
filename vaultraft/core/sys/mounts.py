"""sys/mounts and sys/auth: enable, disable, tune and list mounts."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vaultraft.core.mounts import PROTECTED_TYPES, RESERVED, MountConfig, MountTable, new_entry, normalize_path
from vaultraft.framework import Field, FieldData, FieldType, Path, parse_duration
from vaultraft.logical import InvalidRequest, Operation, Request, Response, WriteOp
from vaultraft.logical.storage import collect_keys

if TYPE_CHECKING:
    from vaultraft.core.core import Core

_MOUNT_FIELDS = {
    "path": Field(FieldType.STRING, "The path to mount to."),
    "type": Field(FieldType.STRING, "The type of the backend, e.g. kv."),
    "description": Field(FieldType.STRING, "User-friendly description for this mount."),
    "config": Field(FieldType.MAP, "Configuration for this mount, such as default_lease_ttl and max_lease_ttl."),
    "options": Field(FieldType.KV_PAIRS, "The options to pass into the backend, e.g. version=2."),
    "local": Field(FieldType.BOOL, "Mark the mount as a local mount (not replicated)."),
    "seal_wrap": Field(FieldType.BOOL, "Whether to turn on seal wrapping for the mount."),
    "plugin_name": Field(FieldType.STRING, "Name of the plugin (deprecated: use type)."),
    "external_entropy_access": Field(FieldType.BOOL, "Whether to give the mount access to external entropy."),
}

_TUNE_FIELDS = {
    "path": Field(FieldType.STRING, "The path of the mount."),
    "default_lease_ttl": Field(FieldType.STRING, "The default lease TTL for this mount."),
    "max_lease_ttl": Field(FieldType.STRING, "The max lease TTL for this mount."),
    "description": Field(FieldType.STRING, "User-friendly description for this mount."),
    "options": Field(FieldType.KV_PAIRS, "The options to pass into the backend."),
    "listing_visibility": Field(FieldType.STRING, "unauth or hidden."),
    "audit_non_hmac_request_keys": Field(FieldType.COMMA_STRING_SLICE, "Request keys not HMAC'd in audit."),
    "audit_non_hmac_response_keys": Field(FieldType.COMMA_STRING_SLICE, "Response keys not HMAC'd in audit."),
}


def _ttl(value: Any, name: str) -> int:
    if value in (None, "", "system"):
        return 0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise InvalidRequest(f"unable to parse {name}: {e}") from None


def _config_from(raw: dict[str, Any], base: MountConfig | None = None) -> MountConfig:
    base = base or MountConfig()
    changes: dict[str, Any] = {}
    for k in ("default_lease_ttl", "max_lease_ttl"):
        if k in raw:
            changes[k] = _ttl(raw[k], k)
    if "listing_visibility" in raw:
        lv = str(raw["listing_visibility"] or "")
        if lv not in ("", "unauth", "hidden"):
            raise InvalidRequest("invalid listing_visibility " + lv)
        changes["listing_visibility"] = lv
    for k in ("audit_non_hmac_request_keys", "audit_non_hmac_response_keys"):
        if k in raw:
            v = raw[k]
            changes[k] = tuple(v.split(",") if isinstance(v, str) else (v or ()))
    if "force_no_cache" in raw:
        changes["force_no_cache"] = bool(raw["force_no_cache"])
    cfg = MountConfig(**{**base.__dict__, **changes})
    if cfg.max_lease_ttl and cfg.default_lease_ttl > cfg.max_lease_ttl:
        raise InvalidRequest("default lease TTL cannot be greater than maximum lease TTL")
    return cfg


def _mount_type(d: FieldData) -> tuple[str, dict[str, str]]:
    t = d.get("type") or d.get("plugin_name")
    if not t:
        raise InvalidRequest("backend type must be specified as a string")
    options = dict(d.get("options") or {})
    if t == "kv-v2":
        t, options["version"] = "kv", "2"
    if t == "kv" and "version" not in options:
        options["version"] = "1"
    return t, options


def _table_json(table: MountTable, prefix: str = "") -> dict[str, Any]:
    return {prefix + p: e.to_json() for p, e in sorted(table.entries.items())}


def paths(core: "Core") -> list[Path]:
    """The sys/mounts* and sys/auth* paths."""

    async def list_mounts(req: Request, d: FieldData) -> Response:
        return Response(data=_table_json(core.unsealed.mounts), mirror_data=True)

    async def read_mount(req: Request, d: FieldData) -> Response:
        path = normalize_path(d.get("path"))
        e = core.unsealed.mounts.entries.get(path)
        if e is None:
            raise InvalidRequest(f"No secret engine mount at {path}")
        return Response(data=e.to_json())

    async def enable(req: Request, d: FieldData) -> None:
        u = core.unsealed
        path = normalize_path(d.get("path"))
        mount_type, options = _mount_type(d)
        if mount_type in PROTECTED_TYPES:
            raise InvalidRequest(f"mount type of \"{mount_type}\" is not mountable")
        if any(path.startswith(r) for r in RESERVED):
            raise InvalidRequest(f"cannot mount under a reserved path: {path}")
        existing = u.mounts.conflict(path)
        if existing is not None:
            raise InvalidRequest(f"path is already in use at {existing}")
        cfg = _config_from(dict(d.get("config") or {}))
        entry = new_entry(path, mount_type, description=d.get("description"), local=d.get("local"),
                          seal_wrap=d.get("seal_wrap"), options=options, config=cfg)
        core.mount_backend(entry)
        u.mounts.update(entry)
        try:
            await u.mounts.save()
        except BaseException:
            u.mounts.entries.pop(path, None)
            core.router.unmount(path)
            raise

    async def disable(req: Request, d: FieldData) -> None:
        u = core.unsealed
        path = normalize_path(d.get("path"))
        entry = u.mounts.entries.get(path)
        if entry is None:
            return None
        if entry.type in PROTECTED_TYPES:
            raise InvalidRequest(f"cannot unmount \"{path}\"")
        core.router.unmount(path)
        del u.mounts.entries[path]
        await u.mounts.save()
        view = core.engine_view(entry)
        keys = await collect_keys(view)
        for i in range(0, len(keys), 256):
            await view.write_batch([WriteOp(k, None) for k in keys[i:i + 256]])
        return None

    async def read_tune(req: Request, d: FieldData) -> Response:
        table, path = _tune_target(core, req, d.get("path"))
        e = table.entries.get(path)
        if e is None:
            raise InvalidRequest(f"cannot fetch sysview for path \"{path}\"")
        j = e.to_json()
        data = {**j["config"], "description": e.description, "options": j["options"]}
        data["default_lease_ttl"] = e.config.default_lease_ttl or core.settings.default_lease_ttl
        data["max_lease_ttl"] = e.config.max_lease_ttl or core.settings.max_lease_ttl
        return Response(data=data)

    async def write_tune(req: Request, d: FieldData) -> None:
        table, path = _tune_target(core, req, d.get("path"))
        e = table.entries.get(path)
        if e is None:
            raise InvalidRequest(f"cannot tune \"{path}\": no mount at this path")
        cfg = _config_from({k: d.raw[k] for k in _TUNE_FIELDS if k in d.raw and k not in ("path", "description", "options")}, e.config)
        changes: dict[str, Any] = {"config": cfg}
        if d.has("description"):
            changes["description"] = d.get("description")
        restart = False
        if d.has("options"):
            opts = dict(e.options)
            new_opts = d.get("options")
            if e.type == "kv" and "version" in new_opts:
                if opts.get("version") == "2" and new_opts["version"] == "1":
                    raise InvalidRequest("cannot downgrade mount from version 2")
                restart = new_opts["version"] != opts.get("version")
            opts.update(new_opts)
            changes["options"] = opts
        new = replace(e, **changes)
        table.update(new)
        await table.save()
        if restart and table is core.unsealed.mounts:
            core.mount_backend(new)

    async def list_auth(req: Request, d: FieldData) -> Response:
        return Response(data=_table_json(core.unsealed.auth), mirror_data=True)

    async def enable_auth(req: Request, d: FieldData) -> None:
        t = d.get("type") or "(missing)"
        raise InvalidRequest(f"plugin not found in the catalog: {t}")

    async def disable_auth(req: Request, d: FieldData) -> None:
        path = normalize_path(d.get("path"))
        if path == "token/":
            raise InvalidRequest("token credential backend cannot be disabled")
        return None

    return [
        Path(r"mounts/?", {Operation.READ: list_mounts}, synopsis="List the currently mounted backends."),
        Path(r"mounts/(?P<path>.+?)/tune/?", {Operation.READ: read_tune, Operation.UPDATE: write_tune},
             _TUNE_FIELDS, synopsis="Tune backend configuration parameters for this mount."),
        Path(r"mounts/(?P<path>.+)", {Operation.READ: read_mount, Operation.UPDATE: enable, Operation.DELETE: disable},
             _MOUNT_FIELDS, synopsis="Mount a new backend at a new path."),
        Path(r"auth/?", {Operation.READ: list_auth}, synopsis="List the currently enabled credential backends."),
        Path(r"auth/(?P<path>.+?)/tune/?", {Operation.READ: read_tune, Operation.UPDATE: write_tune},
             _TUNE_FIELDS, synopsis="Tune an auth mount."),
        Path(r"auth/(?P<path>.+)", {Operation.UPDATE: enable_auth, Operation.DELETE: disable_auth},
             _MOUNT_FIELDS, synopsis="Enable a new credential backend."),
    ]


def _tune_target(core: "Core", req: Request, raw_path: str) -> tuple[MountTable, str]:
    """The table (auth or mounts, from the request path) and the mount path to tune."""
    u = core.unsealed
    path = normalize_path(raw_path)
    if req.path.startswith("auth/"):
        return u.auth, path
    return u.mounts, path

