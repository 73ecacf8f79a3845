"""The async request body read from disk: every byte of the slice, in order, whether the page
cache serves it on the event loop (RWF_NOWAIT) or a worker thread reads it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from uploader import transport_async
from uploader.wire import FileSlice

KiB = 1024


async def _collect(piece: FileSlice) -> tuple[bytes, list[int]]:
    sent: list[int] = []
    activity = transport_async._Activity()
    chunks = [bytes(c) async for c in transport_async._file_body(piece, activity, sent.append)]
    return b"".join(chunks), sent


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(1300 * KiB + 7)  # not a multiple of the read piece
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("nowait", [True, False], ids=["page-cache-on-loop", "worker-thread"])
def test_body_is_the_slice(data_file: tuple[Path, bytes], nowait: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = data_file
    if nowait:
        assert transport_async._NOWAIT is not None, "Linux has RWF_NOWAIT since 4.14"
    else:
        monkeypatch.setattr(transport_async, "_NOWAIT", None)
    offset, length = 5 * KiB + 3, 1100 * KiB
    body, sent = asyncio.run(_collect(FileSlice(str(path), offset, length)))
    assert body == data[offset:offset + length]
    assert sum(sent) == length


def test_cached_read_is_used_for_a_file_in_the_page_cache(data_file: tuple[Path, bytes]) -> None:
    path, data = data_file
    fd = os.open(path, os.O_RDONLY)
    try:
        got = transport_async._read_cached(fd, 256 * KiB, 100)  # just written: cached
    finally:
        os.close(fd)
    assert got is not None and bytes(got) == data[100:100 + 256 * KiB]


@pytest.mark.parametrize("nowait", [True, False], ids=["page-cache-on-loop", "worker-thread"])
def test_a_file_shorter_than_the_slice_is_an_error(data_file: tuple[Path, bytes], nowait: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = data_file
    if not nowait:
        monkeypatch.setattr(transport_async, "_NOWAIT", None)
    with pytest.raises(OSError, match="shrank while uploading"):
        asyncio.run(_collect(FileSlice(str(path), 0, len(data) + 10)))
