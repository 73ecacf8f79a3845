"""The last resort: the whole file in one synchronous request, as the original system did."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chunker import digest_range
from resume import FileIdentity, ManifestStore
from uploader.config import UploadOptions
from uploader.errors import (
    ChecksumUnsupported,
    FallbackUnavailable,
    TransientError,
    UploadFailed,
    next_step,
)
from uploader.source import mb, secs
from uploader.targets.base import Completed, MultipartProtocol
from uploader.transport_sync import SyncTransport, cancelled, pause, sync_deadline

log = logging.getLogger(__name__)
PREPARE_DEADLINE = 60.0  # seconds for a small API call before the file goes up


def single_shot_upload(
    protocol: MultipartProtocol,
    identity: FileIdentity,
    options: UploadOptions,
    store: ManifestStore,
    sleep: Callable[[float], None] = pause,
) -> Completed:
    """3 attempts, 5 s apart, each under a wall-clock deadline. On success the leftover
    multipart upload is aborted and the manifest removed; on failure both stay."""
    size = identity.size
    if size > protocol.single_shot_max:
        raise FallbackUnavailable(
            f"no single-shot upload exists for {mb(size)} on {protocol.kind} "
            f"(limit {mb(protocol.single_shot_max)}); {next_step(store.path.exists())}")
    transport = SyncTransport(ca_bundle=options.ca_bundle, connect_timeout=options.connect_timeout,
                              stall_timeout=options.stall_timeout)
    digest = digest_range(identity.path, 0, size, protocol.part_digests)
    deadline = options.sync_deadline or sync_deadline(size)
    log.info("Upload timeout set to %s for %s file", secs(deadline), mb(size))

    def send() -> Completed:
        _prepare(protocol, transport, size)
        return protocol.parse_single_shot(transport.send(protocol.single_shot(size, digest), deadline))

    def attempt() -> Completed:
        nonlocal digest
        try:
            return send()
        except ChecksumUnsupported as exc:  # the target switched to a checksum the store accepts
            log.warning("%s", exc)
            digest = digest_range(identity.path, 0, size, protocol.part_digests)
            return send()

    done = attempt_loop(attempt, options, store, sleep)
    _forget_multipart(protocol, store, transport)
    return done


def attempt_loop(attempt: Callable[[], Completed], options: UploadOptions, store: ManifestStore,
                 sleep: Callable[[float], None] = pause) -> Completed:
    """The original system's retry shape: N attempts, a fixed pause, transient errors only
    (a 4xx is final at once). Shared by every target's single shot."""
    last: Exception | None = None
    for number in range(1, options.sync_attempts + 1):
        if cancelled():
            raise UploadFailed("interrupted")
        log.info("Sync upload attempt %d/%d...", number, options.sync_attempts)
        try:
            return attempt()
        except TransientError as exc:
            last = exc
            log.warning("Sync upload attempt %d/%d failed: %s", number, options.sync_attempts, exc)
            if number < options.sync_attempts:
                sleep(options.sync_delay)
    raise UploadFailed(f"sync fallback failed after {options.sync_attempts} attempts: {last}; "
                       f"{next_step(store.path.exists())}")


def _prepare(protocol: MultipartProtocol, transport: SyncTransport, size: int) -> None:
    """A target may first ask its API where the file goes (Procore: a create call answers
    with an S3 POST form); a fresh ask per attempt, as forms expire."""
    prepare = getattr(protocol, "prepare_single_shot", None)
    if prepare is not None:
        protocol.parse_prepare_single_shot(transport.send(prepare(size), PREPARE_DEADLINE))  # type: ignore[attr-defined]


def _forget_multipart(protocol: MultipartProtocol, store: ManifestStore, transport: SyncTransport) -> None:
    """No orphaned parts: abort the chunked upload the single shot replaced."""
    manifest, _ = store.load_or_none()
    session: dict[str, Any] = manifest.session if manifest else {}
    if session:
        try:
            resp = transport.send(protocol.abort(session), 60.0)
            log.info("Aborted the unfinished chunked upload (HTTP %d)", resp.status)
        except UploadFailed as exc:
            log.warning("Could not abort the unfinished chunked upload: %s", exc)
    store.delete()
