"""The tus form of the sync fallback: requests, one PATCH for every byte the server lacks.
Apart from tus_flow so an async upload never imports requests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import cast

from chunker import digest_range
from resume import FileIdentity, Manifest, ManifestStore
from uploader.config import UploadOptions
from uploader.engine import warn_kept_attributes
from uploader.errors import SessionLost, TransientError, UploadFailed
from uploader.fallback import attempt_loop
from uploader.redact import redact_url
from uploader.source import mb, secs
from uploader.targets.base import Completed, MultipartProtocol
from uploader.targets.tus import TusProtocol, checksum_header
from uploader.transport_sync import SyncTransport, pause, sync_deadline
from uploader.tus_flow import SESSION_VERSION, Segment
from uploader.wire import FileSlice, HttpRequest, HttpResponse

log = logging.getLogger(__name__)


class _SyncTus:
    """The tus last resort with requests: HEAD the upload we have (or create one), then
    every remaining byte in one PATCH under the wall-clock deadline of the original system."""

    def __init__(self, protocol: TusProtocol, identity: FileIdentity, options: UploadOptions,
                 store: ManifestStore, transport: SyncTransport | None = None) -> None:
        self.protocol, self.identity, self.options, self.store = protocol, identity, options, store
        self.transport = transport or SyncTransport(
            ca_bundle=options.ca_bundle, connect_timeout=options.connect_timeout, stall_timeout=options.stall_timeout)
        self.size = identity.size
        self.url: str | None = None
        self.leftovers: list[str] = []  # partial uploads the single upload replaces

    def send(self, request: HttpRequest, deadline: float = 60.0) -> HttpResponse:
        return self.transport.send(request, deadline)

    def adopt_manifest(self) -> None:
        """Continue the interrupted single upload if the manifest has a usable one."""
        manifest, _ = self.store.load_or_none()
        if manifest is None or manifest.file.differences(self.identity):
            return
        warn_kept_attributes(manifest, self.options)
        segments = [Segment.from_json(s) for s in manifest.session.get("segments", [])]
        if manifest.session.get("mode") == "single" and len(segments) == 1:
            if segments[0].url and not segments[0].expired(time.time()):
                self.url = segments[0].url
            return
        self.leftovers = [s.url for s in segments if s.url]

    def attempt(self) -> Completed:
        if not self.protocol.known:
            self.protocol.parse_options(self.send(self.protocol.options()))
        self.protocol.check_size(self.size)
        offset = self._offset()
        if offset < self.size:
            assert self.url is not None
            body = FileSlice(self.identity.path, offset, self.size - offset)
            deadline = self.options.sync_deadline or sync_deadline(body.length)
            log.info("Upload timeout set to %s for %s file", secs(deadline), mb(body.length))
            request = self.protocol.patch(self.url, offset, body, self._checksum(body))
            offset = self.protocol.parse_patch(self.send(request, deadline), request.label).offset
        if offset != self.size:
            raise TransientError(f"the server holds {offset} of {self.size} bytes after the PATCH")
        assert self.url is not None
        return self.protocol.completed(self.url)

    def _offset(self) -> int:
        """HEAD the known upload, or create one (with the whole file when the server
        offers creation-with-upload); a lost upload is replaced, logged once."""
        if self.url is not None:
            try:
                return self.protocol.parse_head(self.send(self.protocol.head(self.url))).offset
            except SessionLost as exc:
                log.warning("The server no longer has the interrupted upload (%s); starting a new upload", exc)
                self.url = None
        whole = self.protocol.server.supports("creation-with-upload")
        first = FileSlice(self.identity.path, 0, self.size) if whole else None
        deadline = (self.options.sync_deadline or sync_deadline(self.size)) if whole else 60.0
        request = self.protocol.create_upload(self.size, first=first, checksum=self._checksum(first))
        self.url, state = self.protocol.parse_created(self.send(request, deadline))
        self._remember()
        return state.offset

    def _checksum(self, body: FileSlice | None) -> str | None:
        algorithm = self.protocol.server.checksum
        if body is None or algorithm is None:
            return None
        return checksum_header(algorithm, digest_range(body.path, body.offset, body.length, (algorithm,)))

    def _remember(self) -> None:
        """The new upload's URL goes in the manifest: a failed fallback resumes from it."""
        segment = Segment(0, self.size, self.url)
        manifest = Manifest(file=self.identity, destination=self.protocol.destination(), target="tus",
                            part_size=self.size, parts=[],
                            session={"version": SESSION_VERSION, "mode": "single",
                                     "segments": [asdict(segment)], "upload_url": self.url,
                                     "upload_id": self.url, "partials": []},
                            attributes=self.options.attributes)
        self.store.save(manifest)

    def forget_leftovers(self) -> None:
        for url in self.leftovers:
            try:
                self.protocol.parse_delete(self.send(self.protocol.delete(url)))
            except UploadFailed as exc:
                log.warning("Could not delete the partial upload %s: %s", redact_url(url), exc)


def sync_fallback(protocol: MultipartProtocol, identity: FileIdentity, options: UploadOptions,
                  store: ManifestStore, sleep: Callable[[float], None] = pause, *,
                  transport: SyncTransport | None = None) -> Completed:
    """Same contract as uploader.fallback.single_shot_upload, for tus: 3 attempts, 5 s apart;
    on success the manifest is removed, on failure it stays (with the upload URL)."""
    flow = _SyncTus(cast(TusProtocol, protocol), identity, options, store, transport)
    flow.adopt_manifest()
    done = attempt_loop(flow.attempt, options, store, sleep)
    flow.forget_leftovers()
    store.delete()
    return done
