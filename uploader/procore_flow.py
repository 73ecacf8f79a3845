"""Procore orchestration on the engine's _Upload (its transport, retry policy, manifest
store, progress and counters): hash every segment, create the upload, PUT the parts in
parallel, renew expiring URLs, record progress, complete, and (v2.1) wait until available.

Why not the engine's generic multipart flow: creation must declare every segment's digests
(so the whole file is hashed before the first request), part URLs come from the API and
expire, v1.1 has no way to list what the server holds, and v2.1 lists only what a PATCH
recorded. The pieces that are general (retries, checkpoints, progress) are the engine's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, cast

from chunker import Part, digest_range, read_part
from resume import Manifest, PartRecord
from uploader.aio import gather_or_cancel
from uploader.errors import (
    RESUME_HINT,
    PermanentError,
    SessionLost,
    TransientError,
    UploadFailed,
    UrlExpired,
    UsageError,
)
from uploader.source import mb
from uploader.targets.base import Completed
from uploader.targets.procore import (
    SEGMENT_DIGESTS,
    V11,
    V21,
    FileDigests,
    ProcoreProtocol,
    SegmentDigest,
    UploadStatus,
)

if TYPE_CHECKING:
    from uploader.engine import _Upload

log = logging.getLogger(__name__)

# A URL expiring sooner than this (plus the time the part is expected to take) is renewed
# before it is used: S3 judges expiry when a request starts, but some stores (SeaweedFS behind
# the test emulator) judge it again when the body has arrived.
RENEW_MARGIN = 3.0
# Renewals in a row for one part; more means the clocks disagree, not that URLs expired.
MAX_RENEWALS = 3
# Seconds between v2.1 PATCHes that record partial progress on Procore's side.
PROGRESS_EVERY = 10.0
# After completion, how long to poll GET for "available" before reporting success anyway.
AVAILABLE_WAIT = 120.0
_BLOCK = 4 * 1024 * 1024


class _Stopped(Exception):
    """Hashing was cancelled (Ctrl-C while the file was being hashed)."""


def _whole_file(path: str, size: int, stop: threading.Event) -> tuple[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    pos = 0
    while pos < size:
        if stop.is_set():
            raise _Stopped
        data = read_part(path, pos, min(_BLOCK, size - pos))
        md5.update(data)
        sha256.update(data)
        pos += len(data)
    return sha256.hexdigest(), md5.hexdigest()


def hash_segments(path: str, parts: list[Part], whole: bool,
                  stop: threading.Event | None = None) -> tuple[FileDigests, list[str]]:
    """sha256 + md5 (+ xxh3, our identity of a part) of every segment in one read each, and,
    when `whole`, sha256 + md5 of the file. Threads: hashlib releases the GIL, and the
    whole-file pass runs beside the per-segment ones instead of after them."""
    stop = stop or threading.Event()

    def segment(part: Part) -> tuple[SegmentDigest, str]:
        if stop.is_set():
            raise _Stopped
        d = digest_range(path, part.offset, part.length, SEGMENT_DIGESTS)
        return SegmentDigest(d.sha256_hex, d.md5_hex), d.xxh3_128

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        file_job = pool.submit(_whole_file, path, sum(p.length for p in parts), stop) if whole else None
        per_part = list(pool.map(segment, parts))
        sha256, md5 = file_job.result() if file_job else (None, None)
    return FileDigests(tuple(s for s, _ in per_part), sha256, md5), [x for _, x in per_part]


class ProcoreFlow:
    def __init__(self, run: _Upload) -> None:
        self.run = run
        self.proto = cast(ProcoreProtocol, run.protocol)
        self.identity = run.identity
        self.reported: set[int] = set()  # v2.1 parts a PATCH recorded
        self.renewals = 0
        self._renew_lock = asyncio.Lock()
        self._progress_lock = asyncio.Lock()
        self._last_progress = time.monotonic()
        self._rate: float | None = None  # bytes/s of one part's PUT, smoothed

    @property
    def manifest(self) -> Manifest:
        assert self.run.manifest is not None
        return self.run.manifest

    def _sizes(self) -> dict[int, int]:
        return {p.number: p.length for p in self.manifest.parts}

    # -- entry ----------------------------------------------------------------

    async def upload(self) -> Completed:
        if self.identity.size == 0:
            self.run.announce()
            return await self._empty()
        manifest = self.run.load_manifest()
        if manifest is None:
            self._plan()  # a --part-size Procore cannot take fails before "Uploading file:"
        self.run.announce()
        reuse = None
        if manifest is not None:
            reuse = _reusable_plan(manifest, self.proto)
            try:
                return await self.resume(manifest)
            except SessionLost as exc:
                log.warning("Procore no longer takes the interrupted upload (%s); creating a new upload", exc)
                self._start_over()
        return await self.fresh(reuse)

    def _start_over(self) -> None:
        # The old manifest stays on disk until the new one replaces it: it still holds the
        # digests, so a failure before then does not cost another hash of the file.
        self.run.progress.reset()
        self.run.bytes_resumed, self.run.resumed = 0, False
        self.run.manifest = None
        self.reported = set()

    async def _empty(self) -> Completed:
        # Procore refuses segments of 0 bytes; the POST form takes an empty file.
        from uploader.fallback import single_shot_upload

        log.info("%s is empty: sending it with a single POST form", self.run.options.file_name)
        return await asyncio.to_thread(single_shot_upload, self.proto, self.identity, self.run.options,
                                       self.run.store)

    # -- a new upload ---------------------------------------------------------------

    def _plan(self) -> list[Part]:
        try:
            return self.run.plan(self.proto.limits)
        except ValueError as exc:
            raise UsageError(f"{exc} (Procore API {self.proto.api}); choose another --part-size") from None

    async def _hash(self, parts: list[Part]) -> tuple[FileDigests, list[str]]:
        whole = self.proto.api == V21
        log.info("Hashing %s (sha256 and md5 of %d segments%s): Procore needs them before the upload starts",
                 mb(self.identity.size), len(parts), " and of the whole file" if whole else "")
        started, stop = time.monotonic(), threading.Event()
        try:
            result = await asyncio.to_thread(hash_segments, self.identity.path, parts, whole, stop)
        except asyncio.CancelledError:
            stop.set()  # the thread cannot be cancelled; this ends it at the next block
            raise
        log.info("Hashed in %.1fs", time.monotonic() - started)
        return result

    async def fresh(self, reuse: tuple[list[Part], FileDigests, list[str]] | None) -> Completed:
        if reuse is not None:
            parts, digests, xxh3 = reuse
            log.info("Reusing the digests of the interrupted upload")
        else:
            parts = self._plan()
            digests, xxh3 = await self._hash(parts)
        name, kind = self.proto.name, self.proto.content_type
        session = await self.run.call(lambda: self.proto.create_upload(name, kind, parts, digests),
                                      lambda resp: self.proto.parse_created(resp, parts))
        session["digests"] = digests.to_json()
        self.run.manifest = Manifest(
            file=self.identity, destination=self.proto.destination(), target="procore",
            part_size=parts[0].length, session=session, attributes=self.run.options.attributes,
            parts=[PartRecord(p.number, p.offset, p.length, x) for p, x in zip(parts, xxh3, strict=True)],
        )
        self.run.parts_total = len(parts)
        await self.run.checkpoint(force=True)
        log.info("Created Procore upload %s (API %s, %d parts of %s)", session["upload_id"], self.proto.api,
                 len(parts), mb(parts[0].length))
        return await self._send_all(list(self.manifest.parts))

    # -- resuming -------------------------------------------------------------------

    async def resume(self, manifest: Manifest) -> Completed:
        session = manifest.session
        if manifest.target != "procore" or session.get("api") != self.proto.api or not session.get("upload_id"):
            raise SessionLost("the manifest describes no Procore upload of this kind")
        self.run.manifest, self.run.resumed = manifest, True
        self.run.parts_total = len(manifest.parts)
        # Parts with an ETag went up in the interrupted run; their xxh3 (from the hashing before
        # creation) is checked against the file before completing, as for S3.
        self.run.note_kept_parts(manifest, [p for p in manifest.parts if p.etag is None])
        if self.proto.api == V21:
            if await self._resume_v21():
                return await self._finish(already_complete=True)
        else:
            # v1.1 has no way to ask what storage holds: parts whose PUT storage confirmed
            # (an ETag in the manifest) are kept, the rest are sent again; the final PATCH
            # checks every ETag against storage.
            self.proto.adopt(session, self._sizes())
        todo = [p for p in manifest.parts if p.etag is None]
        self.run.bytes_resumed = manifest.bytes_done()
        log.info("Resuming Procore upload %s: %d of %d parts (%s) already sent", session["upload_id"],
                 len(manifest.parts) - len(todo), len(manifest.parts), mb(self.run.bytes_resumed))
        self.run.progress.start_at(self.run.bytes_resumed)
        await self.run.checkpoint(force=True)
        return await self._send_all(todo)

    async def _resume_v21(self) -> bool:
        """GET the upload (fresh URLs for every unrecorded part), then have Procore record the
        parts sent before the interruption. True when the upload is complete already."""
        parts = self.manifest.parts
        self.reported = {p.number for p in parts if p.etag is not None}  # a guess, for unnumbered replies
        status = await self._get_status()
        log.info("Renewed %d upload URLs for the resumed upload (status %s)", status.renewed, status.status)
        if status.status in ("complete", "available"):
            return True
        if status.status == "failed":
            raise SessionLost("Procore marked the upload as failed")
        self.reported = {p.number for p in parts if p.number not in status.pending}
        lost = [p.number for p in parts if p.number in self.reported and p.etag is None]
        if lost:
            raise SessionLost(f"Procore recorded part {lost[0]}, but the manifest lost its ETag")
        unconfirmed = [p for p in parts if p.number in status.pending and p.etag is not None]
        if not unconfirmed:
            return False
        if all(p.etag is not None for p in parts):
            # With every ETag at hand this PATCH completes the upload (no second PATCH then):
            # the kept parts are checked against the file first.
            await self.run.kept_parts_unchanged()
        return await self._confirm_sent(unconfirmed) in ("complete", "available")

    async def _confirm_sent(self, unconfirmed: list[PartRecord]) -> str:
        """A failed write may have written anything: the PATCH lets Procore check the ETags
        the manifest holds against storage; if it refuses, those parts are sent again.
        Returns the upload's status after the PATCH ("" when refused)."""
        try:
            return await self._record_progress()
        except PermanentError as exc:
            if exc.status != 422:
                raise
            log.warning("Procore did not accept the ETags of %d parts sent before the interruption (%s); "
                        "sending them again", len(unconfirmed), exc)
            for part in unconfirmed:
                part.etag = None
            return ""

    # -- sending --------------------------------------------------------------------

    async def _send_all(self, todo: list[PartRecord]) -> Completed:
        await self.run.send_then_check_kept(self._send_parts(todo))
        return await self._finish()

    async def _send_parts(self, todo: list[PartRecord]) -> None:
        queue: asyncio.Queue[PartRecord] = asyncio.Queue()
        for record in todo:
            queue.put_nowait(record)
        workers = [asyncio.create_task(self._worker(queue))
                   for _ in range(min(self.run.options.concurrency, len(todo)))]
        try:
            await gather_or_cancel(workers)
        finally:
            await self.run.checkpoint(force=True)

    async def _worker(self, queue: asyncio.Queue[PartRecord]) -> None:
        while not queue.empty():
            record = queue.get_nowait()
            part = Part(record.number, record.offset, record.length)
            record.etag = await self._put(part)
            self.run.start_kept_check()  # once a first part is up: see the engine's start_kept_check
            self.run.progress.commit(part.length)
            await self.run.checkpoint()
            await self._maybe_record_progress()

    async def _put(self, part: Part) -> str:
        """PUT one part; an expired URL is renewed and the part sent again without spending
        the retry budget (the engine's call() does not retry UrlExpired)."""
        for _ in range(MAX_RENEWALS + 1):
            if self.proto.expiring(part.number, self._margin(part)):
                await self._renew(part.number, "about to expire")
            generation = self.proto.part_url(part.number).generation
            started = time.monotonic()
            try:
                etag = await self.run.call(lambda: self.proto.put_part(part),
                                           lambda resp: self.proto.parse_put(resp, part))
                self._observe(part.length, time.monotonic() - started)
                return etag
            except UrlExpired as exc:
                await self._renew(part.number, f"expired: {exc}", stale=generation)
        raise UploadFailed(f"part {part.number}: its upload URL expired {MAX_RENEWALS + 1} times in a row, even "
                           f"right after renewal; check this computer's clock; {RESUME_HINT}")

    def _margin(self, part: Part) -> float:
        return RENEW_MARGIN + (part.length / self._rate if self._rate else 0.0)

    def _observe(self, nbytes: int, seconds: float) -> None:
        sample = nbytes / max(seconds, 1e-3)
        self._rate = sample if self._rate is None else 0.7 * self._rate + 0.3 * sample

    async def _renew(self, number: int, reason: str, stale: int | None = None) -> None:
        """Fresh URLs for every unrecorded part with one GET; workers that find their URL
        stale at the same time share it."""
        if self.proto.api == V11:
            raise SessionLost("the v1.1 upload's URLs expired (they last one hour from creation "
                              "and v1.1 cannot renew them)")
        stale = self.proto.part_url(number).generation if stale is None else stale
        async with self._renew_lock:
            if self.proto.part_url(number).generation > stale:
                return  # another worker renewed it meanwhile
            status = await self._get_status()
            self.renewals += 1
            log.info("Renewed %d upload URLs (part %d: %s)", status.renewed, number, reason)

    async def _get_status(self) -> UploadStatus:
        session, sizes, reported = self.manifest.session, self._sizes(), sorted(self.reported)
        return await self.run.call(lambda: self.proto.status(session),
                                   lambda resp: self.proto.parse_status(resp, sizes, reported))

    async def _maybe_record_progress(self) -> None:
        """Every PROGRESS_EVERY seconds (v2.1): one worker PATCHes the ETags so far. A
        failure here costs nothing but the record: the final PATCH sends them all again."""
        if (self.proto.api != V21 or self._progress_lock.locked()
                or time.monotonic() - self._last_progress < PROGRESS_EVERY):
            return
        async with self._progress_lock:
            self._last_progress = time.monotonic()
            sent = {p.number for p in self.manifest.parts if p.etag is not None}
            if len(sent) == len(self.manifest.parts) or sent <= self.reported:
                return  # the final PATCH records the rest, or nothing is new
            try:
                await self._record_progress()
            except (TransientError, PermanentError) as exc:
                log.warning("Could not record progress with Procore (%s); the upload goes on", exc)

    async def _record_progress(self) -> str:
        session = self.manifest.session
        etags = [p.etag for p in self.manifest.parts]
        status = await self.run.call(lambda: self.proto.progress(session, etags), self.proto.parse_patch)
        self.reported = {p.number for p, e in zip(self.manifest.parts, etags, strict=True) if e is not None}
        log.debug("Procore recorded %d of %d parts", len(self.reported), len(etags))
        return status

    # -- completion -----------------------------------------------------------------

    async def _finish(self, already_complete: bool = False) -> Completed:
        session = self.manifest.session
        if not already_complete:
            etags = [p.etag for p in self.manifest.parts]
            missing = sum(e is None for e in etags)
            if missing:
                raise UploadFailed(f"{missing} parts were not confirmed; {RESUME_HINT}")
            final = [e for e in etags if e is not None]
            await self.run.call(lambda: self.proto.finish(session, final), self.proto.parse_patch)
        if self.proto.api == V21:
            await self._await_available()
        self.run.store.delete()  # only now: Procore confirmed the whole file
        self.run.manifest = None
        log.info("Procore upload id: %s (API %s)", session["upload_id"], self.proto.api)
        return self.proto.completed(session)

    async def _await_available(self) -> None:
        """Contract, v2.1 step 5: poll GET until "available" (Procore processes the file)."""
        delay, deadline = 0.5, time.monotonic() + AVAILABLE_WAIT
        while True:
            status = await self._get_status()
            if status.status == "available":
                return
            if status.status == "failed":
                raise PermanentError("Procore could not process the uploaded file (status failed); "
                                     "run again with --restart to upload it anew")
            if time.monotonic() + delay > deadline:
                log.warning("Procore is still processing the upload (status %s); it can be attached once "
                            "its status is available", status.status)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _reusable_plan(manifest: Manifest, proto: ProcoreProtocol) -> tuple[list[Part], FileDigests, list[str]] | None:
    """The interrupted upload's plan and digests, when complete enough to create a new
    upload without hashing the file again (the file is unchanged: load_manifest checked)."""
    digests = FileDigests.from_json(manifest.session.get("digests"))
    xxh3 = [p.xxh3_128 for p in manifest.parts]
    if (manifest.target != "procore" or digests is None or len(digests.segments) != len(manifest.parts)
            or (proto.api == V21 and not digests.sha256) or not manifest.parts):
        return None
    if any(x is None for x in xxh3):
        return None
    parts = [Part(p.number, p.offset, p.length) for p in manifest.parts]
    return parts, digests, [str(x) for x in xxh3]


async def run_procore(run: _Upload) -> Completed:
    """The engine's entry point for protocol 'procore'."""
    return await ProcoreFlow(run).upload()


__all__ = ["V11", "V21", "ProcoreFlow", "hash_segments", "run_procore"]
