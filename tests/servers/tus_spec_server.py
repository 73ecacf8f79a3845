"""A small tus 1.0.0 server that follows the spec to the letter, with fault knobs for tests.

The real @tus/server stores advertise neither `checksum` nor `concatenation`, and they
cannot be told to fail on cue. This one implements the core protocol plus the creation,
creation-with-upload, creation-defer-length, termination, expiration, checksum (sha1, md5,
sha256, crc32) and concatenation extensions, keeps uploads in memory, and runs aiohttp in a
background thread:

    with TusSpecServer(max_size=10_000) as tus:
        tus.fail_patch(nth=2, status=500, keep_bytes=100)   # 2nd PATCH from now: 100 bytes, 500
        ... client uploads to tus.url ...
        assert tus.stored_bytes(upload_url) == source
        assert tus.counts["HEAD"] >= 1

crc32 is the IEEE CRC-32 as 4 big-endian bytes, base64-encoded (what tusd and zlib give).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlsplit

from aiohttp import web

from tests.servers.lifecycle import Server

TUS_VERSION = "1.0.0"
OFFSET_TYPE = "application/offset+octet-stream"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
)
STATUS_CHECKSUM_MISMATCH = 460
READ_CHUNK = 64 * 1024


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "sha1": lambda b: hashlib.sha1(b).digest(),
    "md5": lambda b: hashlib.md5(b).digest(),
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "crc32": _crc32,
}


class TusError(Exception):
    """Answer the request with `status` and a short plain-text reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class Upload:
    id: str
    length: int | None  # None while the length is deferred
    metadata: str | None  # the Upload-Metadata header exactly as the client sent it
    concat: str | None  # "partial", "final;<urls>" as received, or None
    expires_at: float
    data: bytearray = field(default_factory=bytearray)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def is_final(self) -> bool:
        return bool(self.concat and self.concat.startswith("final"))


@dataclass
class Fault:
    """Answer matching requests with `status` instead of serving them.

    The first `skip` matching requests pass; the next `times` fail. A failing PATCH first
    stores `keep_bytes` of its body (a partial write: the client must HEAD, not assume).
    """

    method: str
    status: int
    skip: int = 0
    times: int = 1
    keep_bytes: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    seen: int = 0
    fired: int = 0

    def count(self, method: str) -> None:
        if method == self.method:
            self.seen += 1

    @property
    def due(self) -> bool:
        return self.seen > self.skip and self.fired < self.times


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body_length: int
    status: int


