"""tus orchestration: OPTIONS once, then create or resume (HEAD), then PATCH chunk after
chunk on one upload - or, when the server offers concatenation, several partial uploads in
parallel and a final upload that joins them. The sync fallback lives in tus_sync.

The server's offset is the only truth: every PATCH continues from the offset the server
last reported, and after any failed PATCH we HEAD before sending again, because a failed
request may still have written part of its body.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from chunker import digest_range
from resume import Manifest
from uploader.aio import gather_or_cancel
from uploader.errors import RESUME_HINT, PermanentError, SessionLost, TransientError, UploadFailed
from uploader.source import mb
from uploader.targets.base import Completed
from uploader.targets.tus import (
    ChecksumMismatch,
    OffsetConflict,
    TusProtocol,
    UploadState,
    checksum_header,
)
from uploader.wire import FileSlice

if TYPE_CHECKING:
    from uploader.engine import _Upload

log = logging.getLogger(__name__)

# A streamed PATCH stops this short of the end; the rest follows once the file is re-checked.
HOLD_BACK = 256 * 1024
# A final upload lists every partial URL in one header; servers cap headers near 8-16 KiB.
MAX_PARTIALS = 64
SESSION_VERSION = 1


@dataclass
class Segment:
    """One tus upload resource holding file bytes [base, base + length)."""

    base: int
    length: int
    url: str | None = None
    offset: int = 0  # bytes the server confirmed, relative to base
    expires: float | None = None  # epoch seconds (Upload-Expires)

    @property
    def done(self) -> bool:
        return self.url is not None and self.offset >= self.length

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def forget(self) -> None:
        self.url, self.offset, self.expires = None, 0, None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        return cls(int(data["base"]), int(data["length"]), data.get("url"), int(data.get("offset", 0)),
                   data.get("expires"))


def plan_segments(size: int, chunk: int, concurrency: int) -> list[Segment]:
    """One partial upload per worker (as tus-js-client's parallelUploads does), each a run
    of whole chunks sent by sequential PATCHes: the URL is known before any data moves, so a
    failure inside a partial resumes by HEAD, and the server joins few objects, not many."""
    chunks = max(1, math.ceil(size / chunk))
    per = math.ceil(chunks / max(1, min(concurrency, chunks, MAX_PARTIALS)))
    step = per * chunk
    return [Segment(base, min(step, size - base)) for base in range(0, size, step)]


class TusFlow:
    """One run of one file to one tus endpoint, on the engine's _Upload (its transport,
    retry policy, manifest store, progress and counters)."""

    def __init__(self, run: _Upload) -> None:
        self.run = run
        self.protocol = cast(TusProtocol, run.protocol)
        self.size = run.identity.size
        self.chunk = self.protocol.chunk_size
        self.streaming = self.protocol.stream  # until a server refuses a large PATCH (413)
        run.parts_total = max(1, math.ceil(run.identity.size / self.chunk))
        self.segments: list[Segment] = []  # what the manifest's session describes
        self._shown: dict[int, int] = {}  # per segment (by id): bytes counted in the progress bar
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # tests inject a fake

    # -- entry ----------------------------------------------------------------

    async def upload(self) -> Completed:
        await self.discover()
        manifest = self.run.load_manifest()
        self.run.announce()
        if manifest is not None:
            try:
                return await self.resume(manifest)
            except SessionLost as exc:
                log.warning("The server no longer has the interrupted upload (%s); starting a new upload",
                            exc)
                self._start_over()
        return await self.fresh()

    async def discover(self) -> None:
        """OPTIONS once per run; a file over Tus-Max-Size fails here, before any byte."""
        if not self.protocol.known:
            info = await self.run.call(self.protocol.options, self.protocol.parse_options)
            log.debug("tus server: versions %s, extensions %s, max size %s, checksum %s",
                      info.versions, sorted(info.extensions), info.max_size, info.checksum)
        self.protocol.check_size(self.size)

    def _start_over(self) -> None:
        self.run.progress.reset()
        self._shown.clear()
        self.run.bytes_resumed, self.run.resumed = 0, False
        self.run.manifest = None
        self.run.store.delete()

    # -- fresh and resumed uploads ---------------------------------------------

    def _concatenate(self) -> bool:
        return (self.protocol.server.supports("concatenation") and self.run.options.concurrency > 1
                and self.size > self.chunk)

    async def fresh(self) -> Completed:
        if self._concatenate():
            segments = plan_segments(self.size, self.chunk, self.run.options.concurrency)
            log.info("Uploading in %d partial uploads (tus concatenation)", len(segments))
            self._new_manifest("concat", segments)
            return await self._parallel()
        segment = Segment(0, self.size)
        await self._create(segment, partial=False)
        self._new_manifest("single", [segment])
        await self._persist(force=True)
        return await self._sequential(segment)

    async def resume(self, manifest: Manifest) -> Completed:
        session = manifest.session
        mode = session.get("mode")
        if manifest.target != "tus" or mode not in ("single", "concat"):
            raise SessionLost("the manifest describes no tus upload")
        if mode == "concat" and not self.protocol.server.supports("concatenation"):
            raise SessionLost("the server no longer offers concatenation")
        self.run.manifest, self.run.resumed = manifest, True
        self.segments = segments = [Segment.from_json(s) for s in session.get("segments", [])]
        if mode == "single":
            if len(segments) != 1 or segments[0].url is None:
                raise SessionLost("the manifest names no upload URL")
            await self._refresh(segments[0], check_expiry=True)
        else:
            await self._refresh_partials(segments)
        self.run.bytes_resumed = sum(s.offset for s in segments)
        log.info("Resuming: %s of %s already on the server", mb(self.run.bytes_resumed), mb(self.size))
        self.run.progress.start_at(self.run.bytes_resumed)  # resumed bytes count once, up front
        self._shown = {id(s): s.offset for s in segments}
        await self._persist(force=True)
        if mode == "single":
            return await self._sequential(segments[0])
        return await self._parallel()

    async def _refresh_partials(self, segments: list[Segment]) -> None:
        """HEAD every partial; the lost or expired ones start again (one line for all)."""
        lost = 0
        for segment in segments:
            if segment.url is None:
                continue
            try:
                await self._refresh(segment, check_expiry=True)
            except SessionLost:
                segment.forget()
                lost += 1
        if lost:
            log.warning("The server no longer has %d of %d partial uploads; creating them again",
                        lost, len(segments))

    def _new_manifest(self, mode: str, segments: list[Segment]) -> None:
        self.segments = segments
        self.run.manifest = Manifest(
            file=self.run.identity, destination=self.protocol.destination(), target="tus",
            part_size=self.chunk, parts=[], session={"version": SESSION_VERSION, "mode": mode},
            attributes=self.run.options.attributes,
        )

    async def _persist(self, force: bool = False) -> None:
        """Upload URLs, offsets and expiry into the manifest; never a header (auth stays out)."""
        manifest = self.run.manifest
        if manifest is None:
            return
        session = manifest.session
        session["segments"] = [asdict(s) for s in self.segments]
        first = self.segments[0].url if self.segments else None
        # upload_url / upload_id: what the engine's --restart and `chunkhaul abort` delete.
        session["upload_url"] = session["upload_id"] = first
        concat = session.get("mode") == "concat"
        session["partials"] = [{"url": s.url} for s in self.segments if s.url] if concat else []
        await self.run.checkpoint(force=force)

    # -- requests -------------------------------------------------------------

    async def _create(self, segment: Segment, *, partial: bool) -> None:
        """POST a new upload for the segment; a segment of one chunk rides in the POST
        (creation-with-upload), so it costs a single request. That includes an empty file:
        @tus/s3-store only writes the object of a 0-byte upload once a body (even an empty
        one) arrives, and creation-with-upload delivers it without a PATCH."""
        first: FileSlice | None = None
        if self.protocol.server.supports("creation-with-upload") and segment.length <= self.chunk:
            first = FileSlice(self.run.identity.path, segment.base, segment.length)
        checksum = await self._checksum(first) if first is not None else None
        url, state = await self.run.call(
            lambda: self.protocol.create_upload(segment.length, first=first, checksum=checksum, partial=partial,
                                                metadata=not partial),
            self.protocol.parse_created)
        segment.url, segment.offset, segment.expires = url, 0, state.expires
        self._advance(segment, state.offset)

    async def _refresh(self, segment: Segment, *, check_expiry: bool = False) -> None:
        """HEAD: the server's offset replaces ours. Transient errors (a 502, a dropped
        connection) are retried by run.call; only 404/410 or an expiry lose the upload."""
        assert segment.url is not None
        if check_expiry and segment.expired(time.time()):
            # Known from Upload-Expires: no request needed to learn the server dropped it.
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(segment.expires))
            raise SessionLost(f"it expired at {when}")
        url = segment.url
        state = await self.run.call(lambda: self.protocol.head(url), self.protocol.parse_head)
        if state.length is not None and state.length != segment.length:
            raise SessionLost(f"it holds {state.length} bytes, not {segment.length}")
        if state.offset > segment.length:
            raise PermanentError(f"HEAD: the server claims {state.offset} of {segment.length} bytes")
        segment.offset = state.offset
        if state.expires is not None:
            segment.expires = state.expires

    async def _patch(self, segment: Segment, length: int) -> UploadState:
        """One PATCH attempt (the caller decides about retries: a HEAD comes first)."""
        assert segment.url is not None
        body = FileSlice(self.run.identity.path, segment.base + segment.offset, length)
        request = self.protocol.patch(segment.url, segment.offset, body, await self._checksum(body))
        start = segment.offset

        def sent(n: int) -> None:
            nonlocal start
            self.run.bytes_sent += n
            start += n
            self._show(segment, start)  # a streamed PATCH may run for minutes: move the bar

        state = self.protocol.parse_patch(await self.run.transport.send(request, sent), request.label)
        if not segment.offset < state.offset <= segment.length:
            # No progress on a 2xx would loop for ever; more than we sent is impossible.
            raise TransientError(f"{request.label}: the server answered offset {state.offset}")
        return state

    async def _checksum(self, body: FileSlice | None) -> str | None:
        algorithm = self.protocol.server.checksum
        if body is None or algorithm is None:
            return None
        # Off the event loop: sha256 of a 32 MiB chunk takes ~20-100 ms.
        digest = await asyncio.to_thread(digest_range, body.path, body.offset, body.length, (algorithm,))
        return checksum_header(algorithm, digest)

    # -- the PATCH loop ---------------------------------------------------------

    async def _push(self, segment: Segment) -> None:
        """PATCH until the server has the whole segment. A run of failures without any
        progress ends after policy.attempts; any progress starts the count again."""
        failures = 0
        while segment.offset < segment.length:
            length = self._patch_length(segment)
            if segment.offset + length == segment.length and segment is self._last_segment():
                # A file changed during the upload must not leave a finished upload on the
                # server that is neither version: its last bytes go only from an unchanged file.
                self.run.check_source()
            try:
                state = await self._patch(segment, length)
            except PermanentError as exc:
                if not (exc.status == 413 and self.streaming):
                    raise
                self._stop_streaming(exc)
                await self._refresh(segment)
                continue
            except TransientError as exc:
                failures += 1
                if failures >= self.run.policy.attempts:
                    raise
                before = segment.offset
                await self._recover(segment, exc, failures)
                if segment.offset > before:
                    failures = 0
                continue
            failures = 0
            segment.expires = state.expires or segment.expires
            self._advance(segment, state.offset)
            await self._persist()

    def _patch_length(self, segment: Segment) -> int:
        rest = segment.length - segment.offset
        # Upload-Checksum covers one whole body, which such a server verifies and drops at
        # once: bounded chunks there, so a mismatch costs one chunk.
        if not (self.streaming and self.protocol.server.checksum is None):
            return min(self.chunk, rest)
        if segment is self._last_segment() and rest > HOLD_BACK:
            return rest - HOLD_BACK  # see _push: the bytes that finish the upload wait for a check
        return rest

    def _last_segment(self) -> Segment | None:
        """The segment whose last byte finishes the upload on the server (and fires its
        on-finish hooks); with partial uploads, none does: the final upload joins them."""
        manifest = self.run.manifest  # its mode, not _concatenate(): a resume keeps the mode it began with
        single = manifest is not None and manifest.session.get("mode") == "single"
        return self.segments[-1] if single else None

    def _stop_streaming(self, exc: PermanentError) -> None:
        self.streaming = False
        log.warning("The server refused one PATCH for the rest of the file (%s); sending %s chunks",
                    exc, mb(self.chunk))

    async def _recover(self, segment: Segment, exc: TransientError, failures: int) -> None:
        """After a failed PATCH: wait if the server asked for it, then HEAD."""
        self.run.check_source()  # a file cut short fails every PATCH: say so, not "network"
        self.run.retries += 1
        log.info("Retrying after attempt %d/%d failed: %s", failures, self.run.policy.attempts, exc)
        # A 409 or 460 says nothing about load: HEAD at once. Everything else backs off.
        if not isinstance(exc, (OffsetConflict, ChecksumMismatch)):
            await self.sleep(self.run.policy.delay(failures, exc))
        shown = segment.offset
        await self._refresh(segment)
        if segment.offset > shown:
            log.info("The server kept %s of the failed request", mb(segment.offset - shown))
        self._advance(segment, segment.offset)

    def _advance(self, segment: Segment, offset: int) -> None:
        segment.offset = offset
        self._show(segment, offset)

    def _show(self, segment: Segment, offset: int) -> None:
        index = id(segment)
        gained = offset - self._shown.get(index, 0)
        if gained > 0:  # the bar only moves forward: a re-sent byte never counts twice
            self._shown[index] = offset
            self.run.progress.commit(gained)

    # -- one upload, chunk after chunk ----------------------------------------------

    async def _sequential(self, segment: Segment) -> Completed:
        assert segment.url is not None
        await self._push(segment)
        return self._finish(segment.url)

    def _finish(self, url: str) -> Completed:
        # The server has every byte; if the file changed meanwhile they are not one version
        # of it: exit 2 with the manifest kept, as for S3 (--restart sends it again).
        self.run.check_source()
        self.run.store.delete()  # only now: the server holds every byte
        self.run.manifest = None
        return self.protocol.completed(url)

    # -- partial uploads in parallel, then the final upload ---------------------------

    async def _parallel(self) -> Completed:
        segments = self.segments
        todo: asyncio.Queue[Segment] = asyncio.Queue()
        for segment in segments:
            if not segment.done:
                todo.put_nowait(segment)
        workers = [asyncio.create_task(self._partial_worker(todo))
                   for _ in range(min(self.run.options.concurrency, todo.qsize()))]
        try:
            await gather_or_cancel(workers)
        finally:
            await self._persist(force=True)
        self.run.check_source()  # before the server joins the partial uploads into a finished one
        urls = [s.url for s in segments if s.url is not None]
        if len(urls) != len(segments):
            raise UploadFailed(f"{len(segments) - len(urls)} partial uploads were not created; {RESUME_HINT}")
        url, _ = await self.run.call(lambda: self.protocol.create_final(urls), self.protocol.parse_created)
        await self._verify_final(url)
        return self._finish(url)

    async def _partial_worker(self, todo: asyncio.Queue[Segment]) -> None:
        while not todo.empty():
            segment = todo.get_nowait()
            if segment.url is None:
                await self._create(segment, partial=True)
                await self._persist(force=True)  # a new URL is worth a write at once
            await self._push(segment)
            await self._persist()

    async def _verify_final(self, url: str) -> None:
        """The final upload must hold the whole file (the server did the joining)."""
        state = await self.run.call(lambda: self.protocol.head(url), self.protocol.parse_head)
        if state.offset != self.size or (state.length is not None and state.length != self.size):
            raise PermanentError(f"the concatenated upload holds {state.offset} of {self.size} bytes")


async def run_tus(run: _Upload) -> Completed:
    """The engine's entry point for protocol 'tus'."""
    return await TusFlow(run).upload()
