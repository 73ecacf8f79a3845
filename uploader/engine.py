"""Orchestration: plan, resume, send parts in parallel, complete; fall back when all else fails."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
)

from chunker import Part, PartDigest, PartLimits, digest_range, plan_parts
from resume import FileIdentity, LockHeld, Manifest, ManifestStore, PartRecord, ServerPart, reconcile
from uploader.aio import gather_or_cancel
from uploader.config import HTTP_SCHEMES, TUS_SCHEMES, UploadOptions
from uploader.diagnostics import diagnose, format_block
from uploader.errors import (
    RESUME_HINT,
    ChecksumUnsupported,
    ConnectFailed,
    LockedError,
    PermanentError,
    SessionLost,
    SourceChangedError,
    TransientError,
    UploadFailed,
    UrlExpired,
    UsageError,
    next_step,
)
from uploader.progress import Progress
from uploader.redact import redact_url
from uploader.result import UploadResult
from uploader.retry import RetryPolicy
from uploader.source import mb, open_source, size_arg
from uploader.targets.base import Completed, MultipartProtocol, PartChecksums
from uploader.transport_async import AsyncTransport
from uploader.wire import FileSlice, HttpRequest, HttpResponse

log = logging.getLogger(__name__)
T = TypeVar("T")
CHECKPOINT_EVERY = 1.0  # seconds between manifest writes while parts stream in
# Complete-time error codes that mean "your part list and mine differ".
PART_MISMATCH = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall"})


def build_protocol(options: UploadOptions, source: str) -> MultipartProtocol:
    scheme = options.target
    if scheme == "s3":
        from uploader.aws import s3_protocol

        return s3_protocol(options, source)
    if scheme in TUS_SCHEMES:
        from uploader.targets.tus import tus_protocol

        return tus_protocol(options, source)
    if scheme == "procore":
        from uploader.targets.procore import procore_protocol

        return procore_protocol(options, source)
    if scheme in HTTP_SCHEMES:
        from uploader.targets.http import http_protocol

        return http_protocol(options, source)
    raise UsageError(
        f"unknown destination {redact_url(options.destination)!r}: use s3://BUCKET/KEY, "
        "tus+https://HOST/PATH/, procore://COMPANY_ID[/projects/PROJECT_ID] or http(s)://HOST/PATH"
    )


def warn_kept_attributes(manifest: Manifest, options: UploadOptions) -> None:
    """An upload created on the server keeps its content type and metadata (S3 took them at
    CreateMultipartUpload, tus at creation): say so when this command asks for others."""
    if manifest.attributes and manifest.attributes != options.attributes:
        log.warning("The interrupted upload keeps the content type and metadata it was created with "
                    "(--content-type and --metadata apply to new uploads; --restart starts it over with them)")


class _Forward:
    """A request body's bytes shown on the bar as they are handed to the socket. A retry starts
    again from byte 0, and the bar moves only past the furthest point reached: a byte sent
    twice never counts twice."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.at, self.shown = progress, 0, 0

    def restart(self) -> None:
        self.at = 0

    def __call__(self, nbytes: int) -> None:
        self.at += nbytes
        if self.at > self.shown:
            self.progress.commit(self.at - self.shown)
            self.shown = self.at


