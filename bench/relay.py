"""A plain TCP relay that notes when each HTTP request head arrives (for the resume benchmark).

    with Relay("127.0.0.1", s3_port) as relay:
        ...  # point the client at relay.url
        relay.first_request("PUT", "partNumber=")   # monotonic time, or None

It parses only the client->server direction and only as far as needed: request line and
Content-Length, then skips that many body bytes. A chunked request stops the parsing of that
connection (chunkhaul always sends Content-Length). Bytes are relayed untouched."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

_RECV = 1 << 20
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the request head was complete
    method: str
    target: str


class _RequestLog:
    """Per-connection HTTP/1.1 request framing, fed the client's bytes in order."""

    def __init__(self, sink: list[Seen], lock: threading.Lock) -> None:
        self._sink, self._lock = sink, lock
        self._head = b""
        self._body_left = 0
        self._lost = False

    def feed(self, data: bytes) -> None:
        while data and not self._lost:
            if self._body_left:
                take = min(self._body_left, len(data))
                self._body_left -= take
                data = data[take:]
                continue
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                self._lost = len(self._head) > _HEAD_LIMIT
                return
            head, data = self._head[:end], self._head[end + 4:]
            self._head = b""
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        with self._lock:
            self._sink.append(Seen(time.monotonic(), parts[0], parts[1] if len(parts) > 1 else ""))
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            self._lost = True
        self._body_left = int(fields.get("content-length", "0") or 0)


class Relay:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._bytes_up = 0
        self._socks: list[socket.socket] = []
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what it saw ---------------------------------------------------------------------------

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes_up

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._bytes_up = 0

    def first_request(self, method: str, target_contains: str = "") -> float | None:
        for seen in self.requests():
            if seen.method == method and target_contains in seen.target:
                return seen.at
        return None

    # -- plumbing ------------------------------------------------------------------------------

    def start(self) -> Relay:
        threading.Thread(target=self._accept_loop, name="bench-relay", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            log = _RequestLog(self._seen, self._lock)
            threading.Thread(target=self._pump, args=(client, upstream, log), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: _RequestLog | None) -> None:
        try:
            while data := src.recv(_RECV):
                if log is not None:
                    log.feed(data)
                    with self._lock:
                        self._bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
