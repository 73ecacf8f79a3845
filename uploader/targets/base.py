"""What the engine needs from a target whose parts go up in parallel (S3, Procore)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from chunker import Part, PartDigest, PartLimits
from resume import ServerPart
from uploader.errors import UsageError
from uploader.redact import redact_url
from uploader.wire import HttpRequest, HttpResponse


@dataclass(frozen=True)
class Completed:
    etag: str | None
    location: str  # redacted, printable
    upload_id: str | None = None


@dataclass(frozen=True)
class PartListing:
    parts: Sequence[ServerPart]
    next_marker: str | None  # None: no more pages


class MultipartProtocol(Protocol):
    """Sans-I/O: each method builds a request or reads a response, nothing else.

    `session` is the target's resumable state as stored in the manifest (upload
    id, segment URLs, ...); it must never contain a credential.
    """

    kind: str
    limits: PartLimits
    part_digests: tuple[str, ...]  # digests each part needs besides xxh3_128
    single_shot_max: int  # largest file the single-shot request accepts

    def destination(self) -> str: ...
    def create(self, size: int, part_size: int) -> HttpRequest: ...
    def parse_create(self, resp: HttpResponse) -> dict[str, Any]: ...
    def list_parts(self, session: Mapping[str, Any], marker: str | None) -> HttpRequest: ...
    def parse_list_parts(self, resp: HttpResponse) -> PartListing: ...
    def upload_part(self, session: Mapping[str, Any], part: Part, digest: PartDigest) -> HttpRequest: ...
    def parse_upload_part(self, resp: HttpResponse, part: Part) -> str: ...
    def complete(self, session: Mapping[str, Any], etags: Sequence[tuple[int, str]]) -> HttpRequest: ...
    def parse_complete(self, resp: HttpResponse, session: Mapping[str, Any]) -> Completed: ...
    def abort(self, session: Mapping[str, Any]) -> HttpRequest: ...
    def single_shot(self, size: int, digest: PartDigest | None) -> HttpRequest: ...
    def parse_single_shot(self, resp: HttpResponse) -> Completed: ...
    def local_etag(self, digest: PartDigest) -> str | None: ...


class NotPartFlow:
    """The engine's part-flow methods, for a target that uploads another way (tus: HEAD and
    PATCH in tus_flow; Procore: procore_flow; plain HTTP: one request). They complete
    MultipartProtocol and are never called; a target overrides the ones it does use."""

    kind: str

    def _not_used(self, method: str) -> NoReturn:
        raise NotImplementedError(f"{self.kind} uploads do not go through the engine's {method}()")

    def create(self, size: int, part_size: int) -> HttpRequest:
        self._not_used("create")

    def parse_create(self, resp: HttpResponse) -> dict[str, Any]:
        self._not_used("parse_create")

    def list_parts(self, session: Mapping[str, Any], marker: str | None) -> HttpRequest:
        self._not_used("list_parts")

    def parse_list_parts(self, resp: HttpResponse) -> PartListing:
        self._not_used("parse_list_parts")

    def upload_part(self, session: Mapping[str, Any], part: Part, digest: PartDigest) -> HttpRequest:
        self._not_used("upload_part")

    def parse_upload_part(self, resp: HttpResponse, part: Part) -> str:
        self._not_used("parse_upload_part")

    def complete(self, session: Mapping[str, Any], etags: Sequence[tuple[int, str]]) -> HttpRequest:
        self._not_used("complete")

    def parse_complete(self, resp: HttpResponse, session: Mapping[str, Any]) -> Completed:
        self._not_used("parse_complete")

    def local_etag(self, digest: PartDigest) -> str | None:
        return None  # no ETag made of a digest to compare a listed part with


@runtime_checkable
class PartChecksums(Protocol):
    """Optional, on top of MultipartProtocol: a target whose session fixes the part checksum
    and whose Complete repeats it (S3 created with x-amz-checksum-algorithm: CRC32). Apart,
    so targets without it (tus, Procore) need not know about it."""

    etag_digests: tuple[str, ...]  # digests `local_etag` needs (may differ from part_digests)

    def use_session(self, session: Mapping[str, Any]) -> None: ...
    def complete_with_checksums(self, session: Mapping[str, Any],
                                parts: Sequence[tuple[int, str, str | None]]) -> HttpRequest: ...


def check_user_headers(headers: Mapping[str, str], reserved: Collection[str]) -> dict[str, str]:
    """--header values a target sends as given; refused when the target sets that header itself
    (`reserved`, lower case): two values for one header would reach the server."""
    for name in headers:
        if name.lower() in reserved:
            instead = "; give the type with --content-type" if name.lower() == "content-type" else ""
            raise UsageError(f"--header {name}: chunkhaul sets this header itself{instead}")
    return dict(headers)


def split_url(destination: str) -> SplitResult:
    """urlsplit, with what it would raise later (a bad port, an unclosed bracket) said now as
    a one-line UsageError that never echoes user:password."""
    try:
        parts = urlsplit(destination)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"{redact_url(destination)!r} is not a valid URL ({exc})") from None
    return parts
