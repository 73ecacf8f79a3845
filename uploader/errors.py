"""Typed errors. Every failure is classified once, at the transport boundary."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

RESUME_HINT = "run the same command again to resume"
RETRY_HINT = "nothing was kept to resume from; check the destination and run the same command again"


def next_step(manifest_kept: bool) -> str:
    """The end of a failure message: resume only when a manifest says where to resume."""
    return RESUME_HINT if manifest_kept else RETRY_HINT


class ChunkhaulError(Exception):
    """Root of every error chunkhaul raises on purpose."""

    exit_code = EXIT_FAILED


class UsageError(ChunkhaulError):
    """Bad options, destination or input file: nothing was sent."""

    exit_code = EXIT_USAGE


class SourceChangedError(UsageError):
    """The local file differs from the one the manifest describes."""


class LockedError(ChunkhaulError):
    """Another process is uploading the same file to the same destination."""


class UploadFailed(ChunkhaulError):
    """The upload stopped; the manifest is kept so the next run resumes."""


class PermanentError(UploadFailed):
    """The server refused the request for a reason a retry will not fix."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ChecksumUnsupported(PermanentError):
    """The server refused the checksum we asked for; the target has switched to one it
    accepts, so the same call, built again, is expected to succeed."""


class TransientError(UploadFailed):
    """A failure worth retrying on a fresh connection (network, TLS, stall, 5xx, 429)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.cause = cause


class ConnectFailed(TransientError):
    """No connection could be made at all (refused, DNS, connect timeout)."""


class SessionLost(UploadFailed):
    """The server no longer knows the upload (NoSuchUpload, tus 404/410)."""


class UrlExpired(TransientError):
    """A presigned URL expired: refresh it, then retry. Costs no retry budget."""


class FallbackUnavailable(UploadFailed):
    """No single-shot upload exists for this target or size."""
