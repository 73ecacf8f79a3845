"""One TLS policy for both transports: verification on, TLS 1.2 minimum."""

from __future__ import annotations

import ssl

# OpenSSL reasons meaning "no TLS version in common": not worth a retry.
HANDSHAKE_REFUSALS = frozenset({
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
})


def make_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    # create_default_context turns on hostname checking and CERT_REQUIRED;
    # there is deliberately no switch to turn them off.
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
