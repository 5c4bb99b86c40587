"""KV v2 settings: the mount's ``config`` and each secret's ``metadata/<path>``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from vaultraft.engines.kv.common import (
    folder,
    format_time,
    go_duration,
    list_response,
    merge_patch,
    parse_signed_duration,
)
from vaultraft.engines.kv.v2_store import (
    DVA_DISABLED,
    META_PREFIX,
    KeyMeta,
    KVContext,
    MountConfig,
    config_op,
    load_config,
    load_meta,
    meta_op,
    version_prefix,
)
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import InvalidRequest, NotFound, Operation, Request, Response, WriteOp
from vaultraft.logical.storage import collect_keys

MAX_CUSTOM_METADATA_KEYS = 64
MAX_CUSTOM_METADATA_KEY_LENGTH = 128
MAX_CUSTOM_METADATA_VALUE_LENGTH = 512
CUSTOM_METADATA_PREFIX = "custom_metadata validation failed"
CAS_IGNORED_WARNING = '"cas_required" set to false, but is mandated by backend config. This value will be ignored.'


def _multierror(errs: list[str]) -> str:
    """Errors joined the way Go's hashicorp/go-multierror prints them."""
    if len(errs) == 1:
        return f"1 error occurred:\n\t* {errs[0]}\n\n"
    points = "\n\t".join("* " + e for e in errs)
    return f"{len(errs)} errors occurred:\n\t{points}\n\n"


