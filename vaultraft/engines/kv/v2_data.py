"""KV v2 secret data: ``data/``, ``subkeys/``, ``delete/``, ``undelete/`` and ``destroy/``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vaultraft.engines.kv.common import merge_patch
from vaultraft.engines.kv.v2_store import (
    KeyMeta,
    KVContext,
    MountConfig,
    VersionMeta,
    add_version,
    load_config,
    load_meta,
    load_version_data,
    meta_exists,
    meta_op,
    version_deletion,
    version_key,
    version_op,
)
from vaultraft.framework import Field, FieldData, FieldType, Path
from vaultraft.logical import (
    CheckAndSetMismatch,
    InternalError,
    InvalidRequest,
    NotFound,
    Operation,
    Request,
    Response,
    WriteOp,
)

_PATH = Field(FieldType.STRING, "Location of the secret.")


def _cas_value(raw: Any) -> int:
    """Weakly decode ``options.cas`` to an int, as Go's mapstructure.WeakDecode does."""
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw)
    if isinstance(raw, str):
        s = raw.strip()
        if s == "":
            return 0
        return int(s, 0) if s.lower().startswith(("0x", "0o", "0b")) else int(s)
    raise ValueError("not an integer")


def check_cas(d: FieldData, config: MountConfig, meta: KeyMeta) -> None:
    """Enforce ``options.cas`` and cas_required (mount or key) against ``meta``."""
    options = d.get("options") if d.has("options") else None
    if isinstance(options, dict) and "cas" in options:
        try:
            cas = _cas_value(options["cas"])
        except ValueError:
            raise InvalidRequest("error parsing check-and-set parameter") from None
        if cas != meta.current_version:
            raise CheckAndSetMismatch()
    elif config.cas_required or meta.cas_required:
        raise InvalidRequest("check-and-set parameter required for this call")


def versions_arg(d: FieldData) -> list[int]:
    """The ``versions`` field (a list, a single number or "1,2,3") as ints."""
    out: list[int] = []
    for s in d.get("versions") or []:
        try:
            out.append(int(s))
        except ValueError:
            raise InvalidRequest(f'error converting input for field "versions": invalid version {s!r}') from None
    return out


