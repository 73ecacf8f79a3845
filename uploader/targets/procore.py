"""Procore's upload APIs: v2.1 unified and v1.1 segmented uploads, and the v1.1 POST form.

Sans-I/O: builds requests and reads responses, nothing else. The contract, with citations of
Procore's docs, is docs/procore-contract.md ("contract" below). What matters most here:

- API calls carry `Authorization: Bearer` and `Procore-Company-Id`; storage requests (the
  presigned part PUTs, the POST form) never do: storage refuses a second auth mechanism.
- Every segment's size, sha256 and md5 are declared when the upload is created, so the
  whole file is hashed first (uploader/procore_flow.py does that; this module never reads it).
- Part URLs and their headers are opaque: sent exactly as given.
- v2.1 renews expired URLs with GET on the upload and records partial progress with a PATCH
  (null for parts not sent yet); v1.1 has neither, its URLs live one hour.

The access token lives in this object only: never in a session (the manifest), a request
label or an error message.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from chunker import GiB, MiB, Part, PartDigest, PartLimits
from uploader.config import PROCORE_PRODUCTION_URL as PRODUCTION_URL
from uploader.config import PROCORE_TOKEN_ENV as TOKEN_ENV
from uploader.config import UploadOptions
from uploader.errors import PermanentError, SessionLost, TransientError, UploadFailed, UrlExpired, UsageError
from uploader.retry import RETRYABLE_STATUS, parse_retry_after
from uploader.targets.base import Completed, NotPartFlow
from uploader.targets.s3 import error_code_and_message
from uploader.wire import FileSlice, FormBody, HttpRequest, HttpResponse

Api = Literal["v2.1", "v1.1"]
V21: Api = "v2.1"
V11: Api = "v1.1"

TOKEN_HINT = f"set {TOKEN_ENV} or pass --token-file FILE"

# Contract "v2.1 unified upload": parts more than 5 MiB (exactly 5 MiB is refused) and at most
# "100 MB" with the unit undefined, so 100,000,000 bytes is the ceiling safe under both readings.
V21_LIMITS = PartLimits(min_part=5 * MiB, min_part_exclusive=True, max_part=100_000_000,
                        max_parts=10_000, max_object=10_000 * 100_000_000)
# Contract "v1.1 segmented upload": segments at least 5 MB (S3 reads it as MiB) and at most
# 5 GB, except the last; at most 10,000 (the S3 multipart limit underneath).
V11_LIMITS = PartLimits(min_part=5 * MiB, max_part=5_000_000_000, max_parts=10_000,
                        max_object=10_000 * 5_000_000_000)
# Contract "v1.1 segmented upload", 5: the upload must start within one hour of creation.
V11_START_WINDOW = 3600.0
# The digests each segment declares (contract: sha256 required, md5 optional but it lets
# storage verify every PUT with Content-MD5).
SEGMENT_DIGESTS = ("md5", "sha256")
# Storage error codes meaning "these bytes arrived damaged": send the part again.
CORRUPT_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}
TRANSIENT_CODES = CORRUPT_CODES | {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable"}


@dataclass(frozen=True)
class ProcoreTarget:
    """procore://COMPANY_ID[/projects/PROJECT_ID]"""

    company_id: int
    project_id: int | None = None

    @classmethod
    def parse(cls, url: str) -> ProcoreTarget:
        parts = urlsplit(url)
        usage = "use procore://COMPANY_ID or procore://COMPANY_ID/projects/PROJECT_ID"
        if parts.scheme != "procore" or parts.query or parts.fragment:
            raise UsageError(f"{url}: not a Procore destination; {usage}")
        path = [p for p in parts.path.split("/") if p]
        if not parts.netloc.isdigit() or (path and (len(path) != 2 or path[0] != "projects"
                                                    or not path[1].isdigit())):
            raise UsageError(f"{url}: {usage} (ids are numbers)")
        return cls(int(parts.netloc), int(path[1]) if path else None)

    def __str__(self) -> str:
        project = f"/projects/{self.project_id}" if self.project_id is not None else ""
        return f"procore://{self.company_id}{project}"


