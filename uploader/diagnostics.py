"""What went wrong on the wire, in the shape the original system logged it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

from tenacity import RetryError

from uploader.redact import redact_text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: causes, contexts, tenacity's last attempt,
    aiohttp's os_error / certificate_error, our TransientError.cause."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        nested: list[Any] = [cur.__cause__, cur.__context__, getattr(cur, "cause", None),
                             getattr(cur, "os_error", None), getattr(cur, "certificate_error", None)]
        if isinstance(cur, RetryError) and cur.last_attempt.failed:
            nested.append(cur.last_attempt.exception())
        nested.extend(a for a in cur.args if isinstance(a, BaseException))
        todo.extend(n for n in nested if isinstance(n, BaseException))


def diagnose(exc: BaseException, attempts: int | None = None,
             tls: dict[str, str] | None = None) -> dict[str, Any]:
    """Error type, message, retry attempts, original error type, OpenSSL library/reason,
    OpenSSL version, and the TLS version and cipher of the connection when known."""
    chain = list(_chain(exc))
    original = chain[-1]
    for cur in chain:
        if isinstance(cur, RetryError):
            continue
        if cur is not exc and not getattr(cur, "__cause__", None):
            original = cur
    info: dict[str, Any] = {
        "error_type": type(exc).__name__,
        "message": redact_text(str(exc)),
        "retry_attempts": attempts,
        "original_error_type": type(original).__name__,
        "openssl_version": ssl.OPENSSL_VERSION,
    }
    ssl_err = next((c for c in chain if isinstance(c, ssl.SSLError)), None)
    if ssl_err is not None:
        info["ssl_library"] = getattr(ssl_err, "library", None)
        info["ssl_reason"] = getattr(ssl_err, "reason", None)
    if tls:
        info.update({"tls_version": tls.get("version"), "tls_cipher": tls.get("cipher")})
    return info


def format_block(info: dict[str, Any]) -> list[str]:
    return [f"  {key}: {value}" for key, value in info.items() if value is not None]