def remove_values(data: dict[str, Any], max_depth: int) -> dict[str, Any]:
    """The key structure of ``data`` with every leaf (and every map below ``max_depth``,
    when non-zero) replaced by None."""

    def walk(m: dict[str, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in m.items():
            deeper = depth + 1
            if isinstance(v, dict) and v and (max_depth == 0 or deeper <= max_depth):
                out[k] = walk(v, deeper)
            else:
                out[k] = None
        return out

    return walk(data, 1)


class DataPaths:
    """Handlers of the secret-data endpoints of one KV v2 mount."""

    def __init__(self, ctx: KVContext) -> None:
        self.ctx = ctx

    # -- data/<path> -------------------------------------------------------------------

    async def exists(self, req: Request, d: FieldData) -> bool:
        """A secret exists once it has metadata (decides create vs update)."""
        return await meta_exists(req.view(), d.get("path"))

    async def _read_version(self, req: Request, d: FieldData, key: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The response body skeleton for the requested version and its data (None when
        deleted/destroyed). Raises NotFound when there is no such secret or version."""
        path: str = d.get("path")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                raise NotFound()
            requested: int = d.get("version")
            n = requested if requested > 0 else meta.current_version
            vm = meta.versions.get(n)
            if vm is None:
                raise NotFound()
            body: dict[str, Any] = {key: None, "metadata": meta.version_body(n, vm)}
            if vm.hidden(self.ctx.now_ns()):
                return body, None
            data = await load_version_data(view, path, n)
        if data is None:
            raise InternalError("could not find version data")
        return body, data

    async def read(self, req: Request, d: FieldData) -> Response | None:
        """``GET data/<path>[?version=N]``: data and version metadata; a deleted or
        destroyed version answers 404 with ``data: null`` and its metadata."""
        body, data = await self._read_version(req, d, "data")
        if data is None:
            return Response(data=body, status=404)
        body["data"] = data
        return Response(data=body)

    async def _append(self, req: Request, path: str, meta: KeyMeta, config: MountConfig,
                      data: dict[str, Any]) -> Response:
        now = self.ctx.now_ns()
        vm = VersionMeta(created_ns=now, deletion_ns=version_deletion(config, meta, now))
        new, pruned = add_version(meta, vm, config.max_versions)
        ops = [version_op(path, new.current_version, data)]
        ops += [WriteOp(version_key(path, n), None) for n in pruned]
        ops.append(meta_op(new))
        await req.view().write_batch(ops)
        return Response(data=new.version_body(new.current_version, vm))

    async def write(self, req: Request, d: FieldData) -> Response | None:
        """``POST data/<path>``: store ``data`` as a new version (honouring cas)."""
        path: str = d.get("path")
        if not d.has("data"):
            raise InvalidRequest("no data provided")
        data: dict[str, Any] = d.get("data")
        view = req.view()
        async with self.ctx.lock(path):
            config = await load_config(view)
            meta = await load_meta(view, path) or KeyMeta(key=path)
            check_cas(d, config, meta)
            return await self._append(req, path, meta, config, data)

    async def patch(self, req: Request, d: FieldData) -> Response | None:
        """``PATCH data/<path>``: JSON merge-patch ``data`` onto the current version and
        store the result as a new version. 404 when there is no live current version."""
        path: str = d.get("path")
        if not d.has("data"):
            raise InvalidRequest("no data provided")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                raise NotFound()
            config = await load_config(view)
            check_cas(d, config, meta)
            vm = meta.versions.get(meta.current_version)
            if vm is None:
                raise NotFound()
            if vm.hidden(self.ctx.now_ns()):
                return Response(data=meta.version_body(meta.current_version, vm), status=404)
            existing = await load_version_data(view, path, meta.current_version)
            if existing is None:
                raise InternalError("could not find version data")
            patched = merge_patch(existing, d.get("data"))
            return await self._append(req, path, meta, config, patched)

    async def delete_latest(self, req: Request, d: FieldData) -> Response | None:
        """``DELETE data/<path>``: soft-delete the current version (204, idempotent)."""
        path: str = d.get("path")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                return None
            vm = meta.versions.get(meta.current_version)
            now = self.ctx.now_ns()
            if vm is None or vm.hidden(now):
                return None
            versions = dict(meta.versions)
            versions[meta.current_version] = replace(vm, deletion_ns=now)
            await view.write_batch([meta_op(replace(meta, versions=versions))])
        return None

    # -- delete/, undelete/, destroy/ ----------------------------------------------------

    async def delete_versions(self, req: Request, d: FieldData) -> Response | None:
        """``POST delete/<path>``: soft-delete the listed versions."""
        path: str = d.get("path")
        wanted = versions_arg(d)
        if not wanted:
            raise InvalidRequest("No version number provided")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                return None
            now = self.ctx.now_ns()
            versions = dict(meta.versions)
            for n in wanted:
                vm = versions.get(n)
                if vm is None or vm.hidden(now):
                    continue
                versions[n] = replace(vm, deletion_ns=now)
            await view.write_batch([meta_op(replace(meta, versions=versions))])
        return None

    async def undelete_versions(self, req: Request, d: FieldData) -> Response | None:
        """``POST undelete/<path>``: clear the deletion of the listed versions (destroyed
        ones stay destroyed); delete_version_after restarts from now."""
        path: str = d.get("path")
        wanted = versions_arg(d)
        if not wanted:
            raise InvalidRequest("No version number provided")
        view = req.view()
        async with self.ctx.lock(path):
            config = await load_config(view)
            meta = await load_meta(view, path)
            if meta is None:
                return None
            now = self.ctx.now_ns()
            versions = dict(meta.versions)
            for n in wanted:
                vm = versions.get(n)
                if vm is None or vm.destroyed:
                    continue
                versions[n] = replace(vm, deletion_ns=version_deletion(config, meta, now))
            await view.write_batch([meta_op(replace(meta, versions=versions))])
        return None

    async def destroy_versions(self, req: Request, d: FieldData) -> Response | None:
        """``POST destroy/<path>``: permanently remove the listed versions' data."""
        path: str = d.get("path")
        wanted = versions_arg(d)
        if not wanted:
            raise InvalidRequest("no version number provided")
        view = req.view()
        async with self.ctx.lock(path):
            meta = await load_meta(view, path)
            if meta is None:
                return None
            versions = dict(meta.versions)
            for n in wanted:
                vm = versions.get(n)
                if vm is not None and not vm.destroyed:
                    versions[n] = replace(vm, destroyed=True)
            ops = [meta_op(replace(meta, versions=versions))]
            ops += [WriteOp(version_key(path, n), None) for n in sorted(set(wanted)) if n > 0]
            await view.write_batch(ops)
        return None

    # -- subkeys/<path> ------------------------------------------------------------------

    async def subkeys(self, req: Request, d: FieldData) -> Response | None:
        """``GET subkeys/<path>[?version=N&depth=D]``: the data's keys with values nulled."""
        body, data = await self._read_version(req, d, "subkeys")
        if data is None:
            return Response(data=body, status=404)
        body["subkeys"] = remove_values(data, d.get("depth"))
        return Response(data=body)

    def paths(self) -> list[Path]:
        """The framework paths, in Vault's matching order."""
        versions = Field(FieldType.COMMA_STRING_SLICE, "The versions to act on.")
        return [
            Path(
                pattern=r"data/(?P<path>.*[^/])",
                operations={
                    Operation.READ: self.read,
                    Operation.CREATE: self.write,
                    Operation.UPDATE: self.write,
                    Operation.PATCH: self.patch,
                    Operation.DELETE: self.delete_latest,
                },
                fields={
                    "path": _PATH,
                    "version": Field(FieldType.INT, "If provided during a read, the value at the version number will be returned", query=True),
                    "options": Field(FieldType.MAP, 'Options for writing a KV entry. Set the "cas" value to use a Check-And-Set operation.'),
                    "data": Field(FieldType.MAP, "The contents of the data map will be stored and returned on read."),
                },
                exists=self.exists,
                synopsis="Write, Patch, Read, and Delete data in the Key-Value Store.",
                description="Each write creates a new version; delete is a soft delete that can be undone.",
            ),
            Path(
                pattern=r"destroy/(?P<path>.*)",
                operations={Operation.UPDATE: self.destroy_versions},
                fields={"path": _PATH, "versions": replace(versions, description="The versions to destroy. Their data will be permanently deleted.")},
                synopsis="Permanently removes one or more versions in the KV store",
            ),
            Path(
                pattern=r"subkeys/(?P<path>.*)",
                operations={Operation.READ: self.subkeys},
                fields={
                    "path": _PATH,
                    "version": Field(FieldType.INT, "Specifies which version to retrieve. If not provided, the current version will be used.", query=True),
                    "depth": Field(FieldType.INT, "The maximum depth to traverse. No limit will be imposed if not provided or if 0.", query=True),
                },
                synopsis="Read the structure of a secret entry from the Key-Value store with the values removed.",
            ),
            Path(
                pattern=r"delete/(?P<path>.*)",
                operations={Operation.UPDATE: self.delete_versions},
                fields={"path": _PATH, "versions": replace(versions, description="The versions to be archived. The versioned data will not be deleted, but it will no longer be returned in normal get requests.")},
                synopsis="Marks one or more versions as deleted in the KV store.",
            ),
            Path(
                pattern=r"undelete/(?P<path>.*)",
                operations={Operation.UPDATE: self.undelete_versions},
                fields={"path": _PATH, "versions": replace(versions, description="The versions to unarchive. The versions will be restored and their data will be returned on normal get requests.")},
                synopsis="Undeletes one or more versions from the KV store.",
            ),
        ]
