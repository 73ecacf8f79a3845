"""tus 1.0.0 (https://tus.io/protocols/resumable-upload), sans-I/O.

Builds HttpRequests and reads HttpResponses; the orchestration (OPTIONS, create or HEAD,
PATCH loop, partial uploads + concatenation) lives in uploader.tus_flow. Error classes:

- 404 / 410 on an upload URL: SessionLost (the upload is gone: create a new one);
- 409 on PATCH: OffsetConflict, 423: UploadLocked, 460: ChecksumMismatch - all transient,
  and the flow HEADs before sending again;
- 408 / 429 / 5xx and malformed replies: TransientError;
- any other 4xx: PermanentError.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlunsplit

from chunker import PartDigest, PartLimits
from uploader.config import UploadOptions
from uploader.errors import PermanentError, SessionLost, TransientError, UsageError
from uploader.redact import redact_url
from uploader.retry import RETRYABLE_STATUS, parse_retry_after
from uploader.targets.base import Completed, NotPartFlow, check_user_headers, split_url
from uploader.wire import FileSlice, HttpRequest, HttpResponse

TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
STATUS_CHECKSUM_MISMATCH = 460
# Strongest first; chunker.digest_range computes each of these.
CHECKSUM_PREFERENCE = ("sha256", "sha1", "md5", "crc32")
# Not ours to set: the transport owns framing, and tus owns its own headers.
_RESERVED_HEADERS = {"content-length", "content-type", "host", "transfer-encoding", "tus-resumable",
                     "upload-offset", "upload-length", "upload-metadata", "upload-concat",
                     "upload-checksum"}
_METADATA_KEY = re.compile(r"^[^\s,]+$")
# Without --part-size one PATCH streams the rest of the upload (as tus-js-client does): a
# server keeps what arrived before a broken connection, so nothing is lost, and no time goes
# to per-PATCH round trips (512 MiB to @tus/server on loopback: 32 MiB chunks cost ~0.2 s
# more). Chunks of DEFAULT_CHUNK are still used where a PATCH body must be bounded: for a
# server checking Upload-Checksum (it verifies and drops whole bodies), after a 413, and to
# size the partial uploads of concatenation and creation-with-upload.
DEFAULT_CHUNK = 32 * 1024 * 1024
_UNLIMITED = 1 << 62


class OffsetConflict(TransientError):
    """409: our Upload-Offset is not the server's; HEAD and continue from its offset."""


class UploadLocked(TransientError):
    """423: another request holds the upload; back off, HEAD, retry."""


class ChecksumMismatch(TransientError):
    """460: the chunk arrived corrupted and was discarded; send it again."""


@dataclass(frozen=True)
class ServerInfo:
    """What OPTIONS told us about the server."""

    versions: tuple[str, ...] = (TUS_VERSION,)
    extensions: frozenset[str] = frozenset({"creation"})
    max_size: int | None = None
    checksum_algorithms: tuple[str, ...] = ()

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    @property
    def checksum(self) -> str | None:
        """The best algorithm both sides know, or None (no Upload-Checksum then)."""
        if not self.supports("checksum"):
            return None
        return next((a for a in CHECKSUM_PREFERENCE if a in self.checksum_algorithms), None)


@dataclass(frozen=True)
class UploadState:
    """An upload as the server describes it (HEAD, PATCH or creation reply)."""

    offset: int
    length: int | None = None
    expires: float | None = None  # epoch seconds, from Upload-Expires


def parse_expires(value: str | None) -> float | None:
    """Upload-Expires is an RFC 9110 HTTP-date; an unreadable one is ignored, not fatal."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def encode_metadata(pairs: Mapping[str, str]) -> str | None:
    """`key base64(utf-8 value)` pairs joined by commas; None when there are no pairs,
    because the spec has no empty Upload-Metadata header."""
    items: list[str] = []
    for key, value in pairs.items():
        if not _METADATA_KEY.match(key):
            raise UsageError(f"--metadata key {key!r}: tus keys must be non-empty, without spaces or commas")
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        items.append(f"{key} {encoded}" if encoded else key)
    return ",".join(items) or None


def decode_metadata(header: str | None) -> dict[str, str]:
    """Inverse of encode_metadata (a key without value decodes to '')."""
    out: dict[str, str] = {}
    for pair in (header or "").split(","):
        key, _, value = pair.strip().partition(" ")
        if key:
            out[key] = base64.b64decode(value.strip()).decode("utf-8") if value.strip() else ""
    return out


def default_metadata(source: str, extra: Mapping[str, str], filetype: str | None = None) -> dict[str, str]:
    """filename and filetype (what tus-js-client and Uppy send), then the user's pairs."""
    filetype = filetype or mimetypes.guess_type(source)[0] or "application/octet-stream"
    return {"filename": os.path.basename(source), "filetype": filetype, **extra}


