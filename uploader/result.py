"""The typed result of an upload: the same fields as the CLI's --json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class UploadResult:
    file: str
    destination: str
    bytes_total: int
    bytes_sent: int
    bytes_resumed: int
    parts: int
    part_retries: int
    seconds: float
    mib_per_s: float
    upload_id: str | None
    etag: str | None
    resumed: bool
    fallback_used: bool
    fallback_reason: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
