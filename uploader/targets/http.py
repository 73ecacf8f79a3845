"""Plain HTTP: the whole file as the raw body of one PUT (or POST). Sans-I/O.

No resume: a plain server has no way to say how much of a body it kept, so there is no
session and no manifest, and the engine always sends the file in one request, whatever its
size (engine._Upload.run). Error classes:

- 2xx: stored;
- 3xx: PermanentError naming the Location (the body is never sent again to another address);
- 408 / 429 / 5xx and network errors: TransientError (the engine's retries, then the sync fallback);
- any other 4xx: PermanentError naming the status and what to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlunsplit

from chunker import PartDigest, PartLimits
from uploader.config import UploadOptions
from uploader.errors import PermanentError, TransientError, UsageError
from uploader.redact import redact_url
from uploader.retry import RETRYABLE_STATUS, parse_retry_after
from uploader.targets.base import Completed, NotPartFlow, check_user_headers, split_url
from uploader.wire import FileSlice, HttpRequest, HttpResponse

METHODS = ("PUT", "POST")
DEFAULT_TYPE = "application/octet-stream"  # what tus sends as filetype for an unknown name
# Set by chunkhaul (Content-Type from --content-type) or by the transport (framing).
_RESERVED_HEADERS = frozenset({"content-length", "content-type", "host", "transfer-encoding"})
_UNLIMITED = 1 << 62  # a plain server states no size limit; it answers 413 if it has one
_BODY_SNIPPET = 200  # characters of a refusal's body worth showing (HTML pages are long)
# What to check, by status; the rest get _CHECK_OTHER.
_CHECKS = {
    401: "check the credentials (--header 'Authorization: ...' or user:password@ in the URL)",
    403: "check the credentials (--header 'Authorization: ...' or user:password@ in the URL) and "
         "that they may write there",
    404: "check the URL's path",
    405: "check the URL and the method (--method PUT or POST)",
    411: "the server wants a Content-Length it did not get; check for a proxy in between",
    413: "the server refuses a body this large; check its upload limit",
    415: "check the media type (--content-type)",
}
_CHECK_OTHER = "check the URL, the method (--method) and the headers the server expects (--header)"


def parse_http_url(destination: str) -> str:
    """`http(s)://HOST/PATH` as given (a fragment dropped: it never reaches a server)."""
    parts = split_url(destination)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{redact_url(destination)!r} is not an HTTP URL: use http(s)://HOST/PATH")
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path or "/", parts.query, ""))


def _snippet(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= _BODY_SNIPPET else text[: _BODY_SNIPPET - 3] + "..."


class HttpProtocol(NotPartFlow):
    kind: str = "http"
    # One request carries the file: the limits only keep the engine's generic code (plan,
    # fallback size check) from splitting or refusing it.
    limits: PartLimits = PartLimits(min_part=_UNLIMITED, max_part=_UNLIMITED, max_parts=1, max_object=_UNLIMITED)
    part_digests: tuple[str, ...] = ()  # a plain server verifies nothing we could send
    single_shot_max: int = _UNLIMITED

    def __init__(self, url: str, *, source: str, method: str = "PUT", headers: Mapping[str, str] | None = None,
                 content_type: str | None = None) -> None:
        if method not in METHODS:
            raise UsageError(f"--method must be PUT or POST, got {method!r}")
        self.url = url
        self.source = source
        self.method = method
        self.user_headers = check_user_headers(headers or {}, _RESERVED_HEADERS)
        self.content_type = content_type or DEFAULT_TYPE

    def destination(self) -> str:
        return redact_url(self.url)

    @property
    def label(self) -> str:
        return f"{self.method} {self.destination()}"

    def single_shot(self, size: int, digest: PartDigest | None) -> HttpRequest:
        """The file as the raw body; re-read from disk on every attempt (FileSlice)."""
        headers = {**self.user_headers, "Content-Type": self.content_type, "Content-Length": str(size)}
        body: bytes | FileSlice = FileSlice(self.source, 0, size) if size else b""
        return HttpRequest(self.method, self.url, headers, body, self.label, follow_redirects=False)

    def parse_single_shot(self, resp: HttpResponse) -> Completed:
        if not resp.ok:
            raise self.error(resp)
        return Completed((resp.header("etag") or "").strip('"') or None, self.destination())

    def error(self, resp: HttpResponse) -> Exception:
        """Classify a non-2xx reply once, here."""
        detail = f"{self.label}: HTTP {resp.status}"
        if 300 <= resp.status < 400:  # its body is a "moved" page: the Location says it all
            where = resp.header("location")
            to = f" to {redact_url(where)}" if where else " (no Location given)"
            return PermanentError(f"{detail}: the server redirects{to}; a {self.method} body is not sent on "
                                  "to another address: check the URL and give the final one", status=resp.status)
        said = _snippet(resp.body)
        detail += f" ({said})" if said else ""
        if resp.status in RETRYABLE_STATUS or resp.status >= 500:
            return TransientError(detail, status=resp.status, retry_after=parse_retry_after(resp.header("retry-after")))
        return PermanentError(f"{detail}; {_CHECKS.get(resp.status, _CHECK_OTHER)}", status=resp.status)

    def abort(self, session: Mapping[str, Any]) -> HttpRequest:
        raise NotImplementedError("http: nothing to abort, no session is kept")


def http_protocol(options: UploadOptions, source: str) -> HttpProtocol:
    return HttpProtocol(parse_http_url(options.destination), source=source, method=(options.method or "PUT").upper(),
                        headers=options.headers, content_type=options.media_type)
