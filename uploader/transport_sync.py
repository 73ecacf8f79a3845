"""The requests single-shot path: one request, streamed from disk, under a wall-clock deadline."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from uploader.errors import PermanentError, TransientError, UploadFailed
from uploader.redact import redact_text
from uploader.source import secs
from uploader.tls import HANDSHAKE_REFUSALS, handshake_advice, make_ssl_context
from uploader.wire import FileSlice, FormBody, HttpRequest, HttpResponse, lower_headers

MiB = 1024 * 1024


def sync_deadline(size: int) -> float:
    """The original system's rule: 10 s per MB, clamped to [5 min, 30 min]."""
    return min(max(10.0 * size / MiB, 300.0), 1800.0)


class _SliceReader:
    """A file-like body of known length, so requests sends Content-Length, not chunked."""

    def __init__(self, piece: FileSlice) -> None:
        self._fh = open(piece.path, "rb")  # noqa: SIM115 - closed by close()
        self._fh.seek(piece.offset)
        self._left = piece.length

    def __len__(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class _FormReader:
    """A multipart/form-data body of known length: the form's head, the file streamed
    from disk, the closing boundary. Known length, so requests sends Content-Length."""

    def __init__(self, form: FormBody) -> None:
        self._head, self._tail = form.head(), form.tail()
        self._file = _SliceReader(form.file)
        self._path = form.file.path
        self._left = len(self._head) + len(self._file) + len(self._tail)

    def __len__(self) -> int:
        return self._left

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else n
        out = b""
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
        if len(out) < n and len(self._file):
            data = self._file.read(n - len(out))
            if not data:
                raise OSError(f"{self._path} shrank while uploading")
            out += data
        if len(out) < n and not len(self._file):
            piece, self._tail = self._tail[: n - len(out)], self._tail[n - len(out):]
            out += piece
        self._left -= len(out)
        return out

    def close(self) -> None:
        self._file.close()


def _body(req: HttpRequest) -> Any:
    if isinstance(req.body, FileSlice):
        return _SliceReader(req.body)
    if isinstance(req.body, FormBody):
        return _FormReader(req.body)
    return req.body


class _DeadlineAdapter(HTTPAdapter):
    """Remembers its sockets so a watchdog can cut them: requests' `timeout` only bounds
    the gap between bytes, and a server trickling 1 byte/s would never trip it."""

    def __init__(self, ca_bundle: str | None) -> None:
        self.connections: list[Any] = []
        self._ssl = make_ssl_context(ca_bundle)
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, ssl_context=self._ssl, **kw)
        sink = self.connections

        class _HTTP(HTTPConnectionPool):
            def _new_conn(self) -> Any:
                conn = super()._new_conn()
                sink.append(conn)
                return conn

        class _HTTPS(HTTPSConnectionPool):
            def _new_conn(self) -> Any:
                conn = super()._new_conn()
                sink.append(conn)
                return conn

        self.poolmanager.pool_classes_by_scheme = {"http": _HTTP, "https": _HTTPS}

    def cut(self) -> None:
        for conn in self.connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# Set by the engine around a fallback run in a worker thread (asyncio.to_thread copies
# the context), so Ctrl-C can cut a blocking requests call instead of waiting it out.
CANCEL: ContextVar[threading.Event | None] = ContextVar("chunkhaul_sync_cancel", default=None)


def cancelled() -> bool:
    event = CANCEL.get()
    return event is not None and event.is_set()


def pause(seconds: float) -> None:
    """time.sleep that ends early when the run is cancelled."""
    event = CANCEL.get()
    if event is None:
        time.sleep(seconds)
    else:
        event.wait(seconds)


def _watch(adapter: _DeadlineAdapter, deadline: float | None, expired: threading.Event,
           done: threading.Event, cancel: threading.Event | None) -> None:
    """Cut the connection at the wall-clock deadline, or at once on cancellation."""
    end = time.monotonic() + deadline if deadline else float("inf")
    while not done.wait(0.1):
        if cancel is not None and cancel.is_set():
            adapter.cut()
            return
        if time.monotonic() >= end:
            expired.set()
            adapter.cut()
            return


class SyncTransport:
    def __init__(self, *, ca_bundle: str | None, connect_timeout: float, stall_timeout: float) -> None:
        self.ca_bundle = ca_bundle
        self.timeouts = (connect_timeout, stall_timeout)

    def send(self, req: HttpRequest, deadline: float | None = None) -> HttpResponse:
        """One attempt on a fresh session and connection, abandoned at `deadline` seconds."""
        adapter = _DeadlineAdapter(self.ca_bundle)
        session = requests.Session()
        session.trust_env = True
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        expired, done = threading.Event(), threading.Event()
        # A new thread does not inherit context variables: hand it the cancel event.
        watchdog = threading.Thread(target=_watch, args=(adapter, deadline, expired, done, CANCEL.get()),
                                    daemon=True)
        body = _body(req)
        started = time.monotonic()
        try:
            watchdog.start()
            resp = session.request(req.method, req.url, headers=dict(req.headers), data=body,
                                   timeout=self.timeouts, verify=self.ca_bundle or True,
                                   allow_redirects=req.may_follow)
            return HttpResponse(resp.status_code, lower_headers(dict(resp.headers)), resp.content)
        except requests.exceptions.SSLError as exc:
            if any(reason in str(exc) for reason in HANDSHAKE_REFUSALS):
                raise PermanentError(f"{req.label}: TLS handshake refused ({redact_text(str(exc))}); "
                                     f"{handshake_advice(str(exc))}") from exc
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate" in str(exc).lower():
                raise PermanentError(f"{req.label}: TLS certificate rejected: {redact_text(str(exc))}") from exc
            raise TransientError(f"{req.label}: TLS error: {redact_text(str(exc))}", cause=exc) from exc
        except (requests.RequestException, OSError) as exc:
            if cancelled():
                raise UploadFailed(f"{req.label}: interrupted") from exc
            if expired.is_set() and deadline is not None:
                raise TransientError(
                    f"{req.label}: deadline of {secs(deadline)} reached after "
                    f"{time.monotonic() - started:.0f}s", cause=exc) from exc
            raise TransientError(f"{req.label}: {type(exc).__name__}: {redact_text(str(exc))}",
                                 cause=exc) from exc
        finally:
            done.set()
            if isinstance(body, _SliceReader | _FormReader):
                body.close()
            session.close()

