"""Declarative backends (Vault's sdk/framework): a backend is a list of :class:`Path`.

Routing within a mount, field validation and conversion, help and an OpenAPI fragment all
come from that list; handlers never parse raw request bodies themselves.
"""

from vaultraft.framework.backend import Backend, Handler, Path
from vaultraft.framework.fields import Field, FieldData, FieldType, parse_duration, parse_duration_seconds

__all__ = ["Backend", "Field", "FieldData", "FieldType", "Handler", "Path", "parse_duration", "parse_duration_seconds"]
