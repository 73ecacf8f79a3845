"""chunkhaul: resumable, parallel, verified uploads.

    from uploader import upload
    result = upload("big.iso", "s3://bucket/big.iso", endpoint_url="http://127.0.0.1:8333")
"""

from uploader.config import UploadOptions
from uploader.engine import upload, upload_async
from uploader.errors import (
    ChunkhaulError,
    LockedError,
    PermanentError,
    SourceChangedError,
    UploadFailed,
    UsageError,
)
from uploader.result import UploadResult

__all__ = [
    "ChunkhaulError",
    "LockedError",
    "PermanentError",
    "SourceChangedError",
    "UploadFailed",
    "UploadOptions",
    "UploadResult",
    "UsageError",
    "upload",
    "upload_async",
]
