"""A Procore upload-API emulator for tests, with real SeaweedFS underneath.

It serves the v1.1 direct-upload API (segmented and single-shot) and the v2.1 unified
upload API on 127.0.0.1, and a *storage front* on a second port that stands where Procore's
storage hosts stand. Segment URLs are real S3 presigned ``UploadPart`` URLs for a real
multipart upload in SeaweedFS, re-hosted on the storage front, which checks what SeaweedFS
does not (see docs/procore-contract.md, "Emulator choices") and streams the body through.

    with SeaweedFS() as s3, ProcoreEmulator(s3) as procore:
        requests.post(procore.base_url + "/rest/v1.1/companies/1/uploads", ...)

Every rule cites its source in procore/documentation, abbreviated as
``uploads.md`` = tutorials/tutorial_uploads.md, ``unified.md`` =
tutorials/tutorial_unified_uploads.md, ``rate.md`` = plan_your_app/rate_limiting.md,
``errors.md`` = api_essentials/error_reference.md, ``trouble.md`` =
api_essentials/troubleshooting.md, ``mpz.md`` = best_practices/mpz_headers.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import math
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import IO, Any, Literal, Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape

import aiohttp
import botocore.session
from aiohttp import web
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from yarl import URL

from tests.servers.lifecycle import Server

__all__ = [
    "ApiError",
    "ProcoreEmulator",
    "RequestRecord",
    "S3Storage",
    "Segment",
    "Upload",
]

HOST = "127.0.0.1"
MIB = 1024 * 1024

# uploads.md "Step 1 - Prepare the File Segment(s)": each segment at least 5MB and at most
# 5GB, except the last. S3's own floor is 5 MiB, so "5MB" is read as 5 MiB.
V11_MIN_SEGMENT = 5 * MIB
V11_MAX_SEGMENT = 5 * 1024 * MIB
# unified.md "Important Considerations": parts at most 100 MB, at least 5 MB except the
# last, at most 10,000 parts. The docs say "minimum of 5 MB" (inclusive); the team's
# field knowledge is that exactly 5 MiB is refused, so the floor is exclusive by default
# (knob: v21_min_part_exclusive). A client planning parts in (5 MiB, 100,000,000] bytes is
# safe under every reading.
V21_MIN_PART = 5 * MIB
V21_MAX_PART = 100 * MIB
MAX_PARTS = 10_000  # unified.md "Important Considerations"; also S3's limit for v1.1

# rate.md "Interpret Rate Limit Headers" / api_essentials/rate_limiting.md "Handling 429".
RATE_LIMIT_BODY = (
    "You have surpassed the max number of requests for an hour. "
    "Please wait until your limit resets."
)
RATE_LIMIT_PER_HOUR = 3600
# mpz.md "MPR Request Header Requirement": the message is documented, the status is not.
MISSING_COMPANY_HEADER = (
    "Missing Procore-Company-Id header!\n\n"
    "Each call your application makes to the Procore API must contain a request header "
    "that includes the Procore-Company-Id field."
)
# errors.md "Token-related errors" / trouble.md "The access token is invalid".
INVALID_TOKEN = "The access token is invalid"
# errors.md "Common error patterns": 403 "App is not connected to this company".
NOT_CONNECTED = "App is not connected to this company"

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20


class S3Storage(Protocol):
    """What the emulator needs of a SeaweedFS (tests/servers/seaweed.py ``SeaweedFS``)."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str


@dataclass(frozen=True)
class RequestRecord:
    """One request the emulator answered; side "api" (Procore) or "storage" (the front)."""

    side: Literal["api", "storage"]
    method: str
    path: str  # without the query string: it holds signatures
    status: int
    has_authorization: bool
    at: float


@dataclass
class Segment:
    number: int  # 1-based S3 part number
    size: int
    sha256: str
    md5: str | None
    etag: str | None = None  # recorded by a (possibly partial) PATCH


@dataclass
class Upload:
    upload_id: str
    flavor: Literal["v1.1", "v1.1-single", "v2.1"]
    user_id: int
    company_id: int
    project_id: int | None
    key: str
    s3_upload_id: str | None
    segments: list[Segment]
    created_at: float
    file_name: str | None = None
    content_type: str | None = None
    file_size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    part_size: int | None = None
    status: str = "ready"
    gets_since_complete: int = 0
    failure: str | None = None


class ApiError(Exception):
    """An API answer other than success; turned into a response by the middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        # errors.md "Best practices": 4xx bodies carry a `message` or `errors` field.
        self.body = body if body is not None else json.dumps(
            {"message": message, "errors": [message]}
        ).encode()
        self.content_type = content_type


class StorageError(Exception):
    """An S3-style XML error from the storage front."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _Token:
    user_id: int
    expires_at: float | None


@dataclass(frozen=True)
class _Caller:
    user_id: int
    company_id: int
    project_id: int | None


@dataclass
class _Faults:
    rate_limited: int = 0
    rate_reset_in: float = 60.0
    rate_retry_after: bool = False
    unavailable: int = 0
    retry_after: int = 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _read_back(spool: IO[bytes]) -> AsyncIterator[bytes]:
    """Stream a spooled body to aiohttp without blocking the loop on disk reads."""
    while chunk := await asyncio.to_thread(spool.read, _CHUNK):
        yield chunk


def _new_id() -> str:
    """A ULID-shaped id (26 Crockford base32 chars), like the docs' examples."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _norm_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value.lower()) <= _HEX


def _b64_md5(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, date: str, region: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    return key


def _s3_error_response(err: StorageError) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(err.code)}</Code><Message>{escape(err.message)}</Message>"
        "</Error>"
    )
    return web.Response(status=err.status, text=body, content_type="application/xml")


def _ssl_for(verify: bool | str) -> ssl.SSLContext | bool:
    """aiohttp's ssl= for talking to SeaweedFS, from a botocore-style verify= value."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context() if verify else False