def checksum_header(algorithm: str, digest: PartDigest) -> str:
    """`Upload-Checksum: <algo> <base64 of the raw digest>`; crc32 as 4 big-endian bytes."""
    raw: bytes | None
    if algorithm == "crc32":
        raw = digest.crc32.to_bytes(4, "big") if digest.crc32 is not None else None
    else:
        raw = getattr(digest, algorithm)
    if raw is None:
        raise ValueError(f"{algorithm} was not computed for this chunk")
    return f"{algorithm} {base64.b64encode(raw).decode('ascii')}"


def tus_error(resp: HttpResponse, label: str) -> Exception:
    """Classify a non-2xx reply once, here."""
    reason = resp.body[:200].decode("utf-8", "replace").strip()
    detail = f"{label}: HTTP {resp.status}" + (f": {reason}" if reason else "")
    retry_after = parse_retry_after(resp.header("retry-after"))
    if resp.status in (404, 410):
        return SessionLost(detail)
    if resp.status == 409:
        return OffsetConflict(detail, status=409)
    if resp.status == 423:
        return UploadLocked(detail, status=423, retry_after=retry_after)
    if resp.status == STATUS_CHECKSUM_MISMATCH:
        return ChecksumMismatch(detail, status=resp.status)
    if resp.status in RETRYABLE_STATUS or resp.status >= 500:
        return TransientError(detail, status=resp.status, retry_after=retry_after)
    if resp.status == 413 and label.startswith("PATCH"):
        detail += " (the server refuses a request body this large: use a smaller --part-size)"
    elif resp.status == 413:
        detail += " (the server refuses uploads this large)"
    elif resp.status in (401, 403):
        detail += " (check the credentials passed with --header)"
    return PermanentError(detail, status=resp.status)


