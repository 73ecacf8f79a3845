"""The aiohttp chunk path: many requests in flight, each body read afresh from disk."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import aiohttp
import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import StreamWriter
from yarl import URL

from uploader.errors import ConnectFailed, PermanentError, TransientError
from uploader.redact import redact_text
from uploader.source import secs
from uploader.tls import HANDSHAKE_REFUSALS, handshake_advice, make_ssl_context
from uploader.wire import FileSlice, HttpRequest, HttpResponse, lower_headers

READ_PIECE = 256 * 1024  # bytes read from disk per write: bounds memory per part in flight
SEND_SLICE = 1024 * 1024  # bytes per sendfile call: progress and the stall watchdog see each one
MAX_RESPONSE = 4 * 1024 * 1024


class _Activity:
    """When bytes last moved, so a stalled body is noticed (aiohttp has no write timeout)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.sending = False

    def touch(self) -> None:
        self.last = self.loop.time()

    def idle(self) -> float:
        return self.loop.time() - self.last


# Linux: read only what the page cache holds, without waiting for the disk (None elsewhere).
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _read_cached(fd: int, n: int, offset: int) -> bytearray | None:
    """Up to n bytes at offset if the page cache has them, else None. A part is read for its
    digest just before it is sent, so its bytes are nearly always cached: reading them on the
    event loop saves a thread hand-off per piece (a third of the client's CPU on loopback)."""
    global _NOWAIT
    if _NOWAIT is None:
        return None
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # old kernel or filesystem
            _NOWAIT = None
            return None
        raise
    if got <= 0:
        return None  # the thread path reads again and reports a short read
    del buf[got:]
    return buf


async def _file_body(piece: FileSlice, activity: _Activity,
                     on_sent: Callable[[int], None] | None) -> AsyncIterator[bytes | bytearray]:
    loop = asyncio.get_running_loop()
    fd = await loop.run_in_executor(None, os.open, piece.path, os.O_RDONLY)
    activity.sending = True
    try:
        sent = 0
        while sent < piece.length:
            n = min(READ_PIECE, piece.length - sent)
            data: bytes | bytearray | None = _read_cached(fd, n, piece.offset + sent)
            if data is None:
                data = await loop.run_in_executor(None, os.pread, fd, n, piece.offset + sent)
            if not data:
                raise OSError(f"{piece.path} shrank while uploading (short read at {piece.offset + sent})")
            sent += len(data)
            activity.touch()
            if on_sent is not None:  # counted when handed over: a reset mid-piece still sent some of it
                on_sent(len(data))
            yield data
            activity.touch()  # reached once the previous piece was handed to the socket
    finally:
        activity.sending = False
        activity.touch()
        os.close(fd)


class _FileBody(aiohttp.payload.Payload):
    """A FileSlice as a request body. On plain TCP the kernel copies it from the page cache
    to the socket (sendfile): a 512 MiB tus PATCH took 0.06 CPU-s of sys time instead of
    0.16 and ran ~10 % faster. Through TLS (or where sendfile is refused) it is read and
    written piece by piece."""

    def __init__(self, piece: FileSlice, activity: _Activity, on_sent: Callable[[int], None] | None) -> None:
        super().__init__(piece)
        self._size = piece.length
        self._piece, self._activity, self._on_sent = piece, activity, on_sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a file body has no text form")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        piece, done = self._piece, 0
        transport = writer.transport if isinstance(writer, StreamWriter) else None
        if transport is not None and transport.get_extra_info("sslcontext") is None:
            writer.send_headers()  # aiohttp holds them back to join the first body write
            done = await self._sendfile(transport)
        if done < piece.length:
            rest = FileSlice(piece.path, piece.offset + done, piece.length - done)
            async for data in _file_body(rest, self._activity, self._on_sent):
                await writer.write(data)

    async def _sendfile(self, transport: asyncio.Transport) -> int:
        """Bytes sent; fewer than the piece if sendfile is refused (the rest goes by writes)."""
        loop = asyncio.get_running_loop()
        piece, done = self._piece, 0
        fd = await loop.run_in_executor(None, os.open, piece.path, os.O_RDONLY)
        self._activity.sending = True
        with io.FileIO(fd, "rb") as f:
            try:
                while done < piece.length:
                    start = piece.offset + done
                    f.seek(start)
                    if transport.is_closing():  # asyncio would raise RuntimeError
                        raise ConnectionResetError("the connection closed while sending the body")
                    try:
                        await loop.sendfile(transport, f, start, min(SEND_SLICE, piece.length - done),
                                            fallback=False)
                    except asyncio.exceptions.SendfileNotAvailableError:
                        return done  # also what asyncio raises when the slice's first call fails
                    finally:
                        moved = f.tell() - start  # asyncio leaves it after the last byte sent, even on error
                        done += moved
                        self._moved(moved)
                    if moved == 0:
                        raise OSError(f"{piece.path} shrank while uploading (short read at {start})")
            finally:
                self._activity.sending = False
                self._activity.touch()
        return done

    def _moved(self, n: int) -> None:
        if n > 0:
            self._activity.touch()
            if self._on_sent is not None:
                self._on_sent(n)


_SSL_REPR = re.compile(r"ssl:<ssl\.SSLContext object at 0x[0-9a-f]+>")