def _weak_str(v: Any) -> str:
    """A custom_metadata value as a string (mapstructure.WeakDecode semantics)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    raise ValueError(f"'' expected type 'string', got unconvertible type '{type(v).__name__}'")


def parse_custom_metadata(raw: Mapping[str, Any], keep_nulls: bool) -> dict[str, str | None]:
    """custom_metadata as strings; with ``keep_nulls`` a null stays None (a PATCH removal).

    Raises InvalidRequest with Vault's messages for unconvertible or invalid entries.
    """
    out: dict[str, str | None] = {}
    try:
        for k, v in raw.items():
            out[k] = None if (keep_nulls and v is None) else _weak_str(v)
    except ValueError as e:
        raise InvalidRequest(f"{CUSTOM_METADATA_PREFIX}: {e}") from None
    present = {k: v for k, v in out.items() if v is not None}
    errs: list[str] = []
    if len(present) > MAX_CUSTOM_METADATA_KEYS:
        errs.append(f"{CUSTOM_METADATA_PREFIX}: payload must contain at most "
                    f"{MAX_CUSTOM_METADATA_KEYS} keys, provided {len(present)}")
    else:
        for k, v in sorted(present.items()):
            klen, vlen = len(k.encode("utf-8")), len(v.encode("utf-8"))
            if klen == 0 or klen > MAX_CUSTOM_METADATA_KEY_LENGTH:
                errs.append(f'{CUSTOM_METADATA_PREFIX}: length of key "{k}" is {klen} but must be '
                            f"0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LENGTH}")
            if vlen == 0 or vlen > MAX_CUSTOM_METADATA_VALUE_LENGTH:
                errs.append(f'{CUSTOM_METADATA_PREFIX}: length of value for key "{k}" is {vlen} but must be '
                            f"0 < len(value) <= {MAX_CUSTOM_METADATA_VALUE_LENGTH}")
            if not k.isprintable():
                errs.append(f'{CUSTOM_METADATA_PREFIX}: key "{k}" ({k}) contains unprintable characters')
            if not v.isprintable():
                errs.append(f'{CUSTOM_METADATA_PREFIX}: value for key "{k}" contains unprintable characters')
    if errs:
        raise InvalidRequest(_multierror(errs))
    return out


def _secret_path(d: FieldData) -> str:
    """The secret named by a metadata write; a folder (trailing ``/``) names no secret."""
    path: str = d.get("path")
    if path == "":
        raise InvalidRequest("missing path")
    if path.endswith("/"):
        raise InvalidRequest("path must not end in '/'")
    return path


def _non_negative(d: FieldData, name: str) -> int:
    v: int = d.get(name)
    if v < 0:
        raise InvalidRequest(f'error converting input for field "{name}": must not be negative')
    return v


class MetadataPaths:
    """Handlers of ``config`` and ``metadata/`` for one KV v2 mount."""

    def __init__(self, ctx: KVContext) -> None:
        self.ctx = ctx

    # -- config --------------------------------------------------------------------------

    async def config_read(self, req: Request, d: FieldData) -> Response | None:
        """``GET config``: max_versions, cas_required, delete_version_after."""
        c = await load_config(req.view())
        return Response(data={
            "cas_required": c.cas_required,
            "delete_version_after": go_duration(c.delete_version_after),
            "max_versions": c.max_versions,
        })

    async def config_write(self, req: Request, d: FieldData) -> Response | None:
        """``POST config``: update the given settings (204). A negative
        delete_version_after disables it mount-wide; zero clears it."""
        if not any(d.has(k) for k in ("max_versions", "cas_required", "delete_version_after")):
            return None
        dva: int | None = None
        if d.has("delete_version_after"):
            try:
                dva = parse_signed_duration(d.get("delete_version_after"))
            except ValueError as e:
                raise InvalidRequest(f'error converting input for field "delete_version_after": {e}') from None
        view = req.view()
        c = await load_config(view)
        if d.has("max_versions"):
            c = replace(c, max_versions=_non_negative(d, "max_versions"))
        if d.has("cas_required"):
            c = replace(c, cas_required=d.get("cas_required"))
        if dva is not None:
            c = replace(c, delete_version_after=DVA_DISABLED if dva < 0 else dva)
        await view.write_batch([config_op(c)])
        return None

    # -- metadata/<path> -----------------------------------------------------------------

    async def exists(self, req: Request, d: FieldData) -> bool:
        """Whether the secret has metadata (decides create vs update)."""
        return await load_meta(req.view(), d.get("path")) is not None

    async def read(self, req: Request, d: FieldData) -> Response | None:
        """``GET metadata/<path>``: versions map and per-key settings."""
        meta = await load_meta(req.view(), d.get("path"))
        if meta is None:
            raise NotFound()
        return Response(data={
            "cas_required": meta.cas_required,
            "created_time": format_time(meta.created_ns),
            "current_version": meta.current_version,
            "custom_metadata": None if meta.custom_metadata is None else dict(meta.custom_metadata),
            "delete_version_after": go_duration(meta.delete_version_after),
            "max_versions": meta.max_versions,
            "oldest_version": meta.oldest_version,
            "updated_time": format_time(meta.updated_ns),
            "versions": {str(n): v.to_json() for n, v in sorted(meta.versions.items())},
        })

    async def list_keys(self, req: Request, d: FieldData) -> Response | None:
        """``LIST metadata/<folder>``: secret names and sub-folders; nothing is a 404."""
        return list_response(await req.view().list(META_PREFIX + folder(d.get("path"))))

    def _cas_warning(self, d: FieldData, config: MountConfig) -> Response | None:
        if d.has("cas_required") and config.cas_required and not d.get("cas_required"):
            return Response(warnings=[CAS_IGNORED_WARNING])
        return None

    async def write(self, req: Request, d: FieldData) -> Response | None:
        """``POST metadata/<path>``: set the given settings, creating metadata if needed."""
        path = _secret_path(d)
        fields = ("max_versions", "cas_required", "delete_version_after", "custom_metadata")
        if not any(d.has(k) for k in fields):
            return None
        view = req.view()
        config = await load_config(view)
        custom: dict[str, str] | None = None
        if d.has("custom_metadata"):
            parsed = parse_custom_metadata(d.get("custom_metadata"), keep_nulls=False)
            custom = {k: v for k, v in parsed.items() if v is not None}
        max_versions = _non_negative(d, "max_versions") if d.has("max_versions") else None
        resp = self._cas_warning(d, config)
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                now = self.ctx.now_ns()
                meta = KeyMeta(key=path, created_ns=now, updated_ns=now)
            meta = _apply(meta, d, max_versions, custom)
            await view.write_batch([meta_op(meta)])
        return resp

    async def patch(self, req: Request, d: FieldData) -> Response | None:
        """``PATCH metadata/<path>``: like write, but custom_metadata is merge-patched
        (a null value removes a key). 404 when the secret has no metadata."""
        path = _secret_path(d)
        custom_patch: dict[str, str | None] | None = None
        if d.has("custom_metadata"):
            custom_patch = parse_custom_metadata(d.get("custom_metadata"), keep_nulls=True)
        view = req.view()
        config = await load_config(view)
        max_versions = _non_negative(d, "max_versions") if d.has("max_versions") else None
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                raise NotFound()
            resp = self._cas_warning(d, config)
            custom = None
            if custom_patch is not None:
                custom = merge_patch(dict(meta.custom_metadata or {}), custom_patch)
            meta = _apply(meta, d, max_versions, custom)
            await view.write_batch([meta_op(meta)])
        return resp

    async def delete(self, req: Request, d: FieldData) -> Response | None:
        """``DELETE metadata/<path>``: remove the secret, all versions and metadata (204)."""
        path: str = d.get("path")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                return None
            prefix = version_prefix(path)
            ops = [WriteOp(k, None) for k in await collect_keys(view, prefix)]
            ops.append(WriteOp(META_PREFIX + path, None))
            await view.write_batch(ops)
        return None

    def paths(self) -> list[Path]:
        """The ``config`` and ``metadata/`` framework paths."""
        return [
            Path(
                pattern=r"config",
                operations={Operation.READ: self.config_read, Operation.UPDATE: self.config_write},
                fields={
                    "max_versions": Field(FieldType.INT, "The number of versions to keep for each key. Defaults to 10"),
                    "cas_required": Field(FieldType.BOOL, "If true, the backend will require the cas parameter to be set for each write"),
                    "delete_version_after": Field(FieldType.STRING, "If set, the length of time before a version is deleted. A negative duration disables the use of delete_version_after on all keys. A zero duration clears the current setting. Accepts a Go duration format string."),
                },
                synopsis="Configures settings for the KV store",
            ),
            Path(
                pattern=r"metadata/(?P<path>.*)",
                operations={
                    Operation.READ: self.read,
                    Operation.CREATE: self.write,
                    Operation.UPDATE: self.write,
                    Operation.PATCH: self.patch,
                    Operation.DELETE: self.delete,
                    Operation.LIST: self.list_keys,
                },
                fields={
                    "path": Field(FieldType.STRING, "Location of the secret."),
                    "cas_required": Field(FieldType.BOOL, "If true the key will require the cas parameter to be set on all write requests. If false, the backend's configuration will be used."),
                    "max_versions": Field(FieldType.INT, "The number of versions to keep. If not set, the backend's configured max version is used."),
                    "delete_version_after": Field(FieldType.DURATION, "The length of time before a version is deleted. If not set, the backend's configured delete_version_after is used. A zero duration clears the current setting. A negative duration will cause an error."),
                    "custom_metadata": Field(FieldType.MAP, "User-provided key-value pairs that are used to describe arbitrary and version-agnostic information about a secret."),
                },
                exists=self.exists,
                synopsis="Allows interaction with key metadata and settings in the KV store.",
                description="Read information about a key, write key settings, and permanently delete a key and all versions.",
            ),
        ]


def _apply(meta: KeyMeta, d: FieldData, max_versions: int | None,
           custom: Mapping[str, Any] | None) -> KeyMeta:
    """``meta`` with every sent setting applied."""
    if max_versions is not None:
        meta = replace(meta, max_versions=max_versions)
    if d.has("cas_required"):
        meta = replace(meta, cas_required=d.get("cas_required"))
    if d.has("delete_version_after"):
        meta = replace(meta, delete_version_after=d.get("delete_version_after"))
    if custom is not None:
        meta = replace(meta, custom_metadata={k: str(v) for k, v in custom.items()})
    return meta
