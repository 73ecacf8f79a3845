"""Part digests: xxh3_128 always (our identity of a part), plus what a target verifies."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import xxhash

from chunker.reader import read_part

EXTRA_ALGORITHMS = ("md5", "sha256", "sha1", "crc32")


@dataclass(frozen=True)
class PartDigest:
    xxh3_128: str  # hex
    md5: bytes | None = None
    sha256: bytes | None = None
    sha1: bytes | None = None
    crc32: int | None = None

    @property
    def md5_b64(self) -> str:
        assert self.md5 is not None, "md5 was not computed for this part"
        return base64.b64encode(self.md5).decode()

    @property
    def md5_hex(self) -> str:
        assert self.md5 is not None, "md5 was not computed for this part"
        return self.md5.hex()

    @property
    def crc32_b64(self) -> str:
        """The 4 big-endian bytes S3 wants in x-amz-checksum-crc32 (and ChecksumCRC32), base64."""
        assert self.crc32 is not None, "crc32 was not computed for this part"
        return base64.b64encode(self.crc32.to_bytes(4, "big")).decode()

    @property
    def sha256_hex(self) -> str:
        assert self.sha256 is not None, "sha256 was not computed for this part"
        return self.sha256.hex()


def digest_bytes(data: bytes, extra: Collection[str] = ()) -> PartDigest:
    """Hash one buffer. Safe to call from a worker thread: xxhash and hashlib
    release the GIL on large buffers, so hashing overlaps with the event loop."""
    unknown = set(extra) - set(EXTRA_ALGORITHMS)
    if unknown:
        raise ValueError(f"unknown digest algorithm(s): {sorted(unknown)}")
    return PartDigest(
        xxh3_128=xxhash.xxh3_128_hexdigest(data),
        md5=hashlib.md5(data, usedforsecurity=False).digest() if "md5" in extra else None,
        sha256=hashlib.sha256(data).digest() if "sha256" in extra else None,
        sha1=hashlib.sha1(data, usedforsecurity=False).digest() if "sha1" in extra else None,
        crc32=zlib.crc32(data) if "crc32" in extra else None,
    )


def digest_part(path: str, offset: int, length: int, extra: Collection[str] = ()) -> PartDigest:
    return digest_bytes(read_part(path, offset, length), extra)


def digest_range(
    path: str, offset: int, length: int, extra: Collection[str] = (), block: int = 256 * 1024
) -> PartDigest:
    """Like digest_part, but streams in blocks so memory stays at one block per part."""
    unknown = set(extra) - set(EXTRA_ALGORITHMS)
    if unknown:
        raise ValueError(f"unknown digest algorithm(s): {sorted(unknown)}")
    xx = xxhash.xxh3_128()
    md5 = hashlib.md5(usedforsecurity=False) if "md5" in extra else None
    sha = hashlib.sha256() if "sha256" in extra else None
    sha1 = hashlib.sha1(usedforsecurity=False) if "sha1" in extra else None
    crc: int | None = 0 if "crc32" in extra else None
    buf = bytearray(min(block, length))
    view = memoryview(buf)
    # One open and one reused buffer per part, not per block: 0.155 -> 0.134 CPU-s per GiB.
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < length:
            got = os.preadv(fd, [view[:min(block, length - pos)]], offset + pos)
            if got <= 0:
                raise OSError(f"{path}: expected {length} bytes at offset {offset}, read {pos} "
                              "(the file shrank while uploading)")
            data = view[:got]
            xx.update(data)
            for h in (md5, sha, sha1):
                if h is not None:
                    h.update(data)
            if crc is not None:
                crc = zlib.crc32(data, crc)
            pos += got
    finally:
        os.close(fd)
    return PartDigest(
        xxh3_128=xx.hexdigest(),
        md5=md5.digest() if md5 else None,
        sha256=sha.digest() if sha else None,
        sha1=sha1.digest() if sha1 else None,
        crc32=crc,
    )
