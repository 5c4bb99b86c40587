"""The HTTP request parser: llhttp (C) until a connection sends a method llhttp rejects.

Vault's API uses the non-standard LIST method (hvac and the Vault CLI send it). aiohttp's C
parser only knows registered methods and rejects LIST with ``BadHttpMethod``; aiohttp's
pure-Python parser accepts any RFC 9110 token but costs noticeably more CPU per request. So
every connection starts on the C parser, and the first time it rejects a method the
connection switches to the Python parser, which is fed the same bytes again (a rejected
feed returned no message, so nothing is seen twice). Connections that never send LIST keep
the fast parser.
"""

from __future__ import annotations

from typing import Any

from aiohttp import http_exceptions, http_parser

_C_PARSER: Any = getattr(http_parser, "HttpRequestParserC", None)


class AdaptiveRequestParser:
    """Drop-in for aiohttp's request parser (``web_protocol.HttpRequestParser``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._python = _C_PARSER is None
        self._inner: Any = (http_parser.HttpRequestParserPy if self._python else _C_PARSER)(*args, **kwargs)

    def feed_data(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
        """Parse ``data``; on the C parser's first unknown method, switch and re-parse."""
        try:
            return self._inner.feed_data(data, *args, **kwargs)
        except http_exceptions.BadHttpMethod:
            if self._python:
                raise
            self._python = True
            self._inner = http_parser.HttpRequestParserPy(*self._args, **self._kwargs)
            return self._inner.feed_data(data, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
