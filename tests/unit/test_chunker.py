"""Planning, reading and hashing parts: values checked against S3's documented limits
and against hashlib/xxhash computed independently here."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import pytest
import xxhash

from chunker import GiB, MiB, PartLimits, digest_bytes, digest_part, digest_range, parse_size, plan_parts, read_part


def test_plan_for_60_gib_sparse_file_stays_within_s3_limits(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(60 * GiB)  # sparse: nothing is written or uploaded
    size = os.path.getsize(sparse)
    parts = plan_parts(size, 5 * MiB)
    assert len(parts) <= 10_000
    assert all(5 * MiB <= p.length <= 5 * GiB for p in parts[:-1])
    assert 0 < parts[-1].length <= 5 * GiB
    assert sum(p.length for p in parts) == size
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert all(a.end == b.offset for a, b in itertools.pairwise(parts))


@pytest.mark.parametrize("size", [0, 1, 16 * MiB - 1, 16 * MiB, 16 * MiB + 1, 3 * 16 * MiB + 12345])
def test_plan_covers_file_exactly(size: int) -> None:
    parts = plan_parts(size, 16 * MiB)
    assert sum(p.length for p in parts) == size
    assert len(parts) == -(-size // (16 * MiB))


def test_plan_grows_part_size_beyond_10000_parts() -> None:
    size = 200 * GiB
    parts = plan_parts(size, 8 * MiB)
    assert len(parts) <= 10_000
    assert parts[0].length % MiB == 0


def test_plan_rejects_object_above_5_tib() -> None:
    with pytest.raises(ValueError):
        plan_parts(5 * 1024 * GiB + 1, 5 * MiB)


def test_exclusive_minimum_part_size() -> None:
    # Procore v2.1: a part of exactly 5 MiB is rejected, so the plan must use more.
    parts = plan_parts(20 * MiB, 5 * MiB, PartLimits(min_part_exclusive=True, max_part=100 * MiB))
    assert parts[0].length > 5 * MiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16MiB", 16 * 1024**2), ("8M", 8 * 1024**2), ("5 GiB", 5 * 1024**3), ("1000", 1000),
     ("1.5MiB", int(1.5 * 1024**2)), ("10MB", 10_000_000)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5MiB", "5 XB", "MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_read_part_reads_only_its_range(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert read_part(str(path), 12_345, 1000) == data[12_345:13_345]
    with pytest.raises(OSError):
        read_part(str(path), 99_500, 1000)  # past EOF: the file "shrank"


def test_digests_match_reference_implementations(tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    d = digest_part(str(path), MiB, 5 * MiB, ("md5", "sha256"))
    chunk = data[MiB : 6 * MiB]
    assert d.xxh3_128 == xxhash.xxh3_128_hexdigest(chunk)
    assert d.md5 == hashlib.md5(chunk).digest()
    assert d.sha256 == hashlib.sha256(chunk).digest()
    streamed = digest_range(str(path), MiB, 5 * MiB, ("md5", "sha256", "crc32"), block=MiB + 3)
    assert (streamed.xxh3_128, streamed.md5, streamed.sha256) == (d.xxh3_128, d.md5, d.sha256)
    import base64
    import zlib

    assert streamed.crc32 == zlib.crc32(chunk)
    assert d.md5_b64 == base64.b64encode(hashlib.md5(chunk).digest()).decode()


def test_crc32_b64_is_what_s3_wants_for_the_check_value() -> None:
    """CRC-32 check value (CRC catalogue, CRC-32/ISO-HDLC): CRC-32(b"123456789") = 0xCBF43926;
    S3's x-amz-checksum-crc32 is the base64 of its 4 big-endian bytes CB F4 39 26."""
    d = digest_bytes(b"123456789", ("crc32",))
    assert d.crc32 == 0xCBF43926
    assert d.crc32_b64 == "y/Q5Jg=="
    assert d.md5 is None  # only what was asked for is computed
