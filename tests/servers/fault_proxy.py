"""A fault-injecting TCP proxy (with an optional HTTP/1.1 mode) for integration and chaos tests.

It sits between the upload client and a real server on 127.0.0.1 and breaks the link on
purpose: reset after N bytes, flip a byte of the (TLS) stream, stall, cap the bandwidth, add
latency; in HTTP mode it also answers chosen requests itself (503 + Retry-After, a 200 with
an ``<Error>`` body, an UploadPart "accepted" but dropped).

Sync tests and subprocess CLI tests run it in a background thread with its own event loop::

    with FaultProxy("127.0.0.1", s3_port, rules=[Reset(after_bytes=5 * MiB, first=1)]) as proxy:
        subprocess.run(["chunkhaul", "upload", path, dest, "--endpoint-url", proxy.url("https")])
        assert proxy.stats().faults["reset"] == 1
        proxy.set_rules([])          # thread-safe; applies to connections accepted from now on

Async tests can run it in their own loop with ``async with FaultProxy(...) as proxy``.

HTTP mode (``http=True``, plain HTTP only) parses requests and can answer matching ones itself::

    rules = [HttpDrop(method="PUT", query="partNumber=", nth=2),          # "stored", never sent
             HttpRespond(method="POST", query="uploadId=", status=200,
                         body="<Error><Code>InternalError</Code></Error>", forward=True),
             HttpRespond(query="partNumber=", probability=0.1, status=503, retry_after=2)]
    with FaultProxy("127.0.0.1", s3_port, rules, http=True, seed=1) as proxy: ...
        [(r.method, r.query, r.action, r.status) for r in proxy.stats().requests]

Counters (``proxy.stats()``, a snapshot): connections, active, bytes_up/bytes_down delivered,
upstream_errors, ``faults`` (Counter by kind), ``fault_log`` (kind, connection, direction,
offset) and ``requests`` (HttpExchange per request). A response the client has seen is
already counted; connection ends are not (use ``proxy.wait_for(predicate)``).

Rule selection (every rule): ``first=K`` (the first K candidates), ``every=n`` (the n-th, 2n-th,
...), ``nth=n`` (only the n-th), ``probability=p`` (a seeded RNG, so runs are reproducible).
Criteria combine with AND; none set means every candidate. Candidates are connections for link
rules (Reset, Corrupt, Stall, Throttle) and matching requests for HTTP rules; counting starts
when the rules are installed (constructor or ``set_rules``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import enum
import functools
import hashlib
import http
import logging
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from tests.servers.lifecycle import Server

__all__ = [
    "Corrupt",
    "Direction",
    "FaultEvent",
    "FaultProxy",
    "HttpDrop",
    "HttpExchange",
    "HttpRespond",
    "MiB",
    "ProxyStats",
    "Reset",
    "Rule",
    "Stall",
    "Throttle",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_CHUNK = 64 * 1024
_HEAD_LIMIT = 1024 * 1024
_TLS_APPLICATION_DATA = 23
_PEER_GONE_STATES = {6, 7, 8, 9, 11}  # TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING
_FLUSH_TIMEOUT = 2.0


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


class Direction(enum.Enum):
    UP = "up"  # client → server: the upload direction
    DOWN = "down"  # server → client
    BOTH = "both"

    def covers(self, other: Direction) -> bool:
        return self is Direction.BOTH or self is other


@dataclass(frozen=True, kw_only=True)
class _Selection:
    """Which candidates (connections, or matching HTTP requests) a rule applies to."""

    first: int | None = None
    every: int | None = None
    nth: int | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        for name in ("first", "every", "nth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")

    def selects(self, count: int, draw: float) -> bool:
        """Whether the `count`-th candidate (1-based) is selected, given its random `draw`."""
        return (
            (self.first is None or count <= self.first)
            and (self.every is None or count % self.every == 0)
            and (self.nth is None or count == self.nth)
            and (self.probability is None or draw < self.probability)
        )


@dataclass(frozen=True, kw_only=True)
class Reset(_Selection):
    """Forward `after_bytes` bytes in `direction`, then RST both sides (SO_LINGER 0 + close)."""

    after_bytes: int = 0
    direction: Direction = Direction.UP


@dataclass(frozen=True, kw_only=True)
class Corrupt(_Selection):
    """Flip one byte (XOR `mask`) at stream offset >= `after_bytes`.

    With ``tls=True`` the byte is the first one at or after that offset that lies inside the
    payload of a TLS application-data record, so the receiver fails the record's MAC (a flip in
    a record header would give a framing error instead). ``tls=False`` flips exactly the byte
    at offset `after_bytes`.
    """

    after_bytes: int = 0
    direction: Direction = Direction.UP
    tls: bool = True
    mask: int = 0xFF


@dataclass(frozen=True, kw_only=True)
class Stall(_Selection):
    """Forward `after_bytes` bytes, then nothing more while keeping both sockets open.

    ``discard=False`` (a dead link): the proxy stops reading, so the sender's writes block once
    the socket buffers are full. ``discard=True`` (a black hole): the proxy reads and drops, so
    the sender's writes succeed and it waits for an answer that never comes. The connection is
    torn down when a peer closes (as far as the proxy can see it) or the proxy stops.
    """

    after_bytes: int = 0
    direction: Direction = Direction.UP
    discard: bool = False


@dataclass(frozen=True, kw_only=True)
class Throttle(_Selection):
    """A long, thin link: a bandwidth cap (token bucket, per connection and direction) and a
    one-way latency added to every byte (pipelined, so it costs latency, not throughput)."""

    bytes_per_sec: float | None = None
    latency_ms: float = 0.0
    direction: Direction = Direction.UP

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bytes_per_sec is not None and self.bytes_per_sec <= 0:
            raise ValueError("bytes_per_sec must be > 0")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")


@dataclass(frozen=True, kw_only=True)
class _HttpMatch(_Selection):
    """Which requests an HTTP rule looks at; selection then counts only those."""

    method: str | None = None  # case-insensitive equality
    path: str | None = None  # regular expression, re.search on the path
    query: str | None = None  # substring of the raw query string, e.g. "partNumber="

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            (self.method is None or self.method.upper() == method.upper())
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.query is None or self.query in query)
        )


@dataclass(frozen=True, kw_only=True)
class HttpRespond(_HttpMatch):
    """Answer a matched request with a synthetic response, then close the connection.

    ``forward=False``: the request never reaches the server (its body is read and dropped).
    ``forward=True``: the request is forwarded and the real reply discarded, e.g.
    CompleteMultipartUpload answered 200 with an ``<Error>`` body.
    `retry_after` is seconds (int/float) or an HTTP-date (datetime, or a preformatted str).
    """

    status: int = 503
    retry_after: float | dt.datetime | str | None = None
    body: bytes | str = b""
    content_type: str = "application/xml"
    headers: Mapping[str, str] = field(default_factory=dict)
    forward: bool = False


@dataclass(frozen=True, kw_only=True)
class HttpDrop(_HttpMatch):
    """Swallow a matched request's body without forwarding it and answer 200 with an ETag
    (the quoted MD5 of the body, as S3 does, unless `etag` is given): a part "accepted" but
    never stored."""

    etag: str | None = None
    status: int = 200


LinkRule = Reset | Corrupt | Stall | Throttle
HttpRule = HttpRespond | HttpDrop
Rule = LinkRule | HttpRule


# ---------------------------------------------------------------------------------------------
# Counters
# ---------------------------------------------------------------------------------------------

FaultKind = Literal["reset", "corrupt", "stall", "throttle", "respond", "drop"]


@dataclass(frozen=True)
class FaultEvent:
    kind: FaultKind
    connection: int  # 1-based accept order since start (or reset_stats)
    direction: Direction | None = None
    offset: int | None = None  # stream offset in `direction` where it fired


@dataclass(frozen=True)
class HttpExchange:
    connection: int
    method: str
    path: str
    query: str
    action: Literal["forwarded", "respond", "drop"]
    status: int  # the status sent (or being sent) to the client
    upstream_status: int | None  # what the server answered; None when not forwarded
    body_bytes: int  # request body bytes read from the client


@dataclass(frozen=True)
class ProxyStats:
    connections: int  # accepted
    active: int  # still open
    bytes_up: int  # delivered to the server
    bytes_down: int  # delivered to the client
    upstream_errors: int  # failed connects to the target
    fault_log: tuple[FaultEvent, ...]
    requests: tuple[HttpExchange, ...]

    @property
    def faults(self) -> Counter[str]:
        return Counter(event.kind for event in self.fault_log)

    def faulted_connections(self, kind: FaultKind) -> list[int]:
        return [event.connection for event in self.fault_log if event.kind == kind]


class _Stats:
    """Mutable counters, written by the proxy loop and read from test threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0  # not cleared: open connections stay open
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._connections = 0
            self._bytes = {Direction.UP: 0, Direction.DOWN: 0}
            self._upstream_errors = 0
            self._faults: list[FaultEvent] = []
            self._requests: list[HttpExchange] = []

    def accepted(self) -> int:
        with self._lock:
            self._connections += 1
            self._active += 1
            return self._connections

    def closed(self) -> None:
        with self._lock:
            self._active -= 1

    def add_bytes(self, direction: Direction, count: int) -> None:
        with self._lock:
            self._bytes[direction] += count

    def upstream_error(self) -> None:
        with self._lock:
            self._upstream_errors += 1

    def fault(self, event: FaultEvent) -> None:
        log.debug("fault injected: %s", event)
        with self._lock:
            self._faults.append(event)

    def request(self, exchange: HttpExchange) -> None:
        with self._lock:
            self._requests.append(exchange)

    def snapshot(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(
                connections=self._connections,
                active=self._active,
                bytes_up=self._bytes[Direction.UP],
                bytes_down=self._bytes[Direction.DOWN],
                upstream_errors=self._upstream_errors,
                fault_log=tuple(self._faults),
                requests=tuple(self._requests),
            )


# ---------------------------------------------------------------------------------------------
# Rule book: installed rules plus their selection counters, shared across threads
# ---------------------------------------------------------------------------------------------


class _ArmedRule:
    def __init__(self, rule: Rule, seed: int, position: int) -> None:
        self.rule = rule
        # One RNG per rule, seeded by (proxy seed, position): a rule's decisions depend only on
        # how many candidates it has seen, not on what the other rules did.
        self._rng = random.Random(f"{seed}:{position}")
        self._count = 0

    def select(self) -> bool:
        self._count += 1
        # Draw for every candidate so the sequence stays aligned with the count.
        draw = self._rng.random() if self.rule.probability is not None else 0.0
        return self.rule.selects(self._count, draw)


class _RuleBook:
    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._rules: list[_ArmedRule] = []

    def replace(self, rules: Iterable[Rule]) -> None:
        armed = [_ArmedRule(rule, self._seed, i) for i, rule in enumerate(rules)]
        with self._lock:
            self._rules = armed

    def for_connection(self) -> list[LinkRule]:
        with self._lock:
            return [
                a.rule
                for a in self._rules
                if isinstance(a.rule, Reset | Corrupt | Stall | Throttle) and a.select()
            ]

    def for_request(self, method: str, path: str, query: str) -> HttpRule | None:
        """The first selected HTTP rule. Every rule whose pattern matches counts the request,
        even when an earlier rule fires, so `nth=3` means the third matching request."""
        chosen: HttpRule | None = None
        with self._lock:
            for armed in self._rules:
                rule = armed.rule
                if not isinstance(rule, HttpRespond | HttpDrop):
                    continue
                if rule.matches(method, path, query) and armed.select() and chosen is None:
                    chosen = rule
        return chosen


# ---------------------------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------------------------


class _BadMessage(Exception):
    pass


class _Truncated(_BadMessage):
    """The peer closed before a complete line/head/body; `partial` is what did arrive."""

    def __init__(self, partial: bytes) -> None:
        super().__init__(f"connection closed after {len(partial)} bytes of a message")
        self.partial = partial


class _Socket:
    """One side of a proxied connection, driven with loop.sock_* calls.

    Not asyncio transports: a transport closes its socket when a send fails, dropping bytes
    still queued for reading — such as the TLS alert a server sends just before its RST,
    which is exactly what a client must get to see SSLV3_ALERT_BAD_RECORD_MAC.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio does
        self.sock = sock
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()  # read ahead by readuntil (HTTP mode only)
        self._eof = False

    async def recv(self, limit: int = _CHUNK) -> bytes:
        """Up to `limit` bytes; b"" at EOF."""
        if self._buffer:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
            return data
        if self._eof:
            return b""
        data = await self._loop.sock_recv(self.sock, limit)
        self._eof = not data
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        """Bytes up to and including `separator`."""
        start = 0
        while (index := self._buffer.find(separator, start)) < 0:
            if len(self._buffer) > _HEAD_LIMIT:
                raise _BadMessage("line or message head too long")
            start = max(0, len(self._buffer) - len(separator) + 1)
            await self._fill()
        return self._take(index + len(separator))

    async def readexactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        return self._take(size)

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("socket closed by the proxy")
        await self._loop.sock_sendall(self.sock, data)

    def shutdown_write(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def close(self, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if rst:
            with contextlib.suppress(OSError):
                # Linger on with timeout 0 turns close() into an RST.
                linger = struct.pack("ii", 1, 0)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.sock.close()

    async def flushed(self) -> None:
        """Wait (bounded) until the peer acknowledged all we sent, so that a following RST,
        which discards unsent data, cannot eat bytes already counted as forwarded."""
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        while not self.closed and self._unacked() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def peer_gone(self) -> bool:
        """Whether the peer closed or reset, from the TCP state: a stalled proxy is not
        reading, so it cannot wait for EOF."""
        if self.closed:
            return True
        if not hasattr(socket, "TCP_INFO"):
            return False
        try:
            state = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        except OSError:
            return True
        return state in _PEER_GONE_STATES

    def _unacked(self) -> int:
        """Bytes sent but not yet acknowledged (Linux SIOCOUTQ); 0 where unknown."""
        try:
            import fcntl
            import termios

            raw = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            return int(struct.unpack("i", raw)[0])
        except (ImportError, OSError, ValueError):
            return 0

    async def _fill(self) -> None:
        data = b"" if self._eof else await self._loop.sock_recv(self.sock, _CHUNK)
        if not data:
            self._eof = True
            raise _Truncated(bytes(self._buffer))
        self._buffer += data

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


# ---------------------------------------------------------------------------------------------
# Links: one direction of one connection
# ---------------------------------------------------------------------------------------------


class _ResetFault(Exception):
    pass


class _StallFault(Exception):
    """The link stalled: the caller should hold the connection open (see _Conn.hold)."""


class _TlsRecordScanner:
    """Follows TLS record framing (5-byte header + payload) through a byte stream."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._left = 0
        self._type = 0

    def find(self, data: bytes, start: int, min_offset: int) -> int | None:
        """Index in `data` (at stream offset `start`) of the first application-data payload
        byte at stream offset >= `min_offset`; consumes `data` either way."""
        found: int | None = None
        i = 0
        while i < len(data):
            if self._left == 0:
                take = data[i : i + 5 - len(self._header)]
                self._header += take
                i += len(take)
                if len(self._header) == 5:
                    self._type = self._header[0]
                    self._left = int.from_bytes(self._header[3:5], "big")
                    self._header.clear()
                continue
            take_len = min(self._left, len(data) - i)
            if found is None and self._type == _TLS_APPLICATION_DATA:
                first = max(i, min_offset - start)
                if first < i + take_len:
                    found = first
            i += take_len
            self._left -= take_len
        return found


def _first(rules: Sequence[LinkRule], kind: type, direction: Direction) -> LinkRule | None:
    return next((r for r in rules if isinstance(r, kind) and r.direction.covers(direction)), None)


class _Link:
    """Delivers one direction of a connection to `dest`, applying that direction's faults.

    Without latency, `send` writes through. With latency, `send` queues (timestamp, bytes)
    and a task delivers each chunk when it is due, so the delay is pipelined like on a real
    long link; the queue is bounded (≈ the bandwidth-delay product) for back-pressure.
    """

    def __init__(self, conn: _Conn, direction: Direction, rules: Sequence[LinkRule]) -> None:
        self.direction = direction
        self.dest: _Socket | None = None
        self.sent = 0
        self._conn = conn
        reset = _first(rules, Reset, direction)
        stall = _first(rules, Stall, direction)
        corrupt = _first(rules, Corrupt, direction)
        throttle = _first(rules, Throttle, direction)
        self._reset_at = reset.after_bytes if isinstance(reset, Reset) else None
        self._stall = stall if isinstance(stall, Stall) else None
        self._corrupt = corrupt if isinstance(corrupt, Corrupt) else None
        self._scanner = _TlsRecordScanner()
        self._throttle = throttle if isinstance(throttle, Throttle) else None
        self._rate = self._throttle.bytes_per_sec if self._throttle else None
        self._latency = self._throttle.latency_ms / 1000 if self._throttle else 0.0
        # Pace in slices of ~10 ms of traffic so the cap is smooth at low rates.
        self._slice = max(1024, min(_CHUNK, int(self._rate / 100))) if self._rate else 1 << 62
        self._next_slot: float | None = None
        self._stalled = False
        self._failure: OSError | None = None
        self._queue: asyncio.Queue[tuple[float, bytes | None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._eof_written = asyncio.Event()
        if self._throttle is not None:
            self._log("throttle", None)

    @property
    def stall_discards(self) -> bool:
        return self._stall is not None and self._stall.discard

    async def open(self) -> None:
        """Apply faults due at offset 0 (e.g. Reset(after_bytes=0)) before any byte moves."""
        await self._deliver_or_reset(b"")

    async def send(self, data: bytes) -> None:
        """Forward `data`. Raises _StallFault once stalled, ConnectionError once reset/closed."""
        self._raise_failure()
        if self._latency <= 0:
            await self._deliver_or_reset(data)
            return
        await self._queued().put((time.monotonic() + self._latency, data))
        self._raise_failure()

    async def finish(self) -> None:
        """Half-close toward the receiver once everything sent so far was delivered."""
        if self._queue is None:
            self._write_eof()
            return
        await self._queue.put((time.monotonic() + self._latency, None))
        await self._eof_written.wait()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _raise_failure(self) -> None:
        if self._stalled:
            raise _StallFault()
        if self._failure is not None:
            raise ConnectionResetError(str(self._failure))

    def _queued(self) -> asyncio.Queue[tuple[float, bytes | None]]:
        if self._queue is None:
            bdp = (self._rate or 200 * MiB) * self._latency
            self._queue = asyncio.Queue(maxsize=max(16, int(bdp / _CHUNK) + 16))
            self._task = asyncio.ensure_future(self._run_queue())
        return self._queue

    async def _run_queue(self) -> None:
        assert self._queue is not None
        while True:
            due, data = await self._queue.get()
            if self._stalled or self._failure is not None:
                continue  # keep consuming so senders never block on a dead link
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if data is None:
                self._write_eof()
                continue
            with contextlib.suppress(_StallFault, OSError):
                await self._deliver_or_reset(data)

    async def _deliver_or_reset(self, data: bytes) -> None:
        try:
            await self._deliver(data)
        except _ResetFault:
            self._failure = ConnectionResetError("reset by fault proxy")
            self._eof_written.set()  # a dead link will never half-close
            await self._conn.reset()
            raise self._failure from None
        except _StallFault:
            self._stalled = True
            self._eof_written.set()
            raise
        except OSError as exc:
            self._failure = exc
            self._eof_written.set()
            raise

    async def _deliver(self, data: bytes) -> None:
        self._fire_due()
        pos = 0
        while pos < len(data):
            piece = self._maybe_corrupt(data[pos : pos + self._piece_size(len(data) - pos)])
            await self._pace(len(piece))
            await self._write(piece)
            pos += len(piece)
            self._fire_due()

    def _piece_size(self, available: int) -> int:
        # Cut exactly at reset/stall offsets so "after N bytes" means N bytes.
        size = min(available, self._slice)
        stall_at = self._stall.after_bytes if self._stall else None
        for limit in (self._reset_at, stall_at):
            if limit is not None and limit > self.sent:
                size = min(size, limit - self.sent)
        return size

    def _fire_due(self) -> None:
        if self._reset_at is not None and self.sent >= self._reset_at:
            self._log("reset", self.sent)
            raise _ResetFault()
        if self._stall is not None and self.sent >= self._stall.after_bytes:
            self._log("stall", self.sent)
            raise _StallFault()

    def _maybe_corrupt(self, piece: bytes) -> bytes:
        rule = self._corrupt
        if rule is None:
            return piece
        start = self.sent
        if rule.tls:
            index = self._scanner.find(piece, start, rule.after_bytes)
        elif start <= rule.after_bytes < start + len(piece):
            index = rule.after_bytes - start
        else:
            index = None
        if index is None:
            return piece
        self._corrupt = None  # one byte per connection and direction
        self._log("corrupt", start + index)
        flipped = bytearray(piece)
        flipped[index] ^= rule.mask
        return bytes(flipped)

    async def _pace(self, size: int) -> None:
        """Token bucket in its virtual-scheduling form: each byte has a send slot 1/rate apart.
        Idle time earns at most 50 ms of credit; a late wake-up is caught up from it, which
        keeps the average rate exact despite timer jitter."""
        if self._rate is None:
            return
        now = time.monotonic()
        slot = now if self._next_slot is None else max(self._next_slot, now - 0.05)
        self._next_slot = slot + size / self._rate
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _write(self, piece: bytes) -> None:
        if self.dest is None:
            raise ConnectionResetError("no connection to deliver to")
        await self.dest.send(piece)
        self.sent += len(piece)
        self._conn.stats.add_bytes(self.direction, len(piece))

    def _write_eof(self) -> None:
        if self.dest is not None:
            self.dest.shutdown_write()
        self._eof_written.set()

    def _log(self, kind: FaultKind, offset: int | None) -> None:
        self._conn.stats.fault(FaultEvent(kind, self._conn.index, self.direction, offset))


class _Conn:
    """One accepted client connection, (once connected) its upstream, and the tasks serving
    it, which a reset or close must wake: a task blocked on a closed socket never would."""

    def __init__(self, index: int, client: _Socket, stats: _Stats) -> None:
        self.index = index
        self.client = client
        self.upstream: _Socket | None = None
        self.stats = stats
        self.tasks: set[asyncio.Task[None]] = set()

    def sockets(self) -> list[_Socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    async def reset(self) -> None:
        """RST both sides, after what was already forwarded has reached the peers."""
        await self._flushed()
        self._stop_other_tasks()
        for sock in self.sockets():
            sock.close(rst=True)

    async def aclose(self) -> None:
        """Close both sides once what was forwarded has reached the peers: a close with
        unread bytes is an RST, and an RST discards what is still in our send queue (the
        kernel may hold a small last write — e.g. a TLS alert — back for a moment)."""
        await self._flushed()
        self.close()

    def close(self) -> None:
        self._stop_other_tasks()
        for sock in self.sockets():
            sock.close()

    async def hold(self, source: _Socket, discard: bool) -> None:
        """Keep a stalled connection open until a peer leaves (or the task is cancelled)."""
        if discard:
            with contextlib.suppress(OSError):
                while await source.recv():
                    pass  # the black hole: read and drop until the sender closes
            return
        while not any(sock.peer_gone() for sock in self.sockets()):
            await asyncio.sleep(0.25)

    async def _flushed(self) -> None:
        for sock in self.sockets():
            await sock.flushed()

    def _stop_other_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


# ---------------------------------------------------------------------------------------------
# Raw TCP mode
# ---------------------------------------------------------------------------------------------


async def _pump(conn: _Conn, source: _Socket, link: _Link) -> None:
    """Copy `source` into `link` until EOF, a fault, or an error on either side."""
    try:
        await link.open()
        while True:
            try:
                data = await source.recv()
            except OSError:
                await conn.reset()  # the sender reset us: pass the RST on
                return
            if not data:
                await link.finish()  # the sender half-closed: pass the FIN on
                return
            await link.send(data)
    except _StallFault:
        await conn.hold(source, link.stall_discards)
        await conn.aclose()
    except OSError:
        pass  # the receiver is gone (or we reset it); the other pump sees that too


# ---------------------------------------------------------------------------------------------
# HTTP mode
# ---------------------------------------------------------------------------------------------


class _Body(NamedTuple):
    kind: Literal["length", "chunked", "eof"]
    length: int = 0


@dataclass
class _Head:
    start_line: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise _BadMessage(f"bad header line {line!r}")
            headers.append((name.strip(), value.strip()))
        return cls(lines[0], headers)

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in (self.get(name) or "").split(",") if t.strip()}

    def without(self, name: str) -> _Head:
        return _Head(self.start_line, [(k, v) for k, v in self.headers if k.lower() != name])

    def encode(self) -> bytes:
        lines = [self.start_line, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def keep_alive(self, version: str) -> bool:
        connection = self.tokens("connection")
        if version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def body(self) -> _Body | None:
        """Framing from Transfer-Encoding / Content-Length; None when neither is present."""
        te = self.get("transfer-encoding")
        if te and te.split(",")[-1].strip().lower() == "chunked":
            return _Body("chunked")
        length = self.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _BadMessage(f"bad Content-Length {length!r}")
            return _Body("length", int(length))
        return None


@dataclass
class _Request:
    head: _Head
    method: str
    path: str
    query: str
    version: str

    @classmethod
    def parse(cls, raw: bytes) -> _Request:
        head = _Head.parse(raw)
        parts = head.start_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadMessage(f"bad request line {head.start_line!r}")
        method, target, version = parts
        split = urlsplit(target)  # handles origin-form and absolute-form alike
        return cls(head, method, split.path or target, split.query, version)

    @property
    def body(self) -> _Body:
        return self.head.body() or _Body("length", 0)

    @property
    def expects_continue(self) -> bool:
        return "100-continue" in self.head.tokens("expect")


@dataclass
class _Response:
    head: _Head
    status: int
    version: str
    body: _Body

    @classmethod
    def parse(cls, raw: bytes, request_method: str) -> _Response:
        head = _Head.parse(raw)
        parts = head.start_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise _BadMessage(f"bad status line {head.start_line!r}")
        status = int(parts[1])
        bodiless = request_method == "HEAD" or status < 200 or status in (204, 304)
        body = _Body("length", 0) if bodiless else head.body() or _Body("eof")
        return cls(head, status, parts[0], body)

    @property
    def keep_alive(self) -> bool:
        return self.body.kind != "eof" and self.head.keep_alive(self.version)


async def _read_head(reader: _Socket) -> bytes | None:
    """One message head; None on a clean EOF before its first byte."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except _Truncated as exc:
        if not exc.partial.strip():
            return None
        raise


async def _exactly(reader: _Socket, length: int) -> AsyncIterator[bytes]:
    remaining = length
    while remaining:
        data = await reader.recv(min(_CHUNK, remaining))
        if not data:
            raise _Truncated(b"")
        remaining -= len(data)
        yield data


async def _body_chunks(reader: _Socket, body: _Body) -> AsyncIterator[tuple[bytes, bytes]]:
    """Stream a message body as (wire bytes, payload bytes) pairs: the wire bytes are
    forwarded verbatim, the payload (de-chunked) is what gets hashed and counted."""
    if body.kind == "length":
        async for data in _exactly(reader, body.length):
            yield data, data
    elif body.kind == "eof":
        while data := await reader.recv():
            yield data, data
    else:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise _BadMessage(f"bad chunk size line {size_line!r}") from exc
            if size == 0:
                trailer = size_line
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    trailer += line
                yield trailer + b"\r\n", b""
                return
            yield size_line, b""
            async for data in _exactly(reader, size):
                yield data, data
            yield await reader.readexactly(2), b""


def _format_retry_after(value: float | dt.datetime | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return email.utils.format_datetime(moment.astimezone(dt.timezone.utc), usegmt=True)
    return str(round(value))


def _synthetic_response(status: int, headers: Mapping[str, str], body: bytes) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    all_headers = {"Content-Length": str(len(body)), "Connection": "close", **headers}
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in all_headers.items())]
    return ("\r\n".join([*lines, "", ""])).encode("latin-1") + body


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _HttpSession:
    """Serves one client connection in HTTP mode: requests one at a time (no pipelining).

    The upstream connection is opened lazily, so requests answered by the proxy never reach
    the server, and it is reopened when the server closed it while idle. Expect:
    100-continue is answered by the proxy itself and stripped before forwarding.
    """

    def __init__(
        self,
        proxy: _ProxyServer,
        conn: _Conn,
        up: _Link,
        down: _Link,
    ) -> None:
        self._proxy = proxy
        self._conn = conn
        self._client = conn.client
        self._upstream: _Socket | None = None
        self._up = up
        self._down = down

    async def run(self) -> None:
        try:
            await self._up.open()
            await self._down.open()
            while (request := await self._next_request()) is not None:
                if not await self._serve(request):
                    break
            await self._down.finish()  # deliver what a latency queue still holds
        except _StallFault:
            discard = self._up.stall_discards or self._down.stall_discards
            await self._conn.hold(self._client, discard)
        except (_BadMessage, OSError) as exc:
            log.debug("connection %d: %s", self._conn.index, exc)

    async def _next_request(self) -> _Request | None:
        head_task = asyncio.ensure_future(_read_head(self._client))
        if self._upstream is not None:
            # While idle, notice the server closing its keep-alive connection, so the next
            # request goes over a fresh one instead of failing.
            idle_task = asyncio.ensure_future(self._upstream.recv(1))
            try:
                await asyncio.wait({head_task, idle_task}, return_when=asyncio.FIRST_COMPLETED)
                if not idle_task.done():
                    idle_task.cancel()
                    await asyncio.wait({idle_task})  # let the cancelled recv unregister
                elif not idle_task.cancelled():
                    idle_task.exception()  # EOF, an error or unsolicited bytes: all "gone"
                    self._drop_upstream()
            except asyncio.CancelledError:
                head_task.cancel()
                idle_task.cancel()
                raise
        raw = await head_task
        return None if raw is None else _Request.parse(raw)

    async def _serve(self, request: _Request) -> bool:
        """Handle one request; whether the connection stays open for the next one."""
        rule = self._proxy.rules.for_request(request.method, request.path, request.query)
        if isinstance(rule, HttpDrop):
            await self._drop(request, rule)
            return False
        if isinstance(rule, HttpRespond):
            await self._respond(request, rule)
            return False
        return await self._forward_and_relay(request)

    async def _forward_and_relay(self, request: _Request) -> bool:
        response, body_bytes = await self._forward(request)
        if response is None or self._upstream is None:
            self._record(request, "forwarded", 502, None, body_bytes)
            await self._down.send(_synthetic_response(502, {}, b""))
            return False
        # Recorded before relaying, so whatever the client saw is already in the stats.
        self._record(request, "forwarded", response.status, response.status, body_bytes)
        await self._down.send(response.head.encode())
        async for wire, _ in _body_chunks(self._upstream, response.body):
            await self._down.send(wire)
        return request.head.keep_alive(request.version) and response.keep_alive

    async def _respond(self, request: _Request, rule: HttpRespond) -> None:
        upstream_status: int | None = None
        if rule.forward:
            response, body_bytes = await self._forward(request)
            if response is not None and self._upstream is not None:
                upstream_status = response.status
                async for _ in _body_chunks(self._upstream, response.body):
                    pass  # the real reply is replaced by ours
        else:
            body_bytes, _ = await self._swallow_body(request)
        headers = dict(rule.headers)
        if rule.retry_after is not None:
            headers.setdefault("Retry-After", _format_retry_after(rule.retry_after))
        body = rule.body.encode() if isinstance(rule.body, str) else rule.body
        if body:
            headers.setdefault("Content-Type", rule.content_type)
        self._proxy.stats.fault(FaultEvent("respond", self._conn.index))
        self._record(request, "respond", rule.status, upstream_status, body_bytes)
        await self._down.send(_synthetic_response(rule.status, headers, body))

    async def _drop(self, request: _Request, rule: HttpDrop) -> None:
        body_bytes, md5 = await self._swallow_body(request)
        etag = rule.etag if rule.etag is not None else f'"{md5}"'
        self._proxy.stats.fault(FaultEvent("drop", self._conn.index))
        self._record(request, "drop", rule.status, None, body_bytes)
        await self._down.send(_synthetic_response(rule.status, {"ETag": etag}, b""))

    async def _swallow_body(self, request: _Request) -> tuple[int, str]:
        """Read a request body we answer ourselves; returns (length, MD5 hex)."""
        if request.expects_continue:
            await self._down.send(_CONTINUE)
        md5 = hashlib.md5(usedforsecurity=False)
        count = 0
        async for _, data in _body_chunks(self._client, request.body):
            md5.update(data)
            count += len(data)
        return count, md5.hexdigest()

    async def _forward(self, request: _Request) -> tuple[_Response | None, int]:
        """Send the request upstream; returns the final response head (None if the server
        could not be reached or answered garbage) and the request body length."""
        if self._upstream is None and not await self._connect_upstream():
            count, _ = await self._swallow_body(request)
            return None, count
        if request.expects_continue:
            await self._down.send(_CONTINUE)
        await self._up.send(request.head.without("expect").encode())
        count = 0
        chunks = _body_chunks(self._client, request.body)
        async for wire, data in chunks:
            count += len(data)
            try:
                await self._up.send(wire)
            except OSError:
                # The server stopped reading (maybe it answered early): drain the client so
                # it can read that answer.
                async for _, rest in chunks:
                    count += len(rest)
                break
        return await self._read_response(request), count

    async def _read_response(self, request: _Request) -> _Response | None:
        assert self._upstream is not None
        try:
            while (raw := await _read_head(self._upstream)) is not None:
                response = _Response.parse(raw, request.method)
                if response.status >= 200 or response.status == 101:
                    return response
                # 1xx: the proxy already sent 100 Continue itself; drop the interim reply.
        except (_BadMessage, OSError) as exc:
            log.debug("connection %d: bad upstream response: %s", self._conn.index, exc)
        self._drop_upstream()
        return None

    async def _connect_upstream(self) -> bool:
        upstream = await self._proxy.connect_upstream()
        if upstream is None:
            return False
        self._upstream = self._conn.upstream = self._up.dest = upstream
        return True

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        self._upstream = self._conn.upstream = self._up.dest = None

    def _record(
        self,
        request: _Request,
        action: Literal["forwarded", "respond", "drop"],
        status: int,
        upstream_status: int | None,
        body_bytes: int,
    ) -> None:
        self._proxy.stats.request(
            HttpExchange(
                connection=self._conn.index,
                method=request.method,
                path=request.path,
                query=request.query,
                action=action,
                status=status,
                upstream_status=upstream_status,
                body_bytes=body_bytes,
            )
        )


# ---------------------------------------------------------------------------------------------
# The server (runs in whichever event loop started it)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    target_host: str
    target_port: int
    listen_host: str
    listen_port: int
    http: bool
    connect_timeout: float


def _close_socket(sock: socket.socket, _: object) -> None:
    sock.close()  # idempotent


class _ProxyServer:
    def __init__(self, config: _Config, rules: _RuleBook, stats: _Stats) -> None:
        self.config = config
        self.rules = rules
        self.stats = stats
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        listener = socket.create_server((self.config.listen_host, self.config.listen_port))
        listener.setblocking(False)
        # Accept in a reader callback, not a task awaiting sock_accept: cancelling such a
        # task can lose a socket it already accepted, leaving that client hanging.
        asyncio.get_running_loop().add_reader(listener, self._accept_ready, listener)
        self._listener = listener
        return int(listener.getsockname()[1])

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()  # the kernel resets connections still in its backlog
            self._listener = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def connect_upstream(self) -> _Socket | None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.target_host else socket.AF_INET)
        sock.setblocking(False)
        try:
            target = (self.config.target_host, self.config.target_port)
            await asyncio.wait_for(loop.sock_connect(sock, target), self.config.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            sock.close()
            log.debug("upstream connect failed: %s", exc)
            self.stats.upstream_error()
            return None
        return _Socket(sock)

    def _accept_ready(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: log, keep listening
                log.warning("accept failed: %s", exc)
                return
            task = asyncio.ensure_future(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # A task cancelled before it first runs skips its `finally`: close the socket here.
            task.add_done_callback(functools.partial(_close_socket, sock))

    async def _serve(self, sock: socket.socket) -> None:
        conn = _Conn(self.stats.accepted(), _Socket(sock), self.stats)
        rules = self.rules.for_connection()
        up, down = _Link(conn, Direction.UP, rules), _Link(conn, Direction.DOWN, rules)
        down.dest = conn.client
        try:
            if self.config.http:
                task = asyncio.current_task()
                assert task is not None
                conn.tasks.add(task)
                await _HttpSession(self, conn, up, down).run()
            else:
                await self._serve_raw(conn, up, down)
            await conn.aclose()
        except asyncio.CancelledError:
            pass  # the proxy is stopping, or a fault reset the connection: close below
        except Exception:  # a test helper must not die silently on one bad connection
            log.exception("connection %d failed", conn.index)
        finally:
            up.close()
            down.close()
            conn.close()
            self.stats.closed()

    async def _serve_raw(self, conn: _Conn, up: _Link, down: _Link) -> None:
        upstream = await self.connect_upstream()
        if upstream is None:
            conn.client.close(rst=True)  # as close to "connection refused" as TCP allows
            return
        conn.upstream = up.dest = upstream
        pumps = [
            asyncio.ensure_future(_pump(conn, conn.client, up)),
            asyncio.ensure_future(_pump(conn, upstream, down)),
        ]
        conn.tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


class FaultProxy(Server):
    """A fault-injecting proxy on `host` (127.0.0.1) forwarding to (target_host, target_port).

    ``http=True`` parses HTTP/1.1 on the client side (needed for HTTP rules and for the
    request log); otherwise bytes are relayed untouched (TLS passthrough works).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        rules: Iterable[Rule] = (),
        *,
        http: bool = False,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._config = _Config(target_host, target_port, host, port, http, connect_timeout)
        self._rules = _RuleBook(seed)
        self._stats = _Stats()
        self._server = _ProxyServer(self._config, self._rules, self._stats)
        self.set_rules(rules)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._config.listen_host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not running")
        return self._port

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    # -- rules and counters (callable from any thread) ---------------------------------------

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules (and restart their selection counts). Link rules apply to
        connections accepted afterwards; HTTP rules to requests read afterwards."""
        rules = list(rules)
        if not self._config.http and any(isinstance(r, HttpRespond | HttpDrop) for r in rules):
            raise ValueError("HTTP rules need FaultProxy(..., http=True)")
        self._rules.replace(rules)

    def clear_rules(self) -> None:
        self._rules.replace([])

    def stats(self) -> ProxyStats:
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.clear()

    def wait_for(
        self, predicate: Callable[[ProxyStats], bool], timeout: float = 10.0
    ) -> ProxyStats:
        """Poll the counters until `predicate` holds (connections finish asynchronously).
        Blocks: call it from a test thread, not from the loop the proxy runs in."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s: {stats}")
            time.sleep(0.01)

    # -- background thread -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._thread_main(ready, errors)),
            name=f"FaultProxy->{self._config.target_port}",
            daemon=True,  # never keep pytest alive if a test forgot to stop it
        )
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Close the listener and every connection, then end the thread. Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or stop_event is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("FaultProxy thread did not stop")
        self._thread = self._loop = self._stop_event = None
        self._port = None

    async def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        try:
            self._port = await self._server.start()
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
        except BaseException as exc:  # re-raised by start() in the caller's thread
            errors.append(exc)
            return
        finally:
            ready.set()
        await self._stop_event.wait()
        await self._server.close()

    # -- in the caller's event loop ----------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        self._port = await self._server.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._server.close()
        self._port = None
