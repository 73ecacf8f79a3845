"""Expected S3 CRC-32 checksums of a local file, as the S3 user guide defines them, and the
one SeaweedFS reports for an object (HeadObject with x-amz-checksum-mode: ENABLED).

- PutObject: base64 of the 4 big-endian bytes of the CRC-32 of the whole body.
- Multipart (COMPOSITE): the CRC-32 of the parts' CRC-32s (4 bytes each, in part order),
  base64, then "-" and the number of parts.

An object uploaded with Content-MD5 only has no CRC-32 (SeaweedFS then reports none), so
which checksum an upload used is read from the server, not from the client's output."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def composite_crc32(path: Path, part_size: int) -> str:
    data = path.read_bytes()
    parts = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    joined = b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)
    return f"{crc32_b64(joined)}-{len(parts)}"


def object_crc32(server: Any, key: str) -> str | None:
    """The object's CRC-32 as the server stored it; None when it was uploaded without one."""
    head = server.s3.head_object(Bucket=server.bucket, Key=key, ChecksumMode="ENABLED")
    value = head.get("ChecksumCRC32")
    return str(value) if value is not None else None
