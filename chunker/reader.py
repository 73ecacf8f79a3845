"""Read one part of a file by (offset, length), never touching the rest."""

from __future__ import annotations

import os


def read_part(path: str, offset: int, length: int) -> bytes:
    """Return exactly `length` bytes at `offset`; a short read means the file shrank."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, offset)
        if len(data) < length:
            # pread may return short on some filesystems; loop until EOF.
            chunks = [data]
            got = len(data)
            while got < length:
                more = os.pread(fd, length - got, offset + got)
                if not more:
                    break
                chunks.append(more)
                got += len(more)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) != length:
        raise OSError(
            f"{path}: expected {length} bytes at offset {offset}, read {len(data)} "
            "(the file shrank while uploading)"
        )
    return data