class _Upload:
    """One run of one file to one destination."""

    def __init__(self, options: UploadOptions, identity: FileIdentity, protocol: MultipartProtocol,
                 transport: AsyncTransport, store: ManifestStore, show_bar: bool) -> None:
        self.options = options
        self.identity = identity
        self.protocol = protocol
        self.transport = transport
        self.store = store
        self.policy = RetryPolicy(attempts=options.retries)
        self.progress = Progress(identity.size, label=options.file_name,
                                 bar=show_bar, callback=options.progress)
        self.manifest: Manifest | None = None
        self.bytes_sent = 0
        self.bytes_resumed = 0
        self._unverified: dict[int, Sequence[ServerPart]] = {}  # listed by the server, not yet checked
        self._kept: list[PartRecord] = []  # parts kept from an interrupted run: see note_kept_parts
        self._kept_check: asyncio.Future[PartRecord | None] | None = None
        self._stop_checks = threading.Event()
        self.retries = 0
        self.resumed = False
        self.parts_total = 0  # set by each flow from its plan (or the manifest's, on resume)
        self._last_save = 0.0
        self._save_lock = asyncio.Lock()
        self._announced = False

    def announce(self) -> None:
        """Log "Uploading file:" once the checks that send nothing (manifest, file identity, the
        server's size limit, the part plan) have passed: a run they refuse must not claim to be
        uploading."""
        if not self._announced:
            self._announced = True
            log.info("Uploading file: %s (%s)", self.options.file_name, mb(self.identity.size))

    # -- retries --------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.policy.delay(state.attempt_number, exc)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("Retrying after attempt %d/%d failed: %s",
                 state.attempt_number, self.policy.attempts, exc)

    async def call(self, build: Callable[[], HttpRequest], parse: Callable[[HttpResponse], T],
                   on_sent: Callable[[int], None] | None = None) -> T:
        """Send with retries; every attempt builds its request (and body) afresh.
        UrlExpired is not retried here: resending to the same expired URL cannot succeed,
        so it goes to the caller, which renews the URL and calls again (no budget spent)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.attempts), wait=self._wait,
            retry=retry_if_exception_type(TransientError) & retry_if_not_exception_type(UrlExpired),
            reraise=True,
            before_sleep=self._before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                request = build()
                if isinstance(request.body, FileSlice):  # file bytes only, retries included
                    self.bytes_sent += request.body_length
                try:
                    return parse(await self.transport.send(request, on_sent))
                except TransientError:
                    self.check_source()  # a short read is a changed file, not a network fault
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")

    def check_source(self) -> None:
        """Stop (exit 2, manifest kept) if the file changed under us: sending on would
        build an object that is neither the old file nor the new one."""
        try:
            changed = self.identity.differences(FileIdentity.of(self.identity.path))
        except OSError:
            changed = ["path"]
        if changed:
            raise SourceChangedError(
                f"{self.identity.path} changed while uploading ({', '.join(changed)} differ); the manifest "
                "is kept. Run again with --restart to upload the file as it is now")

    # -- manifest -------------------------------------------------------------

    async def checkpoint(self, force: bool = False) -> None:
        """Persist progress; throttled because a 10,000-part manifest is large."""
        if self.manifest is None:
            return
        now = time.monotonic()
        if not force and now - self._last_save < CHECKPOINT_EVERY:
            return
        async with self._save_lock:
            self._last_save = now
            try:
                await asyncio.to_thread(self.store.save, self.manifest)
            except OSError as exc:
                raise UploadFailed(
                    f"could not save the resume manifest {self.store.path} ({exc.strerror or exc}); the "
                    f"previous manifest is intact. Free some space or choose another --state-dir, then "
                    f"{RESUME_HINT}") from exc

    # -- the flow -------------------------------------------------------------

    async def run(self) -> Completed:
        if self.protocol.kind == "tus":
            from uploader.tus_flow import run_tus

            return await run_tus(self)
        if self.protocol.kind == "procore":
            from uploader.procore_flow import run_procore

            return await run_procore(self)
        # A plain HTTP server takes the file in one request or not at all (no parts, no resume).
        if self.identity.size < self.options.part_size_bytes or self.protocol.kind == "http":
            self.announce()
            return await self.single_shot()
        manifest = self.load_manifest()
        self.announce()
        if manifest is not None:
            try:
                return await self.resume(manifest)
            except SessionLost as exc:
                done = await self.completed_earlier(manifest)
                if done is not None:
                    return done
                log.warning("The server no longer has the interrupted upload (%s); "
                            "starting a new upload", exc)
                self.progress.reset()  # a new upload: the old parts are gone
                self.bytes_resumed, self.resumed = 0, False
        return await self.fresh()

    async def completed_earlier(self, manifest: Manifest) -> Completed | None:
        """A run killed after the server completed the upload but before it heard so: the
        upload id is gone (NoSuchUpload), the object is there. Never send it again."""
        etags = [p.etag for p in manifest.parts]
        check = getattr(self.protocol, "completed_by_earlier_run", None)
        head = getattr(self.protocol, "head", None)
        if check is None or head is None or any(e is None for e in etags):
            return None
        resp = await self.call(head, lambda r: r)
        done: Completed | None = check(resp, self.identity.size, etags)
        if done is not None:
            log.info("The previous run had already completed this upload; nothing to send")
            self.store.delete()
            self.manifest = None
            self.bytes_resumed = self.identity.size
        return done

    def load_manifest(self) -> Manifest | None:
        manifest, problem = self.store.load_or_none()
        if problem:
            raise UsageError(f"the resume manifest {self.store.path} is unusable ({problem}); "
                             "run again with --restart to start over")
        if manifest is None:
            return None
        if self.options.restart:
            return None  # the caller aborted the old upload already
        changed = manifest.file.differences(self.identity)
        if changed:
            raise SourceChangedError(
                f"{self.identity.path} changed since the interrupted upload ({', '.join(changed)} "
                "differ); nothing was sent. Run again with --restart to upload it from the start"
            )
        warn_kept_attributes(manifest, self.options)
        return manifest

    async def fresh(self) -> Completed:
        parts = self.plan(self.protocol.limits)
        session = await self._create(parts[0].length)
        self.parts_total = len(parts)
        self.manifest = Manifest(
            file=self.identity, destination=self.protocol.destination(), target=self.protocol.kind,
            part_size=parts[0].length, parts=[PartRecord(p.number, p.offset, p.length) for p in parts],
            session=session, attributes=self.options.attributes,
        )
        await self.checkpoint(force=True)
        return await self.send_parts(self.manifest.parts)

    def plan(self, limits: PartLimits) -> list[Part]:
        """The parts of a new upload, saying so when a --part-size the user chose had to grow
        to fit the target (aws-cli grows it silently; a user who asked for 5 MiB should know)."""
        asked = self.options.part_size_bytes
        parts = plan_parts(self.identity.size, asked, limits)
        if isinstance(self.options.part_size, int) and parts and parts[0].length > asked:
            log.info("--part-size %s does not fit the target's limits (at most %s parts of at least %s): "
                     "using parts of %s", size_arg(asked), f"{limits.max_parts:,}", size_arg(limits.min_part),
                     size_arg(parts[0].length))
        return parts

    async def _create(self, part_size: int) -> dict[str, Any]:
        create = partial(self.protocol.create, self.identity.size, part_size)
        try:
            return await self.call(create, self.protocol.parse_create)
        except ChecksumUnsupported as exc:
            # The target switched to a checksum the store accepts: one more create, once.
            log.warning("%s", exc)
            return await self.call(create, self.protocol.parse_create)

    async def resume(self, manifest: Manifest) -> Completed:
        self.manifest = manifest
        self.resumed = True
        if isinstance(self.protocol, PartChecksums):  # parts go on as the upload was created
            self.protocol.use_session(manifest.session)
        self.parts_total = len(manifest.parts)
        if isinstance(self.options.part_size, int) and self.options.part_size != manifest.part_size:
            log.info("The interrupted upload continues with its parts of %s (--part-size applies to new "
                     "uploads)", mb(manifest.part_size))
        server = await self.server_parts(manifest)
        # Parts the server lists but the manifest never recorded must be checked against the
        # file (a digest each); that waits in the queue behind the parts the server lacks, so
        # a resume starts sending at once. No local hashing here: they come back in todo.
        todo = reconcile(manifest.parts, server, lambda _part: None)
        # A part cut off by the kill may be listed short: that one is simply sent again.
        self._unverified = {p.number: whole for p in todo
                            if (whole := [s for s in server.get(p.number, ()) if s.size == p.length])}
        todo.sort(key=lambda p: p.number in self._unverified)
        self.bytes_resumed = manifest.bytes_done()
        listed = self.bytes_resumed + sum(p.length for p in todo if p.number in self._unverified)
        log.info("Resuming: %d of %d parts (%s) already on the server%s",
                 len(manifest.parts) - len(todo) + len(self._unverified), len(manifest.parts), mb(listed),
                 f", {len(self._unverified)} of them finished after the last checkpoint: checked against "
                 "the file before they count" if self._unverified else "")
        self.progress.start_at(self.bytes_resumed)
        self.note_kept_parts(manifest, todo)
        return await self.send_parts(todo)

    def note_kept_parts(self, manifest: Manifest, todo: list[PartRecord]) -> None:
        """The parts kept from the interrupted run, to be hashed again before the upload is
        completed (xxh3, in a thread, while the missing ones are sent: start_kept_check): a file
        rewritten with its size and mtime kept (cp -p, rsync -t, an archive unpacked) passes the
        identity check but must not complete. S3 and Procore both use this."""
        sending = {p.number for p in todo}
        self._kept = [p for p in manifest.parts if p.xxh3_128 and p.number not in sending]

    def start_kept_check(self) -> None:
        """Once a first part is on the server (not before: on 2 cores hashing GiBs of kept parts
        would delay the resume's first byte), or at the end if nothing had to be sent."""
        if self._kept and self._kept_check is None:
            self._kept_check = asyncio.ensure_future(asyncio.to_thread(
                _first_changed_part, self.identity.path, self._kept, self._stop_checks))

    async def kept_parts_unchanged(self) -> None:
        """Raise SourceChangedError (exit 2, naming --restart) if a kept part's bytes changed."""
        self.start_kept_check()
        if self._kept_check is None:
            return
        try:
            changed = await self._kept_check
        except OSError:  # a short read: the file shrank or vanished
            self.check_source()
            raise
        if changed is not None:
            raise SourceChangedError(
                f"{self.identity.path} differs from what the interrupted run uploaded (part {changed.number}, "
                f"bytes {changed.offset}-{changed.offset + changed.length - 1}; size and mtime are the same); "
                "the upload was not completed and the manifest is kept. Run again with --restart to upload "
                "the file as it is now")

    async def _held_already(self, record: PartRecord) -> bool:
        """A part the server listed before this run: kept (not sent) if its ETag matches."""
        listed = self._unverified.pop(record.number, None)
        if not listed:
            return False
        missing = await asyncio.to_thread(reconcile, [record], {record.number: listed}, self._local_etag)
        if missing:
            return False
        self.bytes_resumed += record.length
        self.progress.start_at(record.length)
        await self.checkpoint()
        return True

    def _local_etag(self, record: PartRecord) -> str | None:
        # Only for parts the server has but the manifest never recorded (rare): the digest an
        # ETag is made of (S3: md5) is computed here, on demand, not for every part sent.
        needs = self.protocol.etag_digests if isinstance(self.protocol, PartChecksums) else self.protocol.part_digests
        digest = digest_range(self.identity.path, record.offset, record.length, needs)
        return self.protocol.local_etag(digest)

    async def server_parts(self, manifest: Manifest) -> dict[int, list[ServerPart]]:
        found: dict[int, list[ServerPart]] = {}
        marker: str | None = None
        while True:
            listing = await self.call(partial(self.protocol.list_parts, manifest.session, marker),
                                      self.protocol.parse_list_parts)
            for p in listing.parts:
                found.setdefault(p.number, []).append(p)
            if listing.next_marker is None or listing.next_marker == marker:
                return found
            marker = listing.next_marker

    async def send_parts(self, todo: list[PartRecord]) -> Completed:
        await self.send_then_check_kept(self._send_all(todo))
        return await self.complete()

    async def send_then_check_kept(self, sending: Awaitable[None]) -> None:
        """Send, then make sure the kept parts are unchanged: the step before completing."""
        try:
            await sending
            await self.kept_parts_unchanged()
        finally:
            self._stop_checks.set()  # a failed run does not wait for the whole file to be hashed
            if self._kept_check is not None and not self._kept_check.done():
                self._kept_check.cancel()

    async def _send_all(self, todo: list[PartRecord]) -> None:
        assert self.manifest is not None
        queue: asyncio.Queue[PartRecord] = asyncio.Queue()
        for record in todo:
            queue.put_nowait(record)
        workers = [asyncio.create_task(self._worker(queue))
                   for _ in range(min(self.options.concurrency, len(todo)))]
        try:
            await gather_or_cancel(workers)
        finally:
            await self.checkpoint(force=True)

    async def _worker(self, queue: asyncio.Queue[PartRecord]) -> None:
        assert self.manifest is not None
        session = self.manifest.session
        while not queue.empty():
            record = queue.get_nowait()
            if await self._held_already(record):
                continue
            part = Part(record.number, record.offset, record.length)
            digest = await self._digest(part)
            etag = await self.call(partial(self.protocol.upload_part, session, part, digest),
                                   partial(_swap(self.protocol.parse_upload_part), part))
            record.xxh3_128, record.etag = digest.xxh3_128, etag
            self.start_kept_check()
            if digest.crc32 is not None:  # kept for a Complete that repeats it, in this run or the next
                record.crc32 = digest.crc32_b64
            self.progress.commit(part.length)
            await self.checkpoint()

    async def _digest(self, part: Part) -> PartDigest:
        # Off the event loop: md5 runs at ~0.6 GB/s and would stall every other part.
        try:
            return await asyncio.to_thread(digest_range, self.identity.path, part.offset, part.length,
                                           self.protocol.part_digests)
        except OSError as exc:  # a short read: the file shrank (or vanished) under us
            self.check_source()
            raise UploadFailed(f"cannot read {self.identity.path}: {exc}; {RESUME_HINT}") from exc

    async def complete(self, rechecks: int = 0) -> Completed:
        assert self.manifest is not None
        self.check_source()
        session = self.manifest.session
        missing = sum(p.etag is None for p in self.manifest.parts)
        if missing:
            raise UploadFailed(f"{missing} parts were not confirmed; {RESUME_HINT}")
        build = await self._complete_request(session, self.manifest.parts)
        try:
            done = await self.call(build, lambda resp: self.protocol.parse_complete(resp, session))
        except PermanentError as exc:
            # A few rounds: on a link that drops parts, a re-sent part may be dropped again.
            if rechecks >= 3 or exc.code not in PART_MISMATCH:
                raise
            # A part answered 200 may never have been stored (a middlebox, a flaky store):
            # ask the server what it really has, resend the rest, complete once more.
            log.warning("The server refused to complete (%s); checking which parts it has", exc.code)
            todo = await asyncio.to_thread(reconcile, self.manifest.parts,
                                           await self.server_parts(self.manifest), self._local_etag)
            await self._send_all(todo)
            return await self.complete(rechecks + 1)
        self.store.delete()  # only now: the server confirmed the whole object
        self.manifest = None
        return done

    async def _complete_request(self, session: dict[str, Any],
                                parts: list[PartRecord]) -> Callable[[], HttpRequest]:
        protocol = self.protocol
        if not isinstance(protocol, PartChecksums):
            etags = [(p.number, p.etag) for p in parts if p.etag is not None]
            return lambda: protocol.complete(session, etags)
        if "crc32" in protocol.part_digests:
            try:
                await asyncio.to_thread(self._fill_crc32, parts)
            except OSError as exc:  # a short read: the file shrank (or vanished) under us
                self.check_source()
                raise UploadFailed(f"cannot read {self.identity.path}: {exc}; {RESUME_HINT}") from exc
        items = [(p.number, p.etag, p.crc32) for p in parts if p.etag is not None]
        return lambda: protocol.complete_with_checksums(session, items)

    def _fill_crc32(self, parts: list[PartRecord]) -> None:
        """CRC-32 of parts neither the manifest nor ListParts knew (sent by a process killed
        before it checkpointed them, on a server that does not list checksums): from the file."""
        lacking = [p for p in parts if p.crc32 is None]
        if lacking:
            log.debug("Computing the CRC-32 of %d parts sent by an earlier run", len(lacking))
        for p in lacking:
            p.crc32 = digest_range(self.identity.path, p.offset, p.length, ("crc32",)).crc32_b64

    async def single_shot(self) -> Completed:
        try:
            return await self._single_shot()
        except ChecksumUnsupported as exc:  # the target switched to a checksum the store accepts
            log.warning("%s", exc)
            return await self._single_shot()

    async def _single_shot(self) -> Completed:
        # A target whose request carries no digest (plain HTTP, any size) skips a full read of the file.
        digest = await self._digest(Part(1, 0, self.identity.size)) if self.protocol.part_digests else None
        moved = _Forward(self.progress)  # one request may carry gigabytes (plain HTTP): move the bar

        def build() -> HttpRequest:
            moved.restart()
            return self.protocol.single_shot(self.identity.size, digest)

        done = await self.call(build, self.protocol.parse_single_shot, on_sent=moved)
        self.progress.commit(self.identity.size - moved.shown)
        self.store.delete()
        return done

    async def restart(self) -> None:
        """--restart: abort what the old manifest points at, then forget it."""
        manifest, problem = self.store.load_or_none()
        if problem:
            log.warning("The old manifest is unusable (%s): an upload it started cannot be aborted and stays "
                        "on the server until it expires (or an S3 lifecycle rule removes it)", problem)
        if manifest is not None and manifest.session.get("upload_id"):
            try:
                for request in abort_requests(self.protocol, manifest.session):
                    await self.transport.send(request)
                log.info("Aborted the previous upload %s", redact_url(str(manifest.session["upload_id"])))
            except UploadFailed as exc:
                log.warning("Could not abort the previous upload (%s); starting over anyway", exc)
        self.store.delete()


def _first_changed_part(path: str, parts: Sequence[PartRecord], stop: threading.Event) -> PartRecord | None:
    for part in parts:
        if stop.is_set():
            return None
        if digest_range(path, part.offset, part.length).xxh3_128 != part.xxh3_128:
            return part
    return None


def abort_requests(protocol: MultipartProtocol, session: dict[str, Any]) -> list[HttpRequest]:
    """Everything to delete for a session (tus concatenation made several uploads)."""
    many = getattr(protocol, "abort_requests", None)
    return list(many(session)) if many else [protocol.abort(session)]


def _swap(parse: Callable[[HttpResponse, Part], T]) -> Callable[[Part, HttpResponse], T]:
    return lambda part, resp: parse(resp, part)


# -- abort ----------------------------------------------------------------------------

async def abort_async(options: UploadOptions) -> bool:
    """Delete the server-side upload the manifest names (tus termination, S3
    AbortMultipartUpload), then the manifest. False when there was nothing to abort."""
    protocol = build_protocol(options, options.source)
    store = ManifestStore(options.state_path, options.source, protocol.destination())
    try:
        store.acquire()
    except LockHeld as held:
        raise LockedError(f"another chunkhaul ({held}) is uploading this file; stop it first") from None
    try:
        manifest, problem = store.load_or_none()
        if problem:
            log.warning("The resume manifest %s is unusable (%s); removing it", store.path, problem)
        elif manifest is None:
            if not os.path.lexists(options.source):  # most likely a typo in the path
                raise UsageError(f"{options.source}: no such file, and no interrupted upload of it to "
                                 f"{protocol.destination()} in {store.dir}; check the path")
            return False
        else:
            await _abort_server_side(protocol, manifest.session, options)
        store.delete()
        return manifest is not None
    finally:
        store.release()


async def _abort_server_side(protocol: Any, session: dict[str, Any], options: UploadOptions) -> None:
    # tus concatenation leaves several uploads (partials + final); abort_requests names them all.
    requests = abort_requests(protocol, session)
    async with AsyncTransport(concurrency=1, connect_timeout=options.connect_timeout,
                              stall_timeout=options.stall_timeout, ca_bundle=options.ca_bundle) as transport:
        for request in requests:
            resp = await _send_retrying(transport, request)
            if resp.ok:
                log.info("Deleted the upload on the server (%s: HTTP %d)", request.label, resp.status)
            elif resp.status in (404, 410):  # expired or deleted before: nothing left to delete
                log.info("The server no longer had the upload (%s: HTTP %d)", request.label, resp.status)
            elif resp.status in (405, 501):
                log.warning("The server cannot delete uploads (HTTP %d); it will expire them itself",
                            resp.status)
            else:
                raise UploadFailed(f"{request.label}: HTTP {resp.status}; the manifest is kept, "
                                   "run chunkhaul abort again")


async def _send_retrying(transport: AsyncTransport, request: HttpRequest, attempts: int = 3) -> HttpResponse:
    for attempt in range(1, attempts + 1):
        try:
            resp = await transport.send(request)
        except TransientError:
            if attempt == attempts:
                raise
        else:
            if resp.status < 500 or attempt == attempts:
                return resp
        await asyncio.sleep(attempt)
    raise AssertionError("unreachable")


def _as_options(source: UploadOptions | str, destination: str | None, kwargs: dict[str, Any]) -> UploadOptions:
    if isinstance(source, UploadOptions):
        if destination is not None or kwargs:
            raise UsageError("pass either an UploadOptions object or source, destination and keywords")
        return source
    if destination is None:
        raise UsageError("a destination is required, e.g. s3://BUCKET/KEY")
    return UploadOptions.build(str(source), destination, **kwargs)


async def upload_async(source: UploadOptions | str, destination: str | None = None, /, *,
                       show_bar: bool = False, **kwargs: Any) -> UploadResult:
    """Upload one file: `upload_async(options)` or `upload_async(path, dest, **options)`."""
    options = _as_options(source, destination, kwargs)
    identity = open_source(options.source)
    protocol = build_protocol(options, identity.path)
    store = ManifestStore(options.state_path, identity.path, protocol.destination())
    _lock(store, options.file_name, protocol)
    try:
        return await _upload_locked(options, identity, protocol, store, show_bar)
    finally:
        store.release()


def _lock(store: ManifestStore, name: str, protocol: MultipartProtocol) -> None:
    try:
        store.acquire()
    except LockHeld as held:
        raise LockedError(
            f"another chunkhaul, {held}, is already uploading {name} "
            f"to {protocol.destination()}; wait for it to finish or stop it first"
        ) from None
    except OSError as exc:
        hint = "" if "--state-dir" in str(exc.strerror) else "; choose another with --state-dir"
        raise UsageError(f"state directory {store.dir} is not usable ({exc.strerror}){hint}") from None


async def _upload_locked(options: UploadOptions, identity: FileIdentity, protocol: MultipartProtocol,
                         store: ManifestStore, show_bar: bool) -> UploadResult:
    name = options.file_name
    started = time.monotonic()
    async with AsyncTransport(
        concurrency=options.concurrency, connect_timeout=options.connect_timeout,
        stall_timeout=options.stall_timeout, ca_bundle=options.ca_bundle,
        force_close=options.force_close,
    ) as transport:
        run = _Upload(options, identity, protocol, transport, store, show_bar)
        try:
            done, fallback_reason = await _stopped_by_callback(run, _run_all(run, started))
        finally:
            run.progress.close()
    seconds = time.monotonic() - started
    # The rate of this run: bytes the server already had are not "uploaded" now.
    moved = identity.size - run.bytes_resumed
    rate = moved / (1024 * 1024) / seconds if seconds > 0 else 0.0
    if fallback_reason is not None:
        log.info("UPLOAD SUCCEEDED VIA SYNC FALLBACK (total %.1fs including async attempts)", seconds)
    log.info("✓ Successfully uploaded '%s' (took %.1fs, %.2f MB/s)", name, seconds, rate)
    log.info("Stored at %s", redact_url(done.location))
    return UploadResult(
        file=identity.path, destination=done.location, bytes_total=identity.size,
        bytes_sent=run.bytes_sent, bytes_resumed=run.bytes_resumed,
        parts=1 if fallback_reason is not None else run.parts_total or 1,
        part_retries=run.retries, seconds=round(seconds, 3), mib_per_s=round(rate, 2),
        upload_id=done.upload_id, etag=done.etag, resumed=run.resumed,
        fallback_used=fallback_reason is not None, fallback_reason=fallback_reason,
    )


async def _run_all(run: _Upload, started: float) -> tuple[Completed, dict[str, Any] | None]:
    """The upload, then the fallback if allowed; the fallback's reason, or None."""
    only = run.options.fallback == "only"
    if only:
        _check_single_shot(run)  # before --restart aborts anything
    if run.options.restart:
        await run.restart()
    if only:
        return await _fallback(run), {"error_type": "requested", "message": "--fallback only"}
    try:
        return await _run_guarded(run.run(), run), None
    except UploadFailed as exc:
        reason = _fallback_reason(exc, run, started)
        if reason is None:
            raise
        return await _fallback(run), reason


def _check_single_shot(run: _Upload) -> None:
    """--fallback only for a file no single request can carry: refused before anything is sent
    (tus has no such limit: its fallback sends the missing bytes in one PATCH)."""
    size, limit, kind = run.identity.size, run.protocol.single_shot_max, run.protocol.kind
    if kind != "tus" and size > limit:
        raise UsageError(f"--fallback only: no single-shot upload exists for {mb(size)} on {kind} "
                         f"(limit {mb(limit)}); drop --fallback only to upload it in parts")


async def _stopped_by_callback(run: _Upload, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` in a task that a raising progress callback cancels: the upload stops as on
    Ctrl-C (manifest saved, the server's upload left to resume), then the caller gets the
    callback's own exception, unchanged, instead of an error of ours."""
    task = asyncio.ensure_future(work)
    run.progress.on_callback_error = task.cancel
    try:
        return await task
    except BaseException:
        failed = run.progress.callback_error
        outer = asyncio.current_task()
        if failed is None or (outer is not None and getattr(outer, "cancelling", lambda: 0)()):
            raise  # no callback error, or our caller is being cancelled: that wins
        raise failed from None


def _fallback_reason(exc: UploadFailed, run: _Upload, started: float) -> dict[str, Any] | None:
    """Diagnostics when the async path died of the network (not a 4xx, not a changed file)
    and the fallback is allowed; None when the failure should stand."""
    cause = exc.__cause__
    # Only a link that broke mid-way: when nothing could connect at all, one big request
    # to the same address cannot do better.
    network = isinstance(cause, TransientError) and cause.status is None and not isinstance(cause, ConnectFailed)
    if run.options.fallback != "auto" or not network:
        return None
    info = diagnose(exc, attempts=run.policy.attempts, tls=run.transport.tls_info)
    lines = [
        "=" * 60,
        "ASYNC UPLOAD FAILED AFTER ALL RETRIES",
        f"  file: {run.options.file_name} ({mb(run.identity.size)})",
        f"  time spent on async attempts: {time.monotonic() - started:.1f}s",
        *format_block(info),
        "Falling back to synchronous upload...",
        "=" * 60,
    ]
    for line in lines:
        log.warning("%s", line)
    return info


async def _fallback(run: _Upload) -> Completed:
    # Imported here: requests (~0.15 s) is only needed when the async path gave up.
    from uploader.fallback import single_shot_upload
    from uploader.transport_sync import CANCEL

    run.announce()
    await run.checkpoint(force=True)
    fallback = single_shot_upload
    if run.protocol.kind == "tus":  # tus can send just the bytes the server lacks
        from uploader.tus_sync import sync_fallback as fallback
    cancel = threading.Event()
    token = CANCEL.set(cancel)
    try:
        done = await asyncio.to_thread(fallback, run.protocol, run.identity, run.options, run.store)
    except asyncio.CancelledError:
        cancel.set()  # the worker thread cuts its connection and stops
        raise
    finally:
        CANCEL.reset(token)
    run.manifest = None
    run.bytes_sent += run.identity.size - run.progress.done
    run.progress.commit(run.identity.size - run.progress.done)
    return done


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


async def _run_guarded(flow: Awaitable[Completed], run: _Upload) -> Completed:
    """Turn what escapes the flow into a final error; the manifest always survives."""
    try:
        return await flow
    except TransientError as exc:
        raise UploadFailed(f"upload failed after {_attempts(run.policy.attempts)}: {exc}; "
                           f"{next_step(run.store.path.exists())}") from exc
    except SessionLost as exc:
        raise UploadFailed(f"the server lost the upload again ({exc}); {RESUME_HINT}") from exc
    except PermanentError as exc:  # a 4xx: nothing to retry now, but what was sent is not lost
        kept = run.store.path.exists()
        step = f"the upload so far is kept: fix that, then {RESUME_HINT}" if kept else next_step(kept)
        raise PermanentError(f"{exc}; {step}", status=exc.status, code=exc.code) from exc


def upload(source: UploadOptions | str, destination: str | None = None, /, **kwargs: Any) -> UploadResult:
    """Blocking form of upload_async."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UsageError("upload() blocks and cannot run inside an event loop; use 'await upload_async(...)'")
    return asyncio.run(upload_async(source, destination, **kwargs))