class ProcoreEmulator(Server):
    """The emulator: an aiohttp app pair in a background thread (use as a context manager).

    tokens: valid bearer tokens, all of user 1 (``add_token`` for others or expiry).
    companies: company id -> project ids the app can see.
    url_expiry_s: lifetime of v2.1 part URLs. start_window_s: lifetime of v1.1 URLs and
    POST policies (uploads.md "IMPORTANT CONSIDERATIONS": start within one hour).
    available_after_gets: GETs answered "complete" after completion before "available".
    """

    def __init__(
        self,
        storage: S3Storage,
        *,
        tokens: Iterable[str] = ("test-token",),
        companies: Mapping[int, Iterable[int]] | None = None,
        url_expiry_s: float = 3600,
        start_window_s: float = 3600,
        available_after_gets: int = 1,
        v21_min_part_exclusive: bool = True,
        v21_max_part: int = V21_MAX_PART,
        server_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.storage = storage
        self.url_expiry_s = url_expiry_s
        self.start_window_s = start_window_s
        self.available_after_gets = available_after_gets
        self.v21_min_part_exclusive = v21_min_part_exclusive
        self.v21_max_part = v21_max_part
        self._server_ssl = server_ssl
        self._verify: bool | str = getattr(storage, "verify", True)
        self._tokens = {t: _Token(1, None) for t in tokens}
        self._companies = {
            cid: set(pids) for cid, pids in (companies or {1: (10,)}).items()
        }
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._uploads: dict[str, Upload] = {}
        self._by_s3_upload: dict[str, Upload] = {}
        self._by_key: dict[str, Upload] = {}
        self._upload_locks: dict[str, asyncio.Lock] = {}
        self._log: list[RequestRecord] = []
        self._window_start = time.time()
        self._window_calls = 0
        self._s3: Any = None  # a botocore S3 client; its methods are made at run time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._http: aiohttp.ClientSession | None = None
        self.base_url = ""
        self.storage_url = ""

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> ProcoreEmulator:
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="procore-emulator", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        self._loop = self._thread = None

    async def _astart(self) -> None:
        self._http = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            connector=aiohttp.TCPConnector(ssl=_ssl_for(self._verify)),
        )
        self.base_url = await self._serve(self._api_app())
        self.storage_url = await self._serve(self._storage_app())

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, HOST, 0, ssl_context=self._server_ssl)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if self._server_ssl else "http"
        return f"{scheme}://{HOST}:{port}"

    async def _astop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._http is not None:
            await self._http.close()

    # -- knobs ------------------------------------------------------------------------------

    def rate_limit_next(
        self, n: int, reset_in_s: float = 60.0, *, retry_after: bool = False
    ) -> None:
        """Answer the next n API calls 429 with X-Rate-Limit-Reset = now + reset_in_s.

        rate.md "Hourly and Spike Limits (429 Too Many Requests)" names only
        X-Rate-Limit-Reset; errors.md and trouble.md mention Retry-After on 429, so it can
        be added with retry_after=True.
        """
        with self._lock:
            self._faults.rate_limited = n
            self._faults.rate_reset_in = reset_in_s
            self._faults.rate_retry_after = retry_after

    def unavailable_next(self, n: int, retry_after_s: int = 1) -> None:
        """Answer the next n API calls 503 with Retry-After (rate.md "Heavy Load Throttling")."""
        with self._lock:
            self._faults.unavailable = n
            self._faults.retry_after = retry_after_s

    def add_token(self, token: str, *, user_id: int = 1, expires_in: float | None = None) -> None:
        expires_at = None if expires_in is None else time.time() + expires_in
        with self._lock:
            self._tokens[token] = _Token(user_id, expires_at)

    def expire_upload(self, upload_id: str) -> None:
        """Let an upload lapse (unified.md "Uploads expire"; uploads.md: deleted after a
        week): its S3 multipart upload is aborted, so storage answers 404 NoSuchUpload and
        the API answers 404. For testing a client's "session lost" path."""
        with self._lock:
            upload = self._uploads[upload_id]
            upload.status = "expired"
        if upload.s3_upload_id:
            self.s3.abort_multipart_upload(Bucket=self.storage.bucket, Key=upload.key,
                                           UploadId=upload.s3_upload_id)

    def expire_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].expires_at = time.time() - 1

    # -- inspection -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def count(
        self,
        side: Literal["api", "storage"] | None = None,
        method: str | None = None,
        path_contains: str = "",
        status: int | None = None,
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (side is None or r.side == side)
            and (method is None or r.method == method)
            and path_contains in r.path
            and (status is None or r.status == status)
        )

    def upload(self, upload_id: str) -> Upload:
        """A snapshot (deep copy) of one upload's state."""
        with self._lock:
            return copy.deepcopy(self._uploads[upload_id])

    def object_key(self, upload_id: str) -> str:
        return self.upload(upload_id).key

    def object_md5(self, upload_id: str) -> str:
        """md5 (hex) of the final object as SeaweedFS serves it (reads it in full)."""
        md5, _, _ = self._object_digests(self.object_key(upload_id), [])
        return md5

    @property
    def s3(self) -> Any:
        """A botocore client on the SeaweedFS behind the emulator."""
        if self._s3 is None:
            cfg = Config(
                region_name=self.storage.region,
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 3, "mode": "standard"},
                # botocore >= 1.36 would send aws-chunked CRC32 bodies by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=20,
            )
            session = botocore.session.Session()
            self._s3 = session.create_client(
                "s3",
                endpoint_url=self.storage.endpoint,
                aws_access_key_id=self.storage.access_key,
                aws_secret_access_key=self.storage.secret_key,
                verify=self._verify,
                config=cfg,
            )
        return self._s3

    # -- apps -------------------------------------------------------------------------------

    def _api_app(self) -> web.Application:
        # 10,000 segments of JSON exceed aiohttp's 1 MiB default body limit.
        app = web.Application(
            client_max_size=32 * MIB,
            middlewares=[self._record_api, self._api_errors, self._throttle],
        )
        v11 = "/rest/v1.1"
        v21 = "/rest/v2.1/companies/{cid:\\d+}/projects/{pid:\\d+}/uploads"
        app.router.add_post(v11 + "/companies/{cid:\\d+}/uploads", self._v11_create)
        app.router.add_post(v11 + "/projects/{pid:\\d+}/uploads", self._v11_create)
        app.router.add_patch(v11 + "/companies/{cid:\\d+}/uploads/{uid}", self._v11_complete)
        app.router.add_patch(v11 + "/projects/{pid:\\d+}/uploads/{uid}", self._v11_complete)
        app.router.add_post(v21, self._v21_create)
        app.router.add_patch(v21 + "/{uid}", self._v21_patch)
        app.router.add_get(v21 + "/{uid}", self._v21_get)
        return app

    def _storage_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_storage, self._storage_errors])
        app.router.add_put("/{bucket}/{key:.+}", self._storage_put_part)
        app.router.add_post("/{bucket}", self._storage_post_form)
        app.router.add_post("/{bucket}/", self._storage_post_form)
        return app

    # -- middlewares --------------------------------------------------------------------------

    def _record(self, side: Literal["api", "storage"], request: web.Request, status: int) -> None:
        rec = RequestRecord(
            side, request.method, request.path, status,
            "Authorization" in request.headers, time.time(),
        )
        with self._lock:
            self._log.append(rec)

    @web.middleware
    async def _record_api(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        self._add_rate_headers(response)
        self._record("api", request, response.status)
        return response

    @web.middleware
    async def _record_storage(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._record("storage", request, exc.status)
            raise
        self._record("storage", request, response.status)
        return response

    @web.middleware
    async def _api_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return web.Response(
                status=err.status, body=err.body, headers=err.headers,
                content_type=err.content_type,
            )
        except web.HTTPException as exc:  # unknown routes etc.: JSON like the rest
            return web.json_response({"message": exc.reason, "errors": [exc.reason]},
                                     status=exc.status)

    @web.middleware
    async def _storage_errors(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except StorageError as err:
            return _s3_error_response(err)

    @web.middleware
    async def _throttle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._apply_faults()
        return await handler(request)

    def _apply_faults(self) -> None:
        with self._lock:
            faults = self._faults
            if faults.rate_limited > 0:
                faults.rate_limited -= 1
                raise self._rate_limited(faults)
            if faults.unavailable > 0:
                faults.unavailable -= 1
                # rate.md "Heavy Load Throttling (503 Service Unavailable)": Retry-After in s.
                raise ApiError(
                    503, "Service Unavailable", body=b"Service Unavailable",
                    content_type="text/plain",
                    headers={"Retry-After": str(faults.retry_after)},
                )

    @staticmethod
    def _rate_limited(faults: _Faults) -> ApiError:
        # rate.md "When Requests Are Throttled": 429, rate headers still present, reset is a
        # unix timestamp in seconds; the body text is from api_essentials/rate_limiting.md.
        reset = math.ceil(time.time() + faults.rate_reset_in)
        headers = {
            "X-Rate-Limit-Limit": str(RATE_LIMIT_PER_HOUR),
            "X-Rate-Limit-Remaining": "0",
            "X-Rate-Limit-Reset": str(reset),
        }
        if faults.rate_retry_after:
            headers["Retry-After"] = str(math.ceil(faults.rate_reset_in))
        return ApiError(429, RATE_LIMIT_BODY, headers=headers,
                        body=RATE_LIMIT_BODY.encode(), content_type="text/plain")

    def _add_rate_headers(self, response: web.StreamResponse) -> None:
        # rate.md "Interpret Rate Limit Headers": every response carries the three headers.
        if "X-Rate-Limit-Reset" in response.headers:
            return
        with self._lock:
            now = time.time()
            if now >= self._window_start + 3600:
                self._window_start, self._window_calls = now, 0
            self._window_calls += 1
            remaining = max(0, RATE_LIMIT_PER_HOUR - self._window_calls)
            reset = int(self._window_start + 3600)
        response.headers["X-Rate-Limit-Limit"] = str(RATE_LIMIT_PER_HOUR)
        response.headers["X-Rate-Limit-Remaining"] = str(remaining)
        response.headers["X-Rate-Limit-Reset"] = str(reset)

    def _user_for(self, authorization: str | None) -> int:
        # errors.md "Client errors": 401 for a missing, expired or invalid token. The body
        # follows OAuth 2.0 bearer usage (RFC 6750 section 3); its text is errors.md's.
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            info = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
            valid = info is not None and (info.expires_at is None or info.expires_at > time.time())
        if info is None or not valid:
            raise ApiError(
                401, INVALID_TOKEN,
                headers={"WWW-Authenticate":
                         f'Bearer error="invalid_token", error_description="{INVALID_TOKEN}"'},
                body=json.dumps(
                    {"error": "invalid_token", "error_description": INVALID_TOKEN}
                ).encode(),
            )
        return info.user_id

    def _caller(self, request: web.Request) -> _Caller:
        """Authenticate, then resolve the company (header) and project (path) of the call."""
        user_id = self._user_for(request.headers.get("Authorization"))
        header = request.headers.get("Procore-Company-Id")
        if header is None or not header.strip().isdigit():
            raise ApiError(400, MISSING_COMPANY_HEADER, body=MISSING_COMPANY_HEADER.encode(),
                           content_type="text/plain")
        company_id = int(header)
        path_company = request.match_info.get("cid")
        # errors.md 403: "the app is not installed in the target company"; a header naming
        # another company than the path is refused the same way.
        if company_id not in self._companies or (
            path_company is not None and int(path_company) != company_id
        ):
            raise ApiError(403, NOT_CONNECTED)
        project = request.match_info.get("pid")
        project_id = int(project) if project is not None else None
        # trouble.md "404 on a resource that exists": 404 when the user cannot see it at all.
        if project_id is not None and project_id not in self._companies[company_id]:
            raise ApiError(404, "Project not found")
        return _Caller(user_id, company_id, project_id)

    # -- shared helpers -----------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Malformed JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "JSON body must be an object")
        return body

    def _owned_upload(self, request: web.Request, caller: _Caller, flavors: tuple[str, ...]) -> Upload:
        with self._lock:
            upload = self._uploads.get(request.match_info["uid"])
        if upload is None or upload.flavor not in flavors or upload.company_id != caller.company_id:
            raise ApiError(404, "Upload not found")
        if caller.project_id is not None and upload.project_id != caller.project_id:
            raise ApiError(404, "Upload not found")
        # unified.md "Important Considerations": expired uploads are deleted.
        if upload.status == "expired":
            raise ApiError(404, "Upload not found")
        # uploads.md "IMPORTANT CONSIDERATIONS" / unified.md "Important Considerations":
        # only the user who created the upload can use it.
        if upload.user_id != caller.user_id:
            raise ApiError(403, "Only the user who created this upload can use it")
        return upload

    @staticmethod
    def _refuse_failed(upload: Upload) -> None:
        if upload.status == "failed":
            raise ApiError(422, f"Upload failed verification ({upload.failure}); "
                                "create a new upload")

    def _upload_lock(self, upload_id: str) -> asyncio.Lock:
        return self._upload_locks.setdefault(upload_id, asyncio.Lock())

    @staticmethod
    def _parse_segments(raw: object) -> list[Segment]:
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "segments must be a non-empty array")
        segments = []
        for number, item in enumerate(raw, 1):
            if not isinstance(item, dict):
                raise ApiError(400, f"segment {number} must be an object")
            size, sha256, md5 = item.get("size"), item.get("sha256"), item.get("md5")
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ApiError(400, f"segment {number}: size must be a positive integer")
            # uploads.md "Step 1": a SHA-256 per segment is required, an MD5 is optional.
            if not _is_hex(sha256, 64):
                raise ApiError(400, f"segment {number}: sha256 must be 64 hex digits")
            if md5 is not None and not _is_hex(md5, 32):
                raise ApiError(400, f"segment {number}: md5 must be 32 hex digits")
            segments.append(Segment(number, size, str(sha256).lower(),
                                    str(md5).lower() if md5 else None))
        return segments

    def _register(self, upload: Upload) -> None:
        with self._lock:
            self._uploads[upload.upload_id] = upload
            self._by_key[upload.key] = upload
            if upload.s3_upload_id:
                self._by_s3_upload[upload.s3_upload_id] = upload

    async def _new_multipart(self, key: str, content_type: str | None,
                             file_name: str | None) -> str:
        extra: dict[str, str] = {}
        if content_type:
            extra["ContentType"] = content_type
        if file_name:
            extra["ContentDisposition"] = f'inline; filename="{file_name}"'
        resp = await asyncio.to_thread(
            self.s3.create_multipart_upload, Bucket=self.storage.bucket, Key=key, **extra
        )
        return str(resp["UploadId"])

    def _presign_part(self, upload: Upload, seg: Segment, expires_s: float) -> str:
        """A SeaweedFS presigned UploadPart URL, moved onto the storage front.

        Content-MD5 is signed into the URL, so SeaweedFS itself refuses a body whose md5
        differs (BadDigest). x-amz-content-sha256 cannot be signed: SeaweedFS 4.48 then
        answers SignatureDoesNotMatch to a correct request, so the front checks it.
        """
        assert upload.s3_upload_id is not None
        path = f"/{self.storage.bucket}/{quote(upload.key)}"
        query = f"partNumber={seg.number}&uploadId={quote(upload.s3_upload_id, safe='')}"
        headers = {"Content-MD5": _b64_md5(seg.md5)} if seg.md5 else {}
        request = AWSRequest(method="PUT", url=f"{self.storage.endpoint}{path}?{query}",
                             headers=headers)
        creds = Credentials(self.storage.access_key, self.storage.secret_key)
        expires = max(1, round(expires_s))
        S3SigV4QueryAuth(creds, "s3", self.storage.region, expires=expires).add_auth(request)
        return self.storage_url + str(request.url)[len(self.storage.endpoint):]

    # -- v1.1 -------------------------------------------------------------------------------

    async def _v11_create(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        body = await self._json(request)
        if "segments" in body:
            return web.json_response(await self._v11_segmented(caller, body), status=201)
        return web.json_response(await self._v11_single(caller, body), status=201)

    @staticmethod
    def _check_v11_sizes(segments: list[Segment]) -> None:
        # uploads.md "Step 1 - Prepare the File Segment(s)": 5MB..5GB, the last may be less.
        if len(segments) > MAX_PARTS:
            raise ApiError(422, f"at most {MAX_PARTS} segments are allowed")
        for seg in segments:
            if seg.size > V11_MAX_SEGMENT:
                raise ApiError(422, f"segment {seg.number} is larger than 5 GB")
            if seg.number < len(segments) and seg.size < V11_MIN_SEGMENT:
                raise ApiError(422, f"segment {seg.number} is smaller than 5 MB "
                                    "(only the last segment may be)")

    async def _v11_segmented(self, caller: _Caller, body: dict[str, Any]) -> dict[str, Any]:
        segments = self._parse_segments(body.get("segments"))
        self._check_v11_sizes(segments)
        upload_id = _new_id()
        key = f"companies/{caller.company_id}/{upload_id}"
        content_type = body.get("response_content_type")
        file_name = body.get("response_filename")
        s3_id = await self._new_multipart(key, content_type, file_name)
        upload = Upload(upload_id, "v1.1", caller.user_id, caller.company_id,
                        caller.project_id, key, s3_id, segments, time.time(),
                        file_name=file_name, content_type=content_type,
                        file_size=sum(s.size for s in segments))
        self._register(upload)
        return self._v11_body(upload, with_urls=True)

    def _v11_segment_json(self, upload: Upload, seg: Segment, with_urls: bool) -> dict[str, Any]:
        # uploads.md "Step 2 - Create a Segmented Upload", "Response Body": md5, sha256,
        # size, url, headers (x-amz-content-sha256, content-length, content-md5 in base64).
        out: dict[str, Any] = {"sha256": seg.sha256, "size": seg.size}
        if seg.md5:
            out["md5"] = seg.md5
        if seg.etag:
            out["etag"] = seg.etag
        if with_urls:
            out["url"] = self._presign_part(upload, seg, self.start_window_s)
            headers = {"x-amz-content-sha256": seg.sha256, "content-length": str(seg.size)}
            if seg.md5:
                headers["content-md5"] = _b64_md5(seg.md5)
            out["headers"] = headers
        return out

    def _v11_body(self, upload: Upload, *, with_urls: bool) -> dict[str, Any]:
        segs = [self._v11_segment_json(upload, s, with_urls) for s in upload.segments]
        return {"uuid": upload.upload_id, "segments": segs, "status": upload.status}

    async def _v11_single(self, caller: _Caller, body: dict[str, Any]) -> dict[str, Any]:
        # uploads.md "Non-Segmented Direct Uploads", "Step 1: Create an Upload": reply uuid,
        # url and fields (key, Content-Type, Content-Disposition, policy, x-amz-*).
        upload_id = _new_id()
        key = f"companies/{caller.company_id}/{upload_id}"
        file_name = str(body.get("response_filename") or upload_id)
        content_type = str(body.get("response_content_type") or "application/octet-stream")
        disposition = f'inline; filename="{file_name}"'
        post = await asyncio.to_thread(
            self.s3.generate_presigned_post, self.storage.bucket, key,
            Fields={"Content-Type": content_type, "Content-Disposition": disposition},
            Conditions=[{"Content-Type": content_type}, {"Content-Disposition": disposition}],
            ExpiresIn=max(1, round(self.start_window_s)),
        )
        upload = Upload(upload_id, "v1.1-single", caller.user_id, caller.company_id,
                        caller.project_id, key, None, [], time.time(),
                        file_name=file_name, content_type=content_type)
        self._register(upload)
        url = self.storage_url + "/" + self.storage.bucket
        return {"uuid": upload_id, "url": url, "fields": dict(post["fields"])}

    async def _v11_complete(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        upload = self._owned_upload(request, caller, ("v1.1",))
        body = await self._json(request)
        etags = self._v11_etags(body.get("segments"), len(upload.segments))
        async with self._upload_lock(upload.upload_id):
            self._refuse_failed(upload)
            if upload.status != "complete":
                await self._finalize(upload, etags)
            elif [s.etag for s in upload.segments] != etags:
                raise ApiError(422, "Upload is already complete with other ETags")
        # uploads.md "Step 4 - Complete the Upload", "Response": segments with etag, status.
        return web.json_response(self._v11_body(upload, with_urls=False))

    @staticmethod
    def _v11_etags(raw: object, expected: int) -> list[str]:
        # uploads.md "Step 4": {"segments": [{"etag": ...}, ...]} in create order.
        if not isinstance(raw, list) or len(raw) != expected:
            raise ApiError(422, f"segments must list {expected} etags in segment order")
        etags = []
        for i, item in enumerate(raw, 1):
            etag = item.get("etag") if isinstance(item, dict) else None
            if not isinstance(etag, str) or not etag.strip():
                raise ApiError(422, f"segment {i}: etag missing")
            etags.append(_norm_etag(etag))
        return etags

    # -- v2.1 -------------------------------------------------------------------------------

    def _check_v21_sizes(self, segments: list[Segment], file_size: int) -> None:
        # unified.md "Important Considerations": <= 100 MB parts, >= 5 MB but the last,
        # <= 10,000 parts; see V21_MIN_PART for the exclusive floor.
        if len(segments) > MAX_PARTS:
            raise ApiError(422, f"at most {MAX_PARTS} segments are allowed")
        if sum(s.size for s in segments) != file_size:
            raise ApiError(422, "segment sizes do not add up to file_size")
        for seg in segments:
            if seg.size > self.v21_max_part:
                raise ApiError(422, f"segment {seg.number} is larger than the part maximum")
            too_small = (seg.size <= V21_MIN_PART if self.v21_min_part_exclusive
                         else seg.size < V21_MIN_PART)
            if seg.number < len(segments) and too_small:
                raise ApiError(422, f"segment {seg.number} is below the part minimum "
                                    "(only the last segment may be)")

    def _v21_declared(self, body: dict[str, Any]) -> tuple[str, int, str, str, str | None]:
        # unified.md "Step 2 — Create the Upload (POST)": file_name, file_size, content_type,
        # sha256 (mandatory, "Key New Feature Highlights"), md5 optional.
        file_name, file_size = body.get("file_name"), body.get("file_size")
        content_type, sha256, md5 = body.get("content_type"), body.get("sha256"), body.get("md5")
        if not isinstance(file_name, str) or not file_name:
            raise ApiError(400, "file_name is required")
        if not isinstance(file_size, int) or isinstance(file_size, bool) or file_size <= 0:
            raise ApiError(400, "file_size must be a positive integer")
        if not isinstance(content_type, str) or not content_type:
            raise ApiError(400, "content_type is required")
        if not _is_hex(sha256, 64):
            raise ApiError(400, "sha256 must be 64 hex digits")
        if md5 is not None and not _is_hex(md5, 32):
            raise ApiError(400, "md5 must be 32 hex digits")
        return file_name, file_size, content_type, str(sha256).lower(), md5 and str(md5).lower()

    async def _v21_create(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        body = await self._json(request)
        file_name, file_size, content_type, sha256, md5 = self._v21_declared(body)
        raw = body.get("segments")
        if raw is None:  # single part: no segments needed (unified.md, v2.1 revision)
            raw = [{"size": file_size, "sha256": sha256, "md5": md5}]
        segments = self._parse_segments(raw)
        self._check_v21_sizes(segments, file_size)
        part_size = body.get("part_size")
        if part_size is not None and (not isinstance(part_size, int) or part_size <= 0):
            raise ApiError(400, "part_size must be a positive integer")
        upload_id = _new_id()
        key = f"companies/{caller.company_id}/projects/{caller.project_id}/{upload_id}"
        s3_id = await self._new_multipart(key, content_type, file_name)
        upload = Upload(upload_id, "v2.1", caller.user_id, caller.company_id,
                        caller.project_id, key, s3_id, segments, time.time(),
                        file_name=file_name, content_type=content_type, file_size=file_size,
                        sha256=sha256, md5=md5, part_size=part_size)
        self._register(upload)
        # unified.md Step 2 "Response (201 Created)": a JSON:API-style "data" wrapper.
        return web.json_response({"data": self._v21_created_body(upload)}, status=201)

    def _v21_segment_json(self, upload: Upload, seg: Segment) -> dict[str, Any]:
        # unified.md: url, url_expires_at, headers. The docs show only Content-Length but
        # call the header set opaque ("copy in entirety"); Content-MD5 and
        # x-amz-content-sha256 are added so a client that drops headers fails here.
        # part_number is not in the docs: GET returns only the parts still to send, and
        # an opaque URL cannot say which part it is for.
        headers = {"Content-Length": str(seg.size), "x-amz-content-sha256": seg.sha256}
        if seg.md5:
            headers["Content-MD5"] = _b64_md5(seg.md5)
        return {
            "part_number": seg.number,
            "url": self._presign_part(upload, seg, self.url_expiry_s),
            "url_expires_at": int(time.time() + self.url_expiry_s),
            "headers": headers,
        }

    def _v21_created_body(self, upload: Upload) -> dict[str, Any]:
        return {
            "upload_id": upload.upload_id,
            "file_name": upload.file_name,
            "file_size": upload.file_size,
            "part_size": upload.part_size or upload.segments[0].size,
            "total_parts": len(upload.segments),
            "content_type": upload.content_type,
            # unified.md "Key New Feature Highlights": associate within 24 hours.
            "upload_expires_at": int(upload.created_at + 24 * 3600),
            "segments": [self._v21_segment_json(upload, s) for s in upload.segments],
            "status": upload.status,
        }

    async def _v21_patch(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        upload = self._owned_upload(request, caller, ("v2.1",))
        body = await self._json(request)
        etags = self._v21_etags(body.get("part_etags"), len(upload.segments))
        async with self._upload_lock(upload.upload_id):
            self._refuse_failed(upload)
            if upload.status in ("complete", "available"):
                if [s.etag for s in upload.segments] != etags:
                    raise ApiError(422, "Upload is already complete with other ETags")
            elif None in etags:
                await self._record_progress(upload, etags)
            else:
                await self._finalize(upload, [e for e in etags if e is not None])
        # unified.md Step 4 "Response (200 OK)": {"data": {"upload_id", "status"}}.
        return web.json_response({"data": {"upload_id": upload.upload_id,
                                           "status": upload.status}})

    @staticmethod
    def _v21_etags(raw: object, expected: int) -> list[str | None]:
        # unified.md "Important Considerations": part_etags in segment order; null for parts
        # not uploaded yet records partial progress.
        if not isinstance(raw, list) or len(raw) != expected:
            raise ApiError(422, f"part_etags must have {expected} entries in segment order")
        etags: list[str | None] = []
        for i, etag in enumerate(raw, 1):
            if etag is not None and (not isinstance(etag, str) or not etag.strip()):
                raise ApiError(422, f"part_etags[{i - 1}] must be a string or null")
            etags.append(_norm_etag(etag) if etag is not None else None)
        return etags

    async def _record_progress(self, upload: Upload, etags: list[str | None]) -> None:
        parts = await asyncio.to_thread(self._latest_parts, upload)
        for seg, etag in zip(upload.segments, etags, strict=True):
            if etag is not None:
                self._check_part(seg, etag, parts)
        for seg, etag in zip(upload.segments, etags, strict=True):
            if etag is not None:
                seg.etag = etag
        # unified.md "Checking Upload Status": receiving = partial ETags submitted.
        upload.status = "receiving"

    async def _v21_get(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        upload = self._owned_upload(request, caller, ("v2.1",))
        async with self._upload_lock(upload.upload_id):
            self._advance_availability(upload)
            return web.json_response({"data": self._v21_status_body(upload)})

    def _advance_availability(self, upload: Upload) -> None:
        # unified.md Step 5: poll GET until "available" (processing happens after complete).
        if upload.status == "complete":
            if upload.gets_since_complete >= self.available_after_gets:
                upload.status = "available"
            upload.gets_since_complete += 1

    def _v21_status_body(self, upload: Upload) -> dict[str, Any]:
        # unified.md "Checking Upload Status" fields, plus fresh URLs for the parts not yet
        # reported ("Presigned URLs expire ... call the GET upload status endpoint").
        pending = [] if upload.status in ("complete", "available", "failed") else [
            self._v21_segment_json(upload, s) for s in upload.segments if s.etag is None
        ]
        return {
            "upload_id": upload.upload_id,
            "file_name": upload.file_name,
            "sanitized_file_name": upload.file_name,
            "content_type": upload.content_type,
            "file_size": upload.file_size,
            "total_parts": len(upload.segments),
            "upload_expires_at": int(upload.created_at + 24 * 3600),
            "status": upload.status,
            "custom_metadata": {},
            "segments": pending,
        }

    # -- completion and verification ------------------------------------------------------------

    def _latest_parts(self, upload: Upload) -> dict[int, dict[str, Any]]:
        """ListParts, one entry per part number: the latest upload of it.

        SeaweedFS 4.48 lists every upload of a retried part number (AWS keeps only the
        last), and would even complete with a stale ETag; the last listed entry wins.
        """
        kwargs: dict[str, Any] = {"Bucket": self.storage.bucket, "Key": upload.key,
                                  "UploadId": upload.s3_upload_id}
        latest: dict[int, dict[str, Any]] = {}
        while True:
            resp = self.s3.list_parts(**kwargs)
            for part in resp.get("Parts", []):
                latest[int(part["PartNumber"])] = part
            if not resp.get("IsTruncated"):
                return latest
            kwargs["PartNumberMarker"] = resp["NextPartNumberMarker"]

    @staticmethod
    def _check_part(seg: Segment, etag: str, parts: Mapping[int, Mapping[str, Any]]) -> None:
        part = parts.get(seg.number)
        if part is None:
            raise ApiError(422, f"segment {seg.number} has not been uploaded")
        if _norm_etag(str(part["ETag"])) != etag:
            # uploads.md Step 4 / unified.md: ETags must be in the order of the segments.
            raise ApiError(422, f"etag for segment {seg.number} does not match the uploaded "
                                "part (wrong ETag or wrong order)")
        if int(part["Size"]) != seg.size:
            raise ApiError(422, f"segment {seg.number} is {part['Size']} bytes, "
                                f"declared {seg.size}")

    async def _finalize(self, upload: Upload, etags: list[str]) -> None:
        parts = await asyncio.to_thread(self._latest_parts, upload)
        for seg, etag in zip(upload.segments, etags, strict=True):
            self._check_part(seg, etag, parts)
        await asyncio.to_thread(self._complete_and_verify, upload, etags)
        for seg, etag in zip(upload.segments, etags, strict=True):
            seg.etag = etag
        upload.status = "complete"

    def _complete_and_verify(self, upload: Upload, etags: list[str]) -> None:
        self.s3.complete_multipart_upload(
            Bucket=self.storage.bucket, Key=upload.key, UploadId=upload.s3_upload_id,
            MultipartUpload={"Parts": [{"PartNumber": s.number, "ETag": f'"{e}"'}
                                       for s, e in zip(upload.segments, etags, strict=True)]},
        )
        problem = self._digest_problem(upload)
        if problem:
            # The declared checksums are Procore's integrity check (uploads.md "Step 1",
            # unified.md "Checksum Verification"): a mismatch loses the file.
            self.s3.delete_object(Bucket=self.storage.bucket, Key=upload.key)
            upload.status, upload.failure = "failed", problem
            raise ApiError(422, problem)

    def _digest_problem(self, upload: Upload) -> str | None:
        whole_md5, whole_sha256, per_segment = self._object_digests(
            upload.key, [s.size for s in upload.segments]
        )
        for seg, (md5, sha256) in zip(upload.segments, per_segment, strict=True):
            if sha256 != seg.sha256 or (seg.md5 and md5 != seg.md5):
                return f"segment {seg.number} does not match its declared checksums"
        if upload.md5 and whole_md5 != upload.md5:
            return "file md5 does not match the declared md5"
        if upload.sha256 and whole_sha256 != upload.sha256:
            return "file sha256 does not match the declared sha256"
        return None

    def _object_digests(self, key: str, sizes: list[int]) -> tuple[str, str, list[tuple[str, str]]]:
        """md5 and sha256 of the whole object, and (md5, sha256) of each range in sizes."""
        body = self.s3.get_object(Bucket=self.storage.bucket, Key=key)["Body"]
        md5, sha256 = hashlib.md5(), hashlib.sha256()
        ranges = _RangeHasher(sizes)
        try:
            for chunk in body.iter_chunks(_CHUNK):
                md5.update(chunk)
                sha256.update(chunk)
                ranges.update(chunk)
        finally:
            body.close()
        return md5.hexdigest(), sha256.hexdigest(), ranges.result()

    # -- storage front: part PUTs ---------------------------------------------------------------

    async def _storage_put_part(self, request: web.Request) -> web.StreamResponse:
        self._refuse_authorization(request)
        part_number = request.query.get("partNumber", "")
        number = int(part_number) if part_number.isdigit() else 0
        with self._lock:
            upload = self._by_s3_upload.get(request.query.get("uploadId", ""))
        if (upload is None or upload.status == "expired"
                or not 1 <= number <= len(upload.segments)):
            raise StorageError(404, "NoSuchUpload", "The specified upload does not exist.")
        if request.content_length is None:
            raise StorageError(411, "MissingContentLength",
                               "You must provide the Content-Length HTTP header.")
        self._check_not_expired(request.query)
        expected = upload.segments[number - 1].sha256
        # The URL stands for one signed x-amz-content-sha256 (AWS SigV4): a missing or
        # different value does not match the signature.
        if request.headers.get("x-amz-content-sha256", "").lower() != expected:
            raise StorageError(403, "SignatureDoesNotMatch",
                               "x-amz-content-sha256 is missing or not the signed value")
        return await self._forward_part(request, expected)

    @staticmethod
    def _refuse_authorization(request: web.Request) -> None:
        # uploads.md "IMPORTANT CONSIDERATIONS" and unified.md: an access token on a storage
        # request "will result in an error". SeaweedFS 4.48 ignores the header next to a
        # presigned query, so the front answers as AWS S3 does to two auth mechanisms.
        if "Authorization" in request.headers:
            raise StorageError(400, "InvalidArgument", "Only one auth mechanism allowed; "
                               "only the X-Amz-Algorithm query parameter, Signature query "
                               "string parameter or the Authorization header should be "
                               "specified")

    async def _forward_part(self, request: web.Request, expected_sha256: str) -> web.Response:
        # The body is spooled first so that, as on AWS, a body that does not match the
        # signed x-amz-content-sha256 is refused before anything is stored.
        spool, size, sha256 = await self._spool_stream(
            partial(request.content.read, _CHUNK)
        )
        with spool:
            if sha256 != expected_sha256:
                raise StorageError(400, "XAmzContentSHA256Mismatch", "The provided "
                                   "'x-amz-content-sha256' header does not match what was "
                                   "computed.")
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-md5", "content-type")}
            headers["Content-Length"] = str(size)
            assert self._http is not None
            target = URL(self.storage.endpoint + request.raw_path, encoded=True)
            async with self._http.put(target, data=_read_back(spool), headers=headers) as up:
                payload = await up.read()
                status, etag = up.status, up.headers.get("ETag")
                content_type = up.headers.get("Content-Type", "application/xml")
        out_headers = {"ETag": etag} if etag else {}
        return web.Response(status=status, body=payload, headers=out_headers,
                            content_type=content_type.split(";")[0])

    @staticmethod
    def _check_not_expired(query: Mapping[str, str]) -> None:
        # S3 judges a presigned URL's expiry when the request starts, not when its body
        # has arrived; SeaweedFS would judge it after the front has spooled the body.
        try:
            signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            expires = int(query["X-Amz-Expires"])
        except (KeyError, ValueError) as exc:
            raise StorageError(403, "AccessDenied", "Query-string authentication is "
                               "required") from exc
        if signed_at.replace(tzinfo=timezone.utc).timestamp() + expires < time.time():
            raise StorageError(403, "AccessDenied", "Request has expired")

    # -- storage front: the v1.1 single-shot POST form -------------------------------------------

    async def _storage_post_form(self, request: web.Request) -> web.StreamResponse:
        """S3 POST-form upload (uploads.md "Step 2: Upload File to a Storage Service Using
        HTTP POST Request"): every field unchanged, then the file as field "file".

        SeaweedFS 4.48 answers 400 InvalidRequest even to botocore's own presigned POST,
        so the front checks the policy and signature itself and writes with PutObject.
        """
        self._refuse_authorization(request)
        if request.match_info["bucket"] != self.storage.bucket:
            raise StorageError(404, "NoSuchBucket", "The specified bucket does not exist")
        fields, spool, size = await self._read_form(request)
        with spool:
            self._check_post_policy(fields, size)
            with self._lock:
                upload = self._by_key.get(fields.get("key", ""))
            if upload is None or upload.flavor != "v1.1-single":
                raise StorageError(403, "AccessDenied", "Access Denied")
            spool.seek(0)
            await asyncio.to_thread(
                self.s3.put_object, Bucket=self.storage.bucket, Key=upload.key, Body=spool,
                ContentType=fields.get("content-type", "application/octet-stream"),
                ContentDisposition=fields.get("content-disposition", ""),
            )
        upload.status, upload.file_size = "complete", size
        return web.Response(status=204)  # S3's default success_action_status

    async def _read_form(self, request: web.Request) -> tuple[dict[str, str], IO[bytes], int]:
        """Form fields (names lower-cased) before "file", and the file spooled to disk.

        S3 ignores fields after the file, so reading stops there.
        """
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError) as exc:
            raise StorageError(400, "MalformedPOSTRequest",
                               f"not multipart/form-data: {exc}") from exc
        fields: dict[str, str] = {}
        while True:
            part = await reader.next()
            if part is None:
                raise StorageError(400, "InvalidArgument",
                                   "POST requires exactly one file upload per request.")
            if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                raise StorageError(400, "MalformedPOSTRequest", "unexpected form part")
            if part.name.lower() == "file":
                spool, size, _ = await self._spool_stream(partial(part.read_chunk, _CHUNK))
                return fields, spool, size
            fields[part.name.lower()] = (await part.read(decode=True)).decode()

    @staticmethod
    async def _spool_stream(
        read_chunk: Callable[[], Awaitable[bytes]],
    ) -> tuple[IO[bytes], int, str]:
        """Copy a body to a temp file until read_chunk gives b"": (file, size, sha256 hex)."""
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * MIB)  # noqa: SIM115
        digest = hashlib.sha256()
        size = 0
        try:
            while chunk := await read_chunk():
                spool.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool, size, digest.hexdigest()

    def _check_post_policy(self, fields: Mapping[str, str], size: int) -> None:
        """Verify a SigV4 POST policy as S3 does (signature, expiry, conditions, extras)."""
        policy_b64 = fields.get("policy", "")
        self._check_post_signature(fields, policy_b64)
        try:
            policy = json.loads(base64.b64decode(policy_b64))
            expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(400, "InvalidPolicyDocument", f"invalid policy: {exc}") from exc
        # uploads.md "IMPORTANT CONSIDERATIONS": start within one hour, else 403.
        if expiration <= datetime.now(timezone.utc):
            raise StorageError(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        covered = {"policy", "x-amz-signature", "file"}
        for condition in policy.get("conditions", []):
            covered.add(self._check_condition(condition, fields, size))
        extra = sorted(k for k in fields if k not in covered and not k.startswith("x-ignore-"))
        if extra:
            raise StorageError(403, "AccessDenied",
                               f"Invalid according to Policy: Extra input fields: {extra}")

    def _check_post_signature(self, fields: Mapping[str, str], policy_b64: str) -> None:
        credential = fields.get("x-amz-credential", "").split("/")
        if fields.get("x-amz-algorithm") != "AWS4-HMAC-SHA256" or len(credential) != 5:
            raise StorageError(400, "InvalidArgument", "POST form is not AWS4-HMAC-SHA256")
        access_key, date, region = credential[0], credential[1], credential[2]
        if access_key != self.storage.access_key:
            raise StorageError(403, "InvalidAccessKeyId", "The access key does not exist.")
        key = _signing_key(self.storage.secret_key, date, region)
        wanted = hmac.new(key, policy_b64.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(wanted, fields.get("x-amz-signature", "")):
            raise StorageError(403, "SignatureDoesNotMatch",
                               "The request signature we calculated does not match")

    def _check_condition(self, condition: object, fields: Mapping[str, str], size: int) -> str:
        """Check one policy condition; return the (lower-case) field name it covers."""
        failed = StorageError(403, "AccessDenied",
                              f"Invalid according to Policy: Policy Condition failed: "
                              f"{json.dumps(condition)}")
        if isinstance(condition, dict) and len(condition) == 1:
            name, value = next(iter(condition.items()))
            name = str(name).lower()
            actual = self.storage.bucket if name == "bucket" else fields.get(name)
            if actual != value:
                raise failed
            return name
        if isinstance(condition, list) and len(condition) == 3:
            op = str(condition[0]).lower()
            if op == "content-length-range":
                if not int(condition[1]) <= size <= int(condition[2]):
                    raise failed
                return "content-length-range"
            name = str(condition[1]).lstrip("$").lower()
            actual = self.storage.bucket if name == "bucket" else fields.get(name, "")
            ok = actual == condition[2] if op == "eq" else (
                op == "starts-with" and actual.startswith(str(condition[2])))
            if not ok:
                raise failed
            return name
        raise StorageError(400, "InvalidPolicyDocument", f"unknown condition {condition!r}")


class _RangeHasher:
    """md5 and sha256 of consecutive byte ranges of a stream, fed chunk by chunk."""

    def __init__(self, sizes: list[int]) -> None:
        self._sizes = list(sizes)
        self._done: list[tuple[str, str]] = []
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha256()
        self._left = self._sizes[0] if self._sizes else 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and len(self._done) < len(self._sizes):
            take = min(self._left, len(view))
            self._md5.update(view[:take])
            self._sha.update(view[:take])
            self._left -= take
            view = view[take:]
            if self._left == 0:
                self._done.append((self._md5.hexdigest(), self._sha.hexdigest()))
                self._md5, self._sha = hashlib.md5(), hashlib.sha256()
                if len(self._done) < len(self._sizes):
                    self._left = self._sizes[len(self._done)]

    def result(self) -> list[tuple[str, str]]:
        return list(self._done)
