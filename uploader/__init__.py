"""chunkhaul: resumable, parallel, verified uploads.

    from uploader import upload
    result = upload("big.iso", "s3://bucket/big.iso", endpoint_url="http://127.0.0.1:8333")
"""

from typing import TYPE_CHECKING, Any

from uploader.config import UploadOptions
from uploader.errors import (
    ChunkhaulError,
    LockedError,
    PermanentError,
    SourceChangedError,
    UploadFailed,
    UsageError,
)
from uploader.result import UploadResult

if TYPE_CHECKING:
    from uploader.engine import abort_async, upload, upload_async

__all__ = [
    "ChunkhaulError",
    "LockedError",
    "PermanentError",
    "SourceChangedError",
    "UploadFailed",
    "UploadOptions",
    "UploadResult",
    "UsageError",
    "abort_async",
    "upload",
    "upload_async",
]


def __getattr__(name: str) -> Any:
    # The engine pulls in aiohttp, requests and botocore: loaded on first use, so the
    # CLI answers --help (and Ctrl-C) at once.
    if name in ("upload", "upload_async", "abort_async"):
        from uploader import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'uploader' has no attribute {name!r}")