def classify_exception(exc: BaseException, label: str) -> Exception:
    """Map aiohttp / ssl / OS errors to our classes, once, here."""
    # aiohttp's connector errors print the SSLContext's repr (an address): of no use to a user.
    detail = _SSL_REPR.sub("ssl", redact_text(str(exc)))
    what = f"{label}: {type(exc).__name__}: {detail or 'no detail'}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return PermanentError(f"TLS certificate rejected ({what}); pass --ca-bundle if the server uses a private CA")
    if _handshake_refused(exc):
        return PermanentError(f"TLS handshake failed ({what}); {handshake_advice(what)}")
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(f"invalid URL ({what})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):  # its errno is getaddrinfo's, not errno's
            reason = f"cannot resolve the host name: {exc.os_error.strerror}"
        else:
            reason = os.strerror(exc.os_error.errno) if exc.os_error.errno else str(exc.os_error)
        return ConnectFailed(f"{label}: cannot connect to {exc.host}:{exc.port} ({reason})", cause=exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectFailed(f"{label}: no connection within the connect timeout ({exc})", cause=exc)
    return TransientError(what, cause=exc)




def _handshake_refused(exc: BaseException) -> bool:
    """The server and we share no TLS version: permanent. A record corrupted during the
    handshake (bad MAC, EOF) is a flaky link like any other: retried."""
    inner = getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientConnectorSSLError) else exc
    return isinstance(inner, ssl.SSLError) and getattr(inner, "reason", "") in HANDSHAKE_REFUSALS


async def _read_reply(content: aiohttp.StreamReader) -> bytes:
    """The reply body to its end, at most MAX_RESPONSE bytes (the rest is dropped with the
    connection). StreamReader.read(n) returns what has arrived so far, not n bytes: a reply
    that comes in several packets (any real network) would be cut at the first."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE and (chunk := await content.read(MAX_RESPONSE - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class AsyncTransport:
    def __init__(
        self,
        *,
        concurrency: int,
        connect_timeout: float,
        stall_timeout: float,
        ca_bundle: str | None = None,
        force_close: bool = False,
    ) -> None:
        self.stall_timeout = stall_timeout
        self._ca_bundle = ca_bundle
        self._ssl: ssl.SSLContext | None = None  # built on the first https request (~30 ms)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout, sock_read=stall_timeout
        )
        self._limit = concurrency + 2
        self._force_close = force_close
        self._session: aiohttp.ClientSession | None = None
        # TLS version and cipher of the last good connection, for diagnostics.
        self.tls_info: dict[str, str] = {}

    async def __aenter__(self) -> AsyncTransport:
        connector = aiohttp.TCPConnector(
            limit=self._limit, force_close=self._force_close,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, trust_env=True
        )
        # aiohttp silently re-sends an idempotent request (our PUTs) once after a
        # disconnect, reusing a body generator that may be half consumed (DESIGN rule 1)
        # and spending a retry we don't count. Our retry layer rebuilds the body instead.
        self._session._retry_connection = False
        return self

    def _tls(self, url: str) -> ssl.SSLContext | bool:
        if url[:6].lower() != "https:":
            return True  # aiohttp ignores it for plain http
        if self._ssl is None:
            self._ssl = make_ssl_context(self._ca_bundle)
        return self._ssl

    def _note_tls(self, resp: aiohttp.ClientResponse) -> None:
        if self.tls_info or resp.connection is None or resp.connection.transport is None:
            return
        sslobj = resp.connection.transport.get_extra_info("ssl_object")
        if sslobj is not None:
            cipher = sslobj.cipher()
            self.tls_info = {"version": str(sslobj.version()), "cipher": cipher[0] if cipher else ""}

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, req: HttpRequest, on_sent: Callable[[int], None] | None = None) -> HttpResponse:
        """Execute one request; network failures come back as our typed errors. `on_sent`
        hears of every piece of a file body handed to the socket (not yet confirmed)."""
        activity = _Activity()
        task = asyncio.ensure_future(self._send(req, activity, on_sent))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(0.05, self.stall_timeout / 4))
                if done:
                    return task.result()
                if activity.sending and activity.idle() > self.stall_timeout:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise TransientError(
                        f"{req.label}: stalled, no bytes moved for {secs(self.stall_timeout)}"
                    )
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise

    async def _send(self, req: HttpRequest, activity: _Activity,
                    on_sent: Callable[[int], None] | None) -> HttpResponse:
        assert self._session is not None, "use 'async with AsyncTransport(...)'"
        headers = dict(req.headers)
        body: object = req.body
        if isinstance(req.body, FileSlice):
            headers["Content-Length"] = str(req.body.length)
            body = _FileBody(req.body, activity, on_sent)
        try:
            async with self._session.request(
                req.method, URL(req.url, encoded=True), headers=headers, data=body, ssl=self._tls(req.url),
                allow_redirects=req.may_follow,
            ) as resp:
                data = await _read_reply(resp.content)
                self._note_tls(resp)
                return HttpResponse(resp.status, lower_headers(dict(resp.headers)), data)
        except aiohttp.ServerTimeoutError as exc:  # sock_read: the reply stopped coming
            raise TransientError(f"{req.label}: stalled, no bytes moved for {secs(self.stall_timeout)} "
                                 f"(waiting for the reply)", cause=exc) from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
            raise classify_exception(exc, req.label or req.method) from exc
