"""The HTTP API: aiohttp in, logical requests to core, Vault's JSON envelope out.

This is the only layer that knows HTTP status codes.
"""

from vaultraft.http.app import ApiServer

__all__ = ["ApiServer"]