def _int_header(resp: HttpResponse, name: str, label: str) -> int | None:
    value = resp.header(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise TransientError(f"{label}: unreadable {name} {value!r}")
    return int(value)


class TusProtocol(NotPartFlow):
    """One file to one tus creation URL. Holds no credentials beyond the user's headers,
    which go on every request and never into the session (the manifest)."""

    kind: str = "tus"
    part_digests: tuple[str, ...] = ()
    single_shot_max: int = _UNLIMITED  # creation-with-upload has no size limit of its own

    def __init__(self, endpoint: str, *, source: str, headers: Mapping[str, str] | None = None,
                 metadata: Mapping[str, str] | None = None, chunk_size: int = DEFAULT_CHUNK,
                 stream: bool = False, name: str | None = None, content_type: str | None = None) -> None:
        self.endpoint = endpoint
        self.source = source
        self.name = name or os.path.basename(source)  # the user's name for it (a symlink's own)
        self.chunk_size = chunk_size
        self.stream = stream  # one PATCH for the rest of an upload, not chunk_size PATCHes
        # tus limits neither part count nor size; min_part = the chunk makes the engine's
        # plan_parts (the result's `parts`) count PATCH-sized chunks.
        self.limits = PartLimits(min_part=chunk_size, max_part=_UNLIMITED, max_parts=_UNLIMITED,
                                 max_object=_UNLIMITED)
        self.user_headers = _check_user_headers(headers or {})
        self.metadata = encode_metadata(default_metadata(self.name, metadata or {}, content_type))
        self.server = ServerInfo()  # replaced by what OPTIONS says
        self.known = False  # True once OPTIONS answered

    def destination(self) -> str:
        return redact_url(self.endpoint)

    def _headers(self, **extra: str) -> dict[str, str]:
        return {**self.user_headers, "Tus-Resumable": TUS_VERSION, **extra}

    # -- discovery ------------------------------------------------------------

    def options(self) -> HttpRequest:
        # The spec exempts OPTIONS from Tus-Resumable; auth headers still go along.
        return HttpRequest("OPTIONS", self.endpoint, dict(self.user_headers), None, "OPTIONS")

    def parse_options(self, resp: HttpResponse) -> ServerInfo:
        if resp.status in RETRYABLE_STATUS or resp.status >= 500 or resp.status in (401, 403):
            raise tus_error(resp, "OPTIONS")
        versions = _csv(resp.header("tus-version"))
        if resp.ok and not versions:
            # The spec makes Tus-Version mandatory in an OPTIONS reply: a 2xx without it is
            # some other HTTP server, and a POST there would create nothing we could resume.
            raise UsageError(f"{self.destination()} does not look like a tus server (its OPTIONS reply has "
                             "no Tus-Version header); check the upload URL")
        if not resp.ok:
            # Discovery is optional in tus: assume core + creation, let the POST decide.
            info = ServerInfo()
        else:
            if TUS_VERSION not in versions:
                raise PermanentError(f"the server speaks tus {', '.join(versions)}; chunkhaul speaks "
                                     f"{TUS_VERSION}", status=resp.status)
            max_size = _int_header(resp, "tus-max-size", "OPTIONS")
            info = ServerInfo(versions, frozenset(_csv(resp.header("tus-extension"))), max_size,
                              _csv(resp.header("tus-checksum-algorithm")))
        self.server, self.known = info, True
        self.part_digests = (info.checksum,) if info.checksum else ()
        return info

    def check_size(self, size: int) -> None:
        """Fail before any byte is sent when the server already said it is too large."""
        limit = self.server.max_size
        if limit is not None and size > limit:
            raise UsageError(f"{self.name} is {size:,} bytes; the tus server at "
                             f"{self.destination()} accepts at most {limit:,} bytes (Tus-Max-Size); "
                             "nothing was sent")

    # -- creation -------------------------------------------------------------

    def create_upload(self, size: int, *, first: FileSlice | None = None, checksum: str | None = None,
                      partial: bool = False, metadata: bool = True) -> HttpRequest:
        """POST: a new upload of `size` bytes; with `first`, creation-with-upload."""
        headers = self._headers(**{"Upload-Length": str(size)})
        if metadata and self.metadata:
            headers["Upload-Metadata"] = self.metadata
        if partial:
            headers["Upload-Concat"] = "partial"
        if first is not None:
            headers["Content-Type"] = OFFSET_TYPE
            if checksum:
                headers["Upload-Checksum"] = checksum
        label = "POST (create partial)" if partial else "POST (create)"
        return HttpRequest("POST", self.endpoint, headers, first if first is not None else b"", label)

    def create_final(self, partial_urls: Sequence[str]) -> HttpRequest:
        """concatenation: the final upload, made of the finished partial uploads in order."""
        headers = self._headers(**{"Upload-Concat": "final;" + " ".join(partial_urls)})
        if self.metadata:
            headers["Upload-Metadata"] = self.metadata
        return HttpRequest("POST", self.endpoint, headers, b"", "POST (concatenate)")

    def parse_created(self, resp: HttpResponse) -> tuple[str, UploadState]:
        """The new upload's absolute URL and what its creation reply says."""
        if resp.status in (404, 405, 410):
            # On the creation URL these mean "no tus endpoint here", not "upload gone".
            raise PermanentError(f"POST: HTTP {resp.status}: {redact_url(self.endpoint)} is not a tus "
                                 "creation URL", status=resp.status)
        if not resp.ok:
            raise tus_error(resp, "POST")
        location = resp.header("location")
        if not location:
            raise PermanentError("POST: the server created an upload but sent no Location", status=201)
        url = urljoin(self.endpoint, location.strip())
        offset = _int_header(resp, "upload-offset", "POST")
        return url, UploadState(offset or 0, None, parse_expires(resp.header("upload-expires")))

    # -- core -----------------------------------------------------------------

    def head(self, url: str) -> HttpRequest:
        return HttpRequest("HEAD", url, self._headers(), None, "HEAD")

    def parse_head(self, resp: HttpResponse) -> UploadState:
        if not resp.ok:
            raise _head_error(resp)
        offset = _int_header(resp, "upload-offset", "HEAD")
        if offset is None:
            # A proxy or a half-started server answered: ask again, never start over.
            raise TransientError("HEAD: reply has no Upload-Offset", status=resp.status)
        length = _int_header(resp, "upload-length", "HEAD")
        return UploadState(offset, length, parse_expires(resp.header("upload-expires")))

    def patch(self, url: str, offset: int, body: FileSlice, checksum: str | None = None) -> HttpRequest:
        """PATCH `body` at `offset`; the body is re-read from disk on every attempt."""
        headers = self._headers(**{"Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE})
        if checksum:
            headers["Upload-Checksum"] = checksum
        return HttpRequest("PATCH", url, headers, body, f"PATCH @{offset}+{body.length}")

    def parse_patch(self, resp: HttpResponse, label: str = "PATCH") -> UploadState:
        """The server's offset after the PATCH: the truth, whatever we think we sent."""
        if not resp.ok:
            raise tus_error(resp, label)
        offset = _int_header(resp, "upload-offset", label)
        if offset is None:
            raise TransientError(f"{label}: reply has no Upload-Offset")
        return UploadState(offset, None, parse_expires(resp.header("upload-expires")))

    # -- termination ----------------------------------------------------------

    def delete(self, url: str) -> HttpRequest:
        return HttpRequest("DELETE", url, self._headers(), None, "DELETE")

    def parse_delete(self, resp: HttpResponse) -> bool:
        """True when the upload is gone now (deleted, or already gone)."""
        if resp.ok or resp.status in (404, 410):
            return True
        raise tus_error(resp, "DELETE")

    def abort_requests(self, session: Mapping[str, Any]) -> list[HttpRequest]:
        """Every upload the session made: the main (or final) one and any partials."""
        urls = [session.get("upload_url")] + [p.get("url") for p in session.get("partials", [])]
        return [self.delete(u) for u in dict.fromkeys(urls) if isinstance(u, str) and u]

    # -- the engine's generic hooks (MultipartProtocol) ----------------------------

    def create(self, size: int, part_size: int) -> HttpRequest:
        return self.create_upload(size)

    def parse_create(self, resp: HttpResponse) -> dict[str, Any]:
        url, state = self.parse_created(resp)
        return {"upload_url": url, "upload_id": url, "expires": state.expires}

    def abort(self, session: Mapping[str, Any]) -> HttpRequest:
        """DELETE the main upload (termination); abort_requests covers partials too."""
        url = session.get("upload_url") or session.get("upload_id")
        if not isinstance(url, str) or not url:
            raise ValueError("the session names no tus upload")
        return self.delete(url)

    def single_shot(self, size: int, digest: PartDigest | None) -> HttpRequest:
        """creation-with-upload of the whole file in one POST (the generic fallback's shape)."""
        checksum = None
        algorithm = self.server.checksum
        if digest is not None and algorithm is not None and algorithm in self.part_digests:
            checksum = checksum_header(algorithm, digest)
        return self.create_upload(size, first=FileSlice(self.source, 0, size), checksum=checksum)

    def parse_single_shot(self, resp: HttpResponse) -> Completed:
        url, state = self.parse_created(resp)
        expected = os.path.getsize(self.source)
        if state.offset != expected:
            raise PermanentError(f"POST: the server kept {state.offset} of {expected} bytes of the "
                                 "creation-with-upload body (it may not offer creation-with-upload)")
        return self.completed(url)

    def completed(self, url: str) -> Completed:
        shown = redact_url(url)
        return Completed(None, shown, shown)


def _head_error(resp: HttpResponse) -> Exception:
    """HEAD: 404/410 mean gone; auth failures are permanent; anything else may pass."""
    if resp.status in (404, 410):
        return SessionLost(f"HEAD: HTTP {resp.status}")
    if resp.status in (401, 403):
        return tus_error(resp, "HEAD")
    # A 502 from a proxy, a 423, an odd 4xx from a flaky gateway: retried, never a restart.
    return TransientError(f"HEAD: HTTP {resp.status}", status=resp.status,
                          retry_after=parse_retry_after(resp.header("retry-after")))


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _check_user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return check_user_headers(headers, _RESERVED_HEADERS)


def parse_tus_url(destination: str) -> str:
    """`tus+https://host/files/` or `https://host/files/` -> the http(s) creation URL."""
    parts = split_url(destination)
    scheme = parts.scheme.lower().removeprefix("tus+")
    if scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{redact_url(destination)!r} is not a tus endpoint: use "
                         "tus+https://HOST/PATH/ or https://HOST/PATH/ with --protocol tus")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def tus_protocol(options: UploadOptions, source: str) -> TusProtocol:
    chosen = isinstance(options.part_size, int)
    chunk = options.part_size if isinstance(options.part_size, int) else DEFAULT_CHUNK
    return TusProtocol(parse_tus_url(options.destination), source=source, headers=options.headers,
                       metadata=options.metadata, chunk_size=chunk, stream=not chosen, name=options.file_name,
                       content_type=options.content_type)

