"""One TLS policy for both transports: verification on, TLS 1.2 minimum."""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
from collections.abc import Iterator

# OpenSSL reasons meaning "no TLS version in common": not worth a retry.
HANDSHAKE_REFUSALS = frozenset({
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
})


def handshake_advice(error_text: str) -> str:
    """What to do about a refused handshake. WRONG_VERSION_NUMBER is what OpenSSL says when the
    reply is not TLS at all, mostly an HTTP server behind an https:// URL."""
    if "WRONG_VERSION_NUMBER" in error_text:
        return "the server did not answer in TLS: if it speaks plain HTTP, use an http:// URL"
    return "the server must support TLS 1.2 or newer"


def make_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    # create_default_context turns on hostname checking and CERT_REQUIRED;
    # there is deliberately no switch to turn them off.
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
_CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR")


@contextlib.contextmanager
def default_cas_skipped() -> Iterator[None]:
    """For the CLI, around its first import of aiohttp: aiohttp builds two default TLS contexts
    at import time, loading the system CA store twice (~0.1 s of a resume's start-up). Every
    https request chunkhaul makes carries the context from make_ssl_context instead, so those
    two are built from an empty CA path. Not done when a proxy is configured (aiohttp would
    use its default context for an https proxy), nor for library users, whose own aiohttp
    requests may rely on them."""
    if "aiohttp" in sys.modules or any(os.environ.get(name) for name in _PROXY_VARS):
        yield
        return
    saved = {name: os.environ.get(name) for name in _CA_VARS}
    os.environ.update(dict.fromkeys(_CA_VARS, os.devnull))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