@dataclass(frozen=True)
class SegmentDigest:
    sha256: str  # hex
    md5: str  # hex


@dataclass(frozen=True)
class FileDigests:
    """What creation declares: every segment's digests, and (v2.1) the whole file's."""

    segments: tuple[SegmentDigest, ...]
    sha256: str | None = None
    md5: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "md5": self.md5,
                "segments": [[s.sha256, s.md5] for s in self.segments]}

    @classmethod
    def from_json(cls, data: Any) -> FileDigests | None:
        """None when the stored value is missing or malformed (then the file is hashed again)."""
        try:
            segments = tuple(SegmentDigest(str(s), str(m)) for s, m in data["segments"])
            return cls(segments, data.get("sha256"), data.get("md5"))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class PartUrl:
    """Where and how to PUT one part, as the API handed it out."""

    url: str
    headers: Mapping[str, str]
    expires_at: float | None  # unix seconds; None when the API does not say (v1.1)
    generation: int  # which create/GET reply it came from, to coalesce renewals


@dataclass(frozen=True)
class UploadStatus:
    """A v2.1 GET: the upload's status and the parts it has not recorded yet."""

    status: str
    pending: frozenset[int]
    renewed: int  # fresh URLs received


def _json(resp: HttpResponse, label: str) -> Any:
    try:
        return json.loads(resp.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise TransientError(f"{label}: unreadable reply (HTTP {resp.status}, not JSON)") from None


def _api_message(resp: HttpResponse) -> str:
    """The server's own words, from whichever field Procore used (contract: 4xx bodies
    "often" carry message or errors; 401 uses OAuth's error_description)."""
    try:
        data = json.loads(resp.body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        for key in ("error_description", "message", "error", "errors"):
            value = data.get(key)
            if isinstance(value, list):
                value = "; ".join(str(v) for v in value)
            if value:
                return str(value)[:300]
    return resp.body.decode("utf-8", "replace").strip().splitlines()[0][:300] if resp.body.strip() else ""


def rate_limit_wait(resp: HttpResponse, clock: Callable[[], float]) -> float | None:
    """Seconds to wait before the next API call: until X-Rate-Limit-Reset (unix seconds,
    contract "Rate limits") or Retry-After, whichever is later; None when neither is given."""
    waits: list[float] = []
    reset = resp.header("x-rate-limit-reset")
    if reset and resp.status == 429:
        with contextlib.suppress(ValueError):
            waits.append(max(0.0, float(reset) - clock()))
    after = parse_retry_after(resp.header("retry-after"), clock)
    if after is not None:
        waits.append(after)
    return max(waits) if waits else None


def api_error(resp: HttpResponse, label: str, target: ProcoreTarget,
              clock: Callable[[], float] = time.time) -> Exception:
    """Classify a failed Procore API call, with a message that names the fix."""
    message = _api_message(resp)
    detail = f"{label}: Procore answered HTTP {resp.status}" + (f" ({message})" if message else "")
    if resp.status == 429:
        wait = rate_limit_wait(resp, clock)
        when = f"; waiting {wait:.0f}s until the limit resets" if wait is not None else ""
        return TransientError(f"{label}: rate limited by Procore (HTTP 429){when}", status=429, retry_after=wait)
    if resp.status in RETRYABLE_STATUS:
        return TransientError(detail, status=resp.status, retry_after=rate_limit_wait(resp, clock))
    if resp.status == 401:
        return PermanentError(
            f"{detail}: the access token is missing, expired (Procore tokens last 1.5 hours) or revoked. "
            f"Get a fresh token, {TOKEN_HINT}, then run the same command again to resume",
            status=401, code="invalid_token")
    if resp.status == 404 and label == "Procore create upload":
        where = f"project {target.project_id} of company {target.company_id}" if target.project_id is not None \
            else f"company {target.company_id}"
        return PermanentError(f"{detail}: {where} was not found, or this user cannot see it; check the ids "
                              "in the destination", status=404)
    if resp.status == 403:
        return PermanentError(
            f"{detail}: Procore's API refused access to company {target.company_id}; check the company id "
            "in the destination, that your app is installed in that company, and that the token's user "
            "may upload there (and created this upload)", status=403)
    return PermanentError(detail, status=resp.status)


def storage_error(resp: HttpResponse, label: str) -> Exception:
    """Classify a failed storage request (a part PUT or the POST form): S3-style XML."""
    code, message = error_code_and_message(resp.body)
    detail = (f"{label}: storage answered HTTP {resp.status}" + (f" {code}" if code else "")
              + (f": {message}" if message else ""))
    if resp.status == 403 and "expired" in message.lower():
        return UrlExpired(detail, status=403)
    if code == "NoSuchUpload" or resp.status == 404:
        return SessionLost(detail)
    if resp.status in RETRYABLE_STATUS or code in TRANSIENT_CODES:
        return TransientError(detail, status=resp.status, retry_after=parse_retry_after(resp.header("retry-after")))
    if resp.status == 403:
        detail += (" (the storage service behind Procore refused the presigned URL or its headers; "
                   "this is not Procore's API refusing the token)")
    return PermanentError(detail, status=resp.status, code=code or None)


def _part_number(item: Mapping[str, Any], index: int) -> int:
    number = item.get("part_number")
    return number if isinstance(number, int) and not isinstance(number, bool) else index + 1


class ProcoreProtocol(NotPartFlow):
    """One Procore upload of one file: the request builders, the response readers, and the
    part URLs the API handed out (renewed in place; v2.1 never persists them)."""

    kind: str = "procore"
    # Digests come from the pre-creation hash (procore_flow), not from the engine's per-part
    # pass; the POST form carries none. So the engine hashes nothing extra.
    part_digests: tuple[str, ...] = ()
    single_shot_max: int = 5 * GiB  # an S3 POST form's limit

    def __init__(self, target: ProcoreTarget, *, api: Api, base_url: str, token: str, source: str,
                 clock: Callable[[], float] = time.time, name: str | None = None,
                 content_type: str | None = None) -> None:
        if api == V21 and target.project_id is None:
            raise UsageError(f"{target}: v2.1 uploads exist only in a project; use "
                             f"{target}/projects/PROJECT_ID, or --procore-api v1.1 for a company upload")
        self.target = target
        self.api: Api = api
        self.base_url = base_url.rstrip("/")
        self.source = source
        self.name = name or source.replace("\\", "/").rsplit("/", 1)[-1]  # the user's name (a symlink's own)
        self.content_type = content_type or content_type_of(self.name)
        self.limits = V21_LIMITS if api == V21 else V11_LIMITS
        self.clock = clock
        self._token = token
        self._urls: dict[int, PartUrl] = {}
        self.generation = 0
        self._form: tuple[str, list[tuple[str, str]], str] | None = None  # url, fields, uuid

    def destination(self) -> str:
        # The API version and host are part of the name: the manifest of a v1.1 upload
        # (or of the sandbox) must never be resumed against v2.1 (or production).
        return f"{self.target} (API {self.api} at {urlsplit(self.base_url).netloc})"

    # -- API requests -----------------------------------------------------------------

    def _uploads_path(self, api: Api | None = None) -> str:
        t, api = self.target, api or self.api
        if api == V21:
            return f"/rest/v2.1/companies/{t.company_id}/projects/{t.project_id}/uploads"
        if t.project_id is not None:
            return f"/rest/v1.1/projects/{t.project_id}/uploads"
        return f"/rest/v1.1/companies/{t.company_id}/uploads"

    def _api(self, method: str, path: str, label: str, body: Any = None) -> HttpRequest:
        headers = {"Authorization": f"Bearer {self._token}",
                   "Procore-Company-Id": str(self.target.company_id), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, separators=(",", ":")).encode()
        return HttpRequest(method, self.base_url + path, headers, data, label)

    def _parse_api(self, resp: HttpResponse, label: str) -> Any:
        if not resp.ok:
            raise api_error(resp, label, self.target, self.clock)
        return _json(resp, label)

    def create_upload(self, file_name: str, content_type: str, parts: Sequence[Part],
                      digests: FileDigests) -> HttpRequest:
        segments = [{"size": p.length, "sha256": d.sha256, "md5": d.md5}
                    for p, d in zip(parts, digests.segments, strict=True)]
        body: dict[str, Any]
        if self.api == V21:
            body = {"file_name": file_name, "file_size": sum(p.length for p in parts),
                    "content_type": content_type, "sha256": digests.sha256, "md5": digests.md5,
                    "part_size": parts[0].length, "segments": segments}
        else:
            body = {"response_filename": file_name, "response_content_type": content_type,
                    "segments": segments}
        return self._api("POST", self._uploads_path(), "Procore create upload", body)

    def parse_created(self, resp: HttpResponse, parts: Sequence[Part]) -> dict[str, Any]:
        """The session to keep in the manifest; the part URLs stay in this object (v2.1)
        or go in the session too (v1.1: no way to fetch them again)."""
        data = self._parse_api(resp, "Procore create upload")
        body = data.get("data") if self.api == V21 and isinstance(data, dict) else data
        upload_id = body.get("upload_id" if self.api == V21 else "uuid") if isinstance(body, dict) else None
        segments = body.get("segments") if isinstance(body, dict) else None
        if not isinstance(upload_id, str) or not isinstance(segments, list) or len(segments) != len(parts):
            raise PermanentError(f"Procore create upload: unexpected reply (no id, or not {len(parts)} segments)")
        self._take_urls(segments, {p.number: p.length for p in parts})
        session: dict[str, Any] = {"api": self.api, "upload_id": upload_id, "created_at": self.clock()}
        if self.api == V11:
            session["urls"] = [{"url": u.url, "headers": dict(u.headers)}
                               for _, u in sorted(self._urls.items())]
        return session

    def _take_urls(self, segments: Sequence[Any], sizes: Mapping[int, int],
                   numbers: Sequence[int] | None = None) -> int:
        """Adopt the URLs of a create or GET reply; returns how many were adopted."""
        self.generation += 1
        for index, item in enumerate(segments):
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                raise PermanentError("Procore: a segment in the reply has no url")
            number = numbers[index] if numbers is not None else _part_number(item, index)
            headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
            declared = next((v for k, v in headers.items() if k.lower() == "content-length"), None)
            if number not in sizes or (declared is not None and declared != str(sizes[number])):
                raise PermanentError(f"Procore: segment {number} in the reply does not match the plan")
            expires = item.get("url_expires_at")
            self._urls[number] = PartUrl(item["url"], headers,
                                         float(expires) if isinstance(expires, int | float) else None,
                                         self.generation)
        return len(segments)

    def adopt(self, session: Mapping[str, Any], sizes: Mapping[int, int]) -> None:
        """v1.1 resume: the stored URLs, unless the start window has passed (then the
        upload is as good as lost: the caller creates a new one)."""
        if self.api != V11:
            return
        age = self.clock() - float(session.get("created_at", 0))
        if age >= V11_START_WINDOW:
            raise SessionLost(f"v1.1 upload {session.get('upload_id')} was created {age / 60:.0f} minutes ago "
                              "and its URLs only last an hour")
        urls = session.get("urls")
        if not isinstance(urls, list) or len(urls) != len(sizes):
            raise SessionLost("the manifest holds no part URLs for the v1.1 upload")
        self._take_urls(urls, sizes, numbers=sorted(sizes))

    def status(self, session: Mapping[str, Any]) -> HttpRequest:
        """v2.1 GET: status, plus fresh URLs for every part not recorded yet."""
        return self._api("GET", f"{self._uploads_path()}/{session['upload_id']}", "Procore GET upload")

    def parse_status(self, resp: HttpResponse, sizes: Mapping[int, int],
                     reported: Sequence[int] = ()) -> UploadStatus:
        """`reported`: parts a PATCH recorded, used only when the reply does not number its
        segments (the documented shape): then they are the unreported parts, in order."""
        if resp.status == 404:
            raise SessionLost(f"Procore GET upload: HTTP 404 ({_api_message(resp) or 'not found'}); "
                              "the upload expired or was deleted")
        data = self._parse_api(resp, "Procore GET upload")
        body = data.get("data") if isinstance(data, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("segments", []), list):
            raise TransientError("Procore GET upload: unexpected reply")
        segments = body.get("segments") or []
        numbered = all(isinstance(s, dict) and "part_number" in s for s in segments)
        numbers = None if numbered else [n for n in sorted(sizes) if n not in set(reported)]
        if numbers is not None and len(numbers) != len(segments):
            raise SessionLost("Procore GET upload: cannot tell which part each renewed URL is for")
        renewed = self._take_urls(segments, sizes, numbers)
        pending = frozenset(_part_number(s, i) for i, s in enumerate(segments)) if numbered else frozenset(
            numbers or ())
        return UploadStatus(str(body.get("status", "")), pending, renewed)

    def progress(self, session: Mapping[str, Any], etags: Sequence[str | None]) -> HttpRequest:
        """v2.1 PATCH with part_etags in order, null for parts not sent yet: records partial
        progress; with no null left it completes the upload."""
        return self._api("PATCH", f"{self._uploads_path()}/{session['upload_id']}", "Procore PATCH upload",
                         {"part_etags": list(etags)})

    def finish(self, session: Mapping[str, Any], etags: Sequence[str]) -> HttpRequest:
        if self.api == V21:
            return self.progress(session, etags)
        return self._api("PATCH", f"{self._uploads_path()}/{session['upload_id']}", "Procore complete upload",
                         {"segments": [{"etag": e} for e in etags]})

    def parse_patch(self, resp: HttpResponse) -> str:
        """A PATCH reply's status ("receiving", "complete", ...). 404: the upload is gone."""
        if resp.status == 404:
            raise SessionLost(f"Procore PATCH upload: HTTP 404 ({_api_message(resp) or 'not found'})")
        data = self._parse_api(resp, "Procore PATCH upload")
        body = data.get("data", data) if isinstance(data, dict) else {}
        return str(body.get("status", "")) if isinstance(body, dict) else ""

    def completed(self, session: Mapping[str, Any]) -> Completed:
        return Completed(None, self.destination(), str(session["upload_id"]))

    # -- storage requests -------------------------------------------------------------

    def part_url(self, number: int) -> PartUrl:
        url = self._urls.get(number)
        if url is None:
            raise SessionLost(f"Procore handed out no URL for part {number}")
        return url

    def expiring(self, number: int, margin: float) -> bool:
        expires = self.part_url(number).expires_at
        return expires is not None and expires - self.clock() < margin

    def put_part(self, part: Part) -> HttpRequest:
        """The PUT exactly as the API described it: its URL, its headers, no token. Only
        Content-Length's spelling is normalised, so it is sent once."""
        target = self.part_url(part.number)
        headers = {k: v for k, v in target.headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(part.length)
        if self.api == V11 and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"  # contract, v1.1 step 3
        return HttpRequest("PUT", target.url, headers, FileSlice(self.source, part.offset, part.length),
                           f"part {part.number} PUT")

    def parse_put(self, resp: HttpResponse, part: Part) -> str:
        if not resp.ok:
            raise storage_error(resp, f"part {part.number} PUT")
        etag = (resp.header("etag") or "").strip().strip('"')
        if not etag:
            raise TransientError(f"part {part.number} PUT: storage replied without an ETag")
        return etag

    # -- single shot: v1.1 create without segments, then the S3 POST form ----------------

    def prepare_single_shot(self, size: int) -> HttpRequest:
        """A fresh form per attempt: its policy expires like the segment URLs do."""
        body = {"response_filename": self.name, "response_content_type": self.content_type}
        return self._api("POST", self._uploads_path(V11), "Procore create upload (single shot)", body)

    def parse_prepare_single_shot(self, resp: HttpResponse) -> None:
        data = self._parse_api(resp, "Procore create upload (single shot)")
        url, fields, uuid = (data.get(k) for k in ("url", "fields", "uuid")) if isinstance(data, dict) else (
            None, None, None)
        if not isinstance(url, str) or not isinstance(fields, dict) or not isinstance(uuid, str):
            raise PermanentError("Procore create upload (single shot): reply has no url, fields or uuid")
        self._form = (url, [(str(k), str(v)) for k, v in fields.items()], uuid)

    def single_shot(self, size: int, digest: PartDigest | None) -> HttpRequest:
        if self._form is None:
            raise UploadFailed("the POST form is not prepared: prepare_single_shot comes first")
        url, fields, _ = self._form
        form = FormBody(fields, "file", FileSlice(self.source, 0, size), self.name, self.content_type)
        headers = {"Content-Type": form.content_type, "Content-Length": str(form.length)}
        return HttpRequest("POST", url, headers, form, "POST form upload")

    def parse_single_shot(self, resp: HttpResponse) -> Completed:
        if not resp.ok:
            raise storage_error(resp, "POST form upload")
        assert self._form is not None
        return Completed(None, self.destination(), self._form[2])

    # -- the engine's generic interface --------------------------------------------------

    def abort(self, session: Mapping[str, Any]) -> HttpRequest:
        raise UploadFailed("Procore has no API to delete an unfinished upload; it expires on its own")

    def abort_requests(self, session: Mapping[str, Any]) -> list[HttpRequest]:
        return []  # `chunkhaul abort`: nothing to delete server-side, only the manifest

    # The generic multipart flow does not fit Procore (creation needs every digest first,
    # URLs come from the API): procore_flow drives the methods above; these four it shares.
    def upload_part(self, session: Mapping[str, Any], part: Part, digest: PartDigest) -> HttpRequest:
        return self.put_part(part)

    def parse_upload_part(self, resp: HttpResponse, part: Part) -> str:
        return self.parse_put(resp, part)

    def complete(self, session: Mapping[str, Any], etags: Sequence[tuple[int, str]]) -> HttpRequest:
        return self.finish(session, [e for _, e in sorted(etags)])

    def parse_complete(self, resp: HttpResponse, session: Mapping[str, Any]) -> Completed:
        self.parse_patch(resp)
        return self.completed(session)


def content_type_of(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def check_base_url(url: str) -> str:
    """https only: the bearer token must not cross a network in clear (plain http is
    allowed on loopback, for local emulators)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"--procore-base-url {url!r}: expected https://HOST (e.g. {PRODUCTION_URL})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UsageError(f"--procore-base-url {url!r}: the access token would travel unencrypted; use https://")
    return url.rstrip("/")


def read_token(token_file: str | None, environ: Mapping[str, str]) -> str:
    """The access token from --token-file or PROCORE_ACCESS_TOKEN; never stored anywhere."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        where = f"--token-file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
    if not token:
        empty = f"--token-file {token_file} is empty" if token_file else "no Procore access token"
        raise UsageError(f"{empty}: {TOKEN_HINT} (an OAuth access token; they last 1.5 hours)")
    if any(c.isspace() for c in token) or not token.isprintable():
        raise UsageError(f"the Procore access token in {where} contains spaces or control characters")
    return token


def procore_protocol(options: UploadOptions, source: str, environ: Mapping[str, str] | None = None) -> ProcoreProtocol:
    """The engine's factory: destination, API version (v2.1 where a project is given),
    base URL (--sandbox is a shortcut for SANDBOX_URL) and the token, read now, kept in memory."""
    target = ProcoreTarget.parse(options.destination)
    api = options.procore_api or (V21 if target.project_id is not None else V11)
    if api not in (V21, V11):
        raise UsageError(f"--procore-api must be {V21} or {V11}, got {api!r}")
    base_url = check_base_url(options.procore_base_url or PRODUCTION_URL)
    token = read_token(options.token_file, os.environ if environ is None else environ)
    return ProcoreProtocol(target, api=api, base_url=base_url, token=token, source=source,
                           name=options.file_name, content_type=options.content_type)