class TusSpecServer(Server):
    """In-memory tus 1.0.0 server on 127.0.0.1 in a background thread (context manager)."""

    def __init__(self, *, max_size: int | None = None, expires_after: float = 3600.0,
                 max_body: int | None = None, extensions: Sequence[str] = EXTENSIONS) -> None:
        self.max_size = max_size
        self.extensions = tuple(extensions)  # what OPTIONS offers
        # Like a proxy's body limit (nginx client_max_body_size): a PATCH declaring a larger
        # Content-Length gets 413 before its body is read.
        self.max_body = max_body
        self.expires_after = expires_after
        self.uploads: dict[str, Upload] = {}
        self.gone: set[str] = set()  # expired ids: answered with 410, not 404
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._state = threading.Lock()  # test thread reads while the loop thread writes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self) -> TusSpecServer:
        # Bind here, in the caller's thread, so the port is known before start() returns.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(sock, ready), name="tus-spec-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("tus spec server did not start")
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._runner = self._thread = None

    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/files", self._dispatch)
        app.router.add_route("*", "/files/", self._dispatch)
        app.router.add_route("*", "/files/{upload_id}", self._dispatch)
        # Short shutdown grace: a test that cut a request mid-body must not stall teardown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.SockSite(self._runner, sock).start())
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # ----- knobs for tests -------------------------------------------------------------

    def fail(
        self,
        method: str,
        status: int,
        *,
        nth: int = 1,
        times: int = 1,
        keep_bytes: int = 0,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Fail the nth `method` request counted from now (and `times - 1` after it)."""
        fault = Fault(method.upper(), status, nth - 1, times, keep_bytes, dict(headers or {}))
        with self._state:
            self.faults.append(fault)
        return fault

    def fail_patch(self, nth: int = 1, status: int = 500, *, keep_bytes: int = 0) -> Fault:
        return self.fail("PATCH", status, nth=nth, keep_bytes=keep_bytes)

    def lock_once(self) -> Fault:
        """The next PATCH gets 423 Locked, as if another request held the upload."""
        return self.fail("PATCH", 423)

    def fail_head_once(self, status: int = 502) -> Fault:
        return self.fail("HEAD", status)

    def clear_faults(self) -> None:
        with self._state:
            self.faults.clear()

    def delete_upload(self, upload_url: str) -> None:
        """Forget the upload server-side (a cleanup job ran): later requests get 404."""
        with self._state:
            self.uploads.pop(_id_of(upload_url), None)

    def expire_upload(self, upload_url: str) -> None:
        """Expire the upload now: later requests get 410 Gone."""
        with self._state:
            self.uploads[_id_of(upload_url)].expires_at = 0.0

    def stored_bytes(self, upload_url: str) -> bytes:
        with self._state:
            return bytes(self.uploads[_id_of(upload_url)].data)

    def offset(self, upload_url: str) -> int:
        with self._state:
            return self.uploads[_id_of(upload_url)].offset

    # ----- HTTP ------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.headers.get("X-HTTP-Method-Override", request.method).upper()
        body_length = 0
        try:
            response, body_length = await self._handle(method, request)
        except TusError as err:
            response = web.Response(status=err.status, text=err.reason + "\n", headers=err.headers)
        response.headers["Tus-Resumable"] = TUS_VERSION
        self._record(method, request, body_length, response.status)
        return response

    async def _handle(self, method: str, request: web.Request) -> tuple[web.Response, int]:
        if method == "OPTIONS":
            return self._options(), 0
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            raise TusError(412, "Tus-Resumable 1.0.0 required", {"Tus-Version": TUS_VERSION})
        fault = self._take_fault(method)
        if fault is not None:
            return await self._fire(fault, request)
        upload_id = request.match_info.get("upload_id")
        if method == "POST" and upload_id is None:
            return await self._post(request)
        if upload_id is None:
            raise TusError(405, "method not allowed on the creation URL")
        handlers = {"HEAD": self._head, "PATCH": self._patch, "DELETE": self._delete}
        if method not in handlers:
            raise TusError(405, f"{method} not allowed on an upload URL")
        return await handlers[method](request, upload_id)

    def _options(self) -> web.Response:
        headers = {"Tus-Version": TUS_VERSION, "Tus-Extension": ",".join(self.extensions)}
        if "checksum" in self.extensions:
            headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUMS)
        if self.max_size is not None:
            headers["Tus-Max-Size"] = str(self.max_size)
        return web.Response(status=204, headers=headers)

    async def _post(self, request: web.Request) -> tuple[web.Response, int]:
        concat = request.headers.get("Upload-Concat")
        if concat is not None and concat.startswith("final"):
            return self._post_final(request, concat), 0
        if concat not in (None, "partial"):
            raise TusError(400, "Upload-Concat must be 'partial' or 'final;<urls>'")
        length = self._creation_length(request)
        metadata = request.headers.get("Upload-Metadata")
        _check_metadata(metadata)
        upload = self._new_upload(length, metadata, concat)
        headers = {"Location": self._location(upload), **self._expires(upload)}
        received = 0
        if request.headers.get("Content-Type") == OFFSET_TYPE:
            # creation-with-upload: the body is the first chunk, same rules as PATCH.
            try:
                received = await self._append(request, upload)
            except TusError:
                # The client never learns this URL, so don't leave the upload behind.
                with self._state:
                    self.uploads.pop(upload.id, None)
                raise
            headers["Upload-Offset"] = str(upload.offset)
        return web.Response(status=201, headers=headers), received

    def _creation_length(self, request: web.Request) -> int | None:
        length_text = request.headers.get("Upload-Length")
        defer = request.headers.get("Upload-Defer-Length")
        if length_text is not None and defer is not None:
            raise TusError(400, "send Upload-Length or Upload-Defer-Length, not both")
        if defer is not None:
            if defer != "1":
                raise TusError(400, "Upload-Defer-Length must be 1")
            return None
        if length_text is None:
            raise TusError(400, "Upload-Length or Upload-Defer-Length: 1 required")
        length = _non_negative(length_text, "Upload-Length")
        self._check_max_size(length)
        return length

    def _post_final(self, request: web.Request, concat: str) -> web.Response:
        if "Upload-Length" in request.headers:
            raise TusError(400, "a final upload must not carry Upload-Length")
        _, _, urls = concat.partition(";")
        partial_ids = [_id_of(u) for u in urls.split()]
        if not partial_ids:
            raise TusError(400, "Upload-Concat: final needs at least one partial upload URL")
        with self._state:
            partials = [self._live_upload(pid) for pid in partial_ids]
        for part in partials:
            if part.concat != "partial":
                raise TusError(400, f"upload {part.id} is not a partial upload")
            if part.length is None or part.offset != part.length:
                # We don't advertise concatenation-unfinished.
                raise TusError(400, f"partial upload {part.id} is not finished")
        total = sum(part.offset for part in partials)
        self._check_max_size(total)
        metadata = request.headers.get("Upload-Metadata")
        _check_metadata(metadata)
        upload = self._new_upload(total, metadata, concat)
        upload.data = bytearray(b"".join(part.data for part in partials))
        return web.Response(status=201, headers={"Location": self._location(upload)})

    async def _head(self, request: web.Request, upload_id: str) -> tuple[web.Response, int]:
        with self._state:
            upload = self._live_upload(upload_id)
        headers = {"Cache-Control": "no-store", "Upload-Offset": str(upload.offset)}
        if upload.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(upload.length)
        if upload.metadata is not None:
            headers["Upload-Metadata"] = upload.metadata
        if upload.concat is not None:
            headers["Upload-Concat"] = upload.concat
        return web.Response(status=200, headers=headers), 0

    async def _patch(self, request: web.Request, upload_id: str) -> tuple[web.Response, int]:
        with self._state:
            upload = self._live_upload(upload_id)
        if request.headers.get("Content-Type") != OFFSET_TYPE:
            raise TusError(415, f"Content-Type must be {OFFSET_TYPE}")
        if upload.is_final:
            raise TusError(403, "a final upload cannot be patched")
        if self.max_body is not None and (request.content_length or 0) > self.max_body:
            raise TusError(413, f"request body over {self.max_body} bytes")
        if upload.lock.locked():
            # One writer per upload: a second PATCH while the first still streams is refused.
            raise TusError(423, "upload is locked by another request")
        async with upload.lock:
            offset = _non_negative(request.headers.get("Upload-Offset"), "Upload-Offset")
            if offset != upload.offset:
                raise TusError(409, f"Upload-Offset {offset} != server offset {upload.offset}")
            self._declare_length(request, upload)
            received = await self._append(request, upload)
        headers = {"Upload-Offset": str(upload.offset), **self._expires(upload)}
        return web.Response(status=204, headers=headers), received

    def _declare_length(self, request: web.Request, upload: Upload) -> None:
        """creation-defer-length: a PATCH may set the length once; it never changes after."""
        length_text = request.headers.get("Upload-Length")
        if length_text is None:
            return
        length = _non_negative(length_text, "Upload-Length")
        if upload.length is not None and length != upload.length:
            raise TusError(400, "Upload-Length cannot change")
        self._check_max_size(length)
        if length < upload.offset:
            raise TusError(400, "Upload-Length is below the current offset")
        upload.length = length

    async def _delete(self, request: web.Request, upload_id: str) -> tuple[web.Response, int]:
        with self._state:
            self._live_upload(upload_id)
            del self.uploads[upload_id]
        return web.Response(status=204), 0

    # ----- body handling ---------------------------------------------------------------

    async def _append(self, request: web.Request, upload: Upload) -> int:
        """Read the body and apply it at the current offset; returns bytes received.

        With Upload-Checksum the chunk is all-or-nothing (460 and discarded on mismatch);
        without it, whatever arrived before a dropped connection is kept, as real servers do.
        """
        checksum = _parse_checksum(request.headers.get("Upload-Checksum"))
        limit = upload.length if upload.length is not None else self.max_size
        body, complete = await _read_body(request)
        if limit is not None and upload.offset + len(body) > limit:
            raise TusError(413, "body goes past Upload-Length / Tus-Max-Size")
        if checksum is not None:
            algo, expected = checksum
            if not complete:
                return len(body)  # an interrupted chunk can't be verified: discard it
            if CHECKSUMS[algo](body) != expected:
                raise TusError(STATUS_CHECKSUM_MISMATCH, "Checksum Mismatch")
        with self._state:
            upload.data += body
        return len(body)

    async def _fire(self, fault: Fault, request: web.Request) -> tuple[web.Response, int]:
        received = 0
        if fault.method == "PATCH":
            # Drain the body so the client reads our status, not a reset connection.
            body, _ = await _read_body(request)
            received = len(body)
            self._keep_partial(request, body[: fault.keep_bytes])
        response = web.Response(status=fault.status, text="injected fault\n")
        response.headers.update(fault.headers)
        return response, received

    def _keep_partial(self, request: web.Request, head: bytes) -> None:
        upload_id = request.match_info.get("upload_id")
        with self._state:
            upload = self.uploads.get(upload_id or "")
            offset_text = request.headers.get("Upload-Offset", "")
            if upload is None or not head or offset_text != str(upload.offset):
                return
            room = None if upload.length is None else upload.length - upload.offset
            upload.data += head if room is None else head[:room]

    # ----- helpers ---------------------------------------------------------------------

    def _take_fault(self, method: str) -> Fault | None:
        """Every fault counts every matching request; the oldest due one fires.

        A fault that is due on a request another fault took stays due for the next one.
        """
        with self._state:
            for fault in self.faults:
                fault.count(method)
            fault = next((f for f in self.faults if f.method == method and f.due), None)
            if fault is not None:
                fault.fired += 1
            return fault

    def _live_upload(self, upload_id: str) -> Upload:
        """Caller holds self._state. 404 for unknown/terminated, 410 for expired."""
        upload = self.uploads.get(upload_id)
        if upload is not None and upload.expires_at <= time.time():
            del self.uploads[upload_id]
            self.gone.add(upload_id)
        if upload_id in self.gone:
            raise TusError(410, "upload expired")
        if upload is None:
            raise TusError(404, "upload not found")
        return upload

    def _new_upload(self, length: int | None, metadata: str | None, concat: str | None) -> Upload:
        upload = Upload(
            id=uuid.uuid4().hex,
            length=length,
            metadata=metadata,
            concat=concat,
            expires_at=time.time() + self.expires_after,
        )
        with self._state:
            self.uploads[upload.id] = upload
        return upload

    def _check_max_size(self, length: int) -> None:
        if self.max_size is not None and length > self.max_size:
            raise TusError(413, f"upload length {length} exceeds Tus-Max-Size {self.max_size}")

    def _location(self, upload: Upload) -> str:
        return f"{self.url}{upload.id}"

    @staticmethod
    def _expires(upload: Upload) -> dict[str, str]:
        return {"Upload-Expires": formatdate(upload.expires_at, usegmt=True)}

    def _record(self, method: str, request: web.Request, body_length: int, status: int) -> None:
        entry = RecordedRequest(method, request.path, dict(request.headers), body_length, status)
        with self._state:
            self.counts[method] += 1
            self.requests.append(entry)


async def _read_body(request: web.Request) -> tuple[bytes, bool]:
    """The body as far as it arrived, and whether it arrived completely."""
    chunks: list[bytes] = []
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            chunks.append(chunk)
    except ConnectionError:  # aiohttp: ConnectionResetError("Connection lost")
        return b"".join(chunks), False
    body = b"".join(chunks)
    expected = request.content_length
    return body, expected is None or len(body) == expected


def _parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    if header is None:
        return None
    algo, _, value = header.strip().partition(" ")
    if algo not in CHECKSUMS:
        raise TusError(400, f"unsupported checksum algorithm {algo!r}")
    try:
        return algo, base64.b64decode(value.strip(), validate=True)
    except ValueError as err:
        raise TusError(400, "Upload-Checksum value is not base64") from err


def _check_metadata(header: str | None) -> None:
    """Keys non-empty, unique, no spaces or commas; values base64 (may be empty)."""
    if header is None:
        return
    keys: set[str] = set()
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key or key in keys:
            raise TusError(400, "Upload-Metadata keys must be non-empty and unique")
        keys.add(key)
        try:
            base64.b64decode(value, validate=True)
        except ValueError as err:
            raise TusError(400, f"Upload-Metadata value of {key!r} is not base64") from err


def _non_negative(text: str | None, name: str) -> int:
    if text is None or not text.isdigit():
        raise TusError(400, f"{name} must be a non-negative integer")
    return int(text)


def _id_of(upload_url: str) -> str:
    """Upload URLs may be absolute or relative; the id is the last path segment."""
    return urlsplit(upload_url).path.rstrip("/").rsplit("/", 1)[-1]
