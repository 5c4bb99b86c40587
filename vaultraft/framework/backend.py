"""A backend built from declarative paths: dispatch, existence checks, help, OpenAPI."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from vaultraft.framework.fields import Field, FieldData
from vaultraft.logical import (
    Operation,
    Request,
    Response,
    UnsupportedOperation,
    UnsupportedPath,
)

Handler = Callable[[Request, FieldData], Awaitable[Response | None]]
ExistenceCheck = Callable[[Request, FieldData], Awaitable[bool]]


@dataclass(frozen=True)
class Path:
    """One family of URLs under a mount.

    ``pattern`` is a regular expression matched against the whole mount-relative path;
    its named groups become fields (declare them in ``fields`` too, for docs). When
    ``exists`` is given, a write to a missing object is a ``create`` for ACL purposes and
    an ``update`` otherwise, exactly as Vault's ExistenceCheck.
    """

    pattern: str
    operations: Mapping[Operation, Handler]
    fields: Mapping[str, Field] = field(default_factory=dict)
    exists: ExistenceCheck | None = None
    synopsis: str = ""
    description: str = ""
    # Vault's TakesArbitraryInput: unknown fields are data, not a mistake to warn about.
    takes_arbitrary_input: bool = False

    def compiled(self) -> re.Pattern[str]:
        """The compiled pattern (cached per instance by the backend)."""
        return re.compile(self.pattern)


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def _openapi_path(pattern: str) -> str:
    p = pattern.lstrip("^").rstrip("$")
    p = _GROUP.sub(lambda m: "{" + m.group(1) + "}", p)
    p = p.replace("/?", "/").replace("?", "")
    return p


_METHODS = {
    Operation.READ: "get",
    Operation.LIST: "get",
    Operation.UPDATE: "post",
    Operation.CREATE: "post",
    Operation.PATCH: "patch",
    Operation.DELETE: "delete",
}


class Backend:
    """Dispatches a routed :class:`Request` to the handler of the first matching path."""

    def __init__(self, paths: Sequence[Path], *, help: str = "", backend_type: str = "") -> None:
        self.paths = list(paths)
        self.help_text = help
        self.backend_type = backend_type
        self._compiled = [(re.compile(p.pattern), p) for p in self.paths]
        # The last path matched and its answer: a write matches the same path twice (the
        # existence check, then the handler). The patterns never change, so it is exact.
        self._last: tuple[str, tuple[Path, dict[str, str]] | None] = ("", None)

    def match(self, path: str) -> tuple[Path, dict[str, str]] | None:
        """The first path whose pattern matches all of ``path``, and its captured groups
        (a fresh dict on every call)."""
        last_path, last = self._last
        if path == last_path and last is not None:
            return last[0], dict(last[1])
        for rx, p in self._compiled:
            m = rx.fullmatch(path)
            if m:
                groups = {k: v for k, v in m.groupdict().items() if v is not None}
                self._last = (path, (p, groups))
                return p, dict(groups)
        return None

    def _field_data(self, p: Path, groups: dict[str, str], req: Request) -> FieldData:
        raw: dict[str, Any] = dict(req.data)
        raw.update(groups)
        return FieldData(p.fields, raw)

    async def exists(self, req: Request) -> bool | None:
        """Existence of the target object, or None when the path defines no check."""
        found = self.match(req.path)
        if found is None:
            return None
        p, groups = found
        check = p.exists
        if check is None:
            return None
        return await check(req, self._field_data(p, groups, req))

    def create_is_update(self, path: str) -> bool:
        """Whether a write to ``path`` runs the same handler as a create or as an update, so
        that the existence check cannot change what the backend does (only which ACL
        capability and audit operation the request is under)."""
        found = self.match(path)
        if found is None:
            return False
        ops = found[0].operations
        update = ops.get(Operation.UPDATE)
        return update is not None and (ops.get(Operation.CREATE) or update) == update

    async def handle(self, req: Request) -> Response | None:
        """Run the handler for ``req``; raises UnsupportedPath/UnsupportedOperation."""
        found = self.match(req.path)
        if found is None:
            raise UnsupportedPath()
        p, groups = found
        if req.operation is Operation.HELP:
            return Response(data={"help": self.help_for(p), "openapi": self.openapi(req.mount_point, [p])})
        handler = p.operations.get(req.operation)
        if handler is None and req.operation is Operation.CREATE:
            handler = p.operations.get(Operation.UPDATE)
        if handler is None and req.operation is Operation.UPDATE and p.exists is None:
            handler = p.operations.get(Operation.CREATE)
        if handler is None:
            raise UnsupportedOperation()
        d = self._field_data(p, groups, req)
        d.validate()
        resp = await handler(req, d)
        unknown = [] if p.takes_arbitrary_input else [k for k in d.unknown() if k not in groups]
        if unknown and req.operation not in (Operation.READ, Operation.LIST, Operation.DELETE):
            warning = "Endpoint ignored these unrecognized parameters: [" + " ".join(unknown) + "]"
            if resp is None:
                resp = Response(warnings=[warning], status=200)
            else:
                resp.warnings.append(warning)
        return resp

    def help_for(self, p: Path) -> str:
        """Human help for one path."""
        lines = [p.synopsis or self.help_text, "", p.description]
        if p.fields:
            lines.append("\n## PARAMETERS\n")
            for name, f in sorted(p.fields.items()):
                lines.append(f"    {name} ({f.type.value})\n        {f.description}")
        return "\n".join(x for x in lines if x is not None).strip() + "\n"

    def openapi(self, mount: str, only: Sequence[Path] | None = None) -> dict[str, Any]:
        """An OpenAPI 3 ``paths`` document for this backend mounted at ``mount``."""
        paths: dict[str, Any] = {}
        for p in only or self.paths:
            url = "/" + mount.strip("/") + "/" + _openapi_path(p.pattern)
            item: dict[str, Any] = {"description": p.synopsis}
            params = [n for n in _GROUP.findall(p.pattern)]
            if params:
                item["parameters"] = [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"},
                     "description": p.fields[n].description if n in p.fields else ""}
                    for n in params
                ]
            if p.exists is not None:
                item["x-vault-createSupported"] = True
            body_fields = {n: f.openapi() for n, f in p.fields.items() if n not in params}
            for op in p.operations:
                method = _METHODS.get(op)
                if method is None or method in item:
                    continue
                spec: dict[str, Any] = {"summary": p.synopsis, "responses": {"200": {"description": "OK"}}}
                if op is Operation.LIST:
                    spec["parameters"] = [{"name": "list", "in": "query", "required": True,
                                           "schema": {"type": "string", "enum": ["true"]}}]
                if method in ("post", "patch") and body_fields:
                    spec["requestBody"] = {"content": {"application/json": {"schema": {
                        "type": "object", "properties": body_fields}}}}
                item[method] = spec
            paths[url] = item
        return {"openapi": "3.0.2", "paths": paths}
