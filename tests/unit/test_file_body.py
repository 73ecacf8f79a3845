"""The async request body read from disk: every byte of the slice, in order, whether the page
cache serves it on the event loop (RWF_NOWAIT) or a worker thread reads it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from uploader import transport_async
from uploader.errors import TransientError
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


# -- through a socket: an aiohttp server on 127.0.0.1 reports what it received ----------------

async def _put_to_echo(piece: FileSlice, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], list[int], int]:
    """PUT the slice with AsyncTransport; the server answers the md5 and length it read."""
    from aiohttp import web

    from uploader.wire import HttpRequest

    async def echo(request: web.Request) -> web.Response:
        digest, length = hashlib.md5(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        return web.Response(text=f"{digest.hexdigest()} {length}")

    calls = 0
    real_sendfile = asyncio.BaseEventLoop.sendfile

    async def counting_sendfile(self: asyncio.BaseEventLoop, *args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        return await real_sendfile(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "sendfile", counting_sendfile)
    app = web.Application()
    app.router.add_put("/x", echo)
    sent: list[int] = []
    resp = await _send_to(app, HttpRequest("PUT", "/x", body=piece), sent.append)
    md5, length = resp.body.decode().split()
    return {"md5": md5, "length": length}, sent, calls


async def _send_to(app: Any, request: Any, on_sent: Any = None) -> Any:
    """Serve `app` on 127.0.0.1 and send `request` (its URL a path) there with AsyncTransport."""
    from dataclasses import replace

    from aiohttp import web

    from uploader.transport_async import AsyncTransport

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with AsyncTransport(concurrency=1, connect_timeout=5, stall_timeout=10) as transport:
            return await transport.send(replace(request, url=f"http://127.0.0.1:{port}{request.url}"), on_sent)
    finally:
        await runner.cleanup()


def test_plain_http_body_goes_by_sendfile_and_arrives_whole(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * 1024 * KiB + 11)  # several sendfile slices and a ragged end
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    offset, length = 7, len(data) - 7 - 5
    got, sent, calls = asyncio.run(_put_to_echo(FileSlice(str(path), offset, length), monkeypatch))
    assert got == {"md5": hashlib.md5(data[offset:offset + length]).hexdigest(), "length": str(length)}
    assert sum(sent) == length
    assert calls == -(-length // transport_async.SEND_SLICE)  # one call per slice: progress moves


def test_a_file_that_shrank_fails_the_sendfile_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1500 * KiB)
    path = tmp_path / "short.bin"
    path.write_bytes(data)
    with pytest.raises(TransientError) as caught:
        asyncio.run(_put_to_echo(FileSlice(str(path), 0, len(data) + 4096), monkeypatch))
    causes, exc = [], caught.value.__cause__
    while exc is not None:  # aiohttp wraps it: "Can not write request body"
        causes.append(str(exc))
        exc = exc.__cause__
    assert any("shrank while uploading (short read at 1536000)" in c for c in causes), causes


async def _get_split_reply(body: bytes, pieces: int) -> bytes:
    """GET from a real server that writes its reply in `pieces` writes 20 ms apart, as a reply
    crossing a real network arrives in several packets."""
    from aiohttp import web

    from uploader.wire import HttpRequest

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await resp.prepare(request)
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await resp.write(body[start:start + step])
            await asyncio.sleep(0.02)
        return resp

    app = web.Application()
    app.router.add_get("/x", slow)
    return bytes((await _send_to(app, HttpRequest("GET", "/x"))).body)


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_a_reply_arriving_in_pieces_is_read_whole(pieces: int) -> None:
    body = b"<ListPartsResult>" + os.urandom(23 * KiB).hex().encode() + b"</ListPartsResult>"
    assert asyncio.run(_get_split_reply(body, pieces)) == body
