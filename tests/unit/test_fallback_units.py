"""The sync deadline formula (the original system's rule) and the SSL diagnostics extractor
on real exception objects produced by the ssl module, aiohttp and tenacity."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from tenacity import RetryError, Retrying, stop_after_attempt

from uploader.diagnostics import diagnose
from uploader.errors import TransientError
from uploader.transport_sync import sync_deadline

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "seconds"),
    [(0, 300.0), (1 * MB, 300.0), (int(50.25 * MB), 502.5), (int(179.9 * MB), 1799.0),
     (int(313.12 * MB), 1800.0), (5 * 1000**3, 1800.0)],
)
def test_deadline_formula(size: int, seconds: float) -> None:
    assert sync_deadline(size) == pytest.approx(seconds, abs=0.01)


def _real_ssl_error() -> ssl.SSLError:
    """A genuine OpenSSL failure: a TLS client handed a plain-HTTP reply (no sockets)."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    incoming.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    with pytest.raises(ssl.SSLError) as caught:
        client.do_handshake()
    return caught.value


def test_diagnose_ssl_error() -> None:
    err = _real_ssl_error()
    info = diagnose(err, attempts=5)
    assert info["error_type"] == "SSLError"
    assert info["ssl_library"] == err.library and info["ssl_reason"] == err.reason
    assert info["ssl_reason"]  # OpenSSL always names the reason for a record-layer failure
    assert info["openssl_version"] == ssl.OPENSSL_VERSION
    assert info["retry_attempts"] == 5


def test_diagnose_client_os_error_wrapping_ssl() -> None:
    inner = _real_ssl_error()
    outer = aiohttp.ClientOSError(inner.errno or 1, str(inner))
    outer.__cause__ = inner
    info = diagnose(TransientError("UploadPart 3: ClientOSError", cause=outer), attempts=5,
                    tls={"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
    assert info["error_type"] == "TransientError"
    assert info["original_error_type"] == "SSLError"
    assert info["ssl_reason"] == inner.reason
    assert (info["tls_version"], info["tls_cipher"]) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_diagnose_server_disconnected_inside_retry_error() -> None:
    def always_disconnected() -> None:
        raise aiohttp.ServerDisconnectedError("Server disconnected")

    with pytest.raises(RetryError) as caught:
        for attempt in Retrying(stop=stop_after_attempt(3)):
            with attempt:
                always_disconnected()
    info = diagnose(caught.value, attempts=caught.value.last_attempt.attempt_number)
    assert info["error_type"] == "RetryError"
    assert info["original_error_type"] == "ServerDisconnectedError"
    assert info["retry_attempts"] == 3
    assert "ssl_reason" not in info
