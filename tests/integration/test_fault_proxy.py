"""The fault proxy against small real servers on loopback (plain TCP, TLS, aiohttp HTTP).

Timing assertions are one-sided or carry wide tolerances: the suite runs on 2 shared cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import hashlib
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import requests
import trustme
from aiohttp import web

from tests.servers.fault_proxy import (
    Corrupt,
    Direction,
    FaultProxy,
    HttpDrop,
    HttpRespond,
    MiB,
    ProxyStats,
    Reset,
    Rule,
    Stall,
    Throttle,
)

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LOCAL = "127.0.0.1"


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Small servers for the proxy to front, on an event loop in a daemon thread
# ---------------------------------------------------------------------------------------------


class ServerLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tcp(self, handler: Handler) -> int:
        server = self.call(asyncio.start_server(handler, LOCAL, 0))

        async def close() -> None:
            server.close()

        self._closers.append(close)
        return int(server.sockets[0].getsockname()[1])

    def close(self) -> None:
        for closer in self._closers:
            self.call(closer())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@dataclass
class Received:
    """What one connection delivered to a Sink."""

    count: int = 0
    data: bytearray = field(default_factory=bytearray)
    digest: Any = field(default_factory=hashlib.md5)
    first_at: float | None = None
    last_at: float | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Sink:
    """Reads each connection to EOF (or error), recording count, digest and timing."""

    def __init__(self, keep: bool = False) -> None:
        self.conns: list[Received] = []
        self._keep = keep
        self._lock = threading.Lock()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec = Received()
        with self._lock:
            self.conns.append(rec)
        try:
            while data := await reader.read(64 * 1024):
                rec.last_at = time.monotonic()
                rec.first_at = rec.first_at or rec.last_at
                rec.count += len(data)
                rec.digest.update(data)
                if self._keep:
                    rec.data += data
        except OSError as exc:
            rec.error = exc
        finally:
            writer.close()
            rec.done.set()

    def conn(self, n: int = 1, timeout: float = 10.0) -> Received:
        """The n-th connection (1-based), once it has ended."""
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            assert time.monotonic() < deadline, f"sink saw {len(self.conns)} connections"
            time.sleep(0.01)
        assert self.conns[n - 1].done.wait(max(0.0, deadline - time.monotonic()))
        return self.conns[n - 1]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def source(data: bytes) -> Handler:
    """A server that sends `data` and then waits for the client to close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(data)
            await writer.drain()
            await reader.read()
        except OSError:
            pass
        finally:
            writer.close()

    return handle


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((LOCAL, port), timeout=timeout)


def recv_all(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(1 << 20, size - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until(sock: socket.socket, suffix: bytes) -> bytes:
    data = b""
    while not data.endswith(suffix):
        chunk = sock.recv(4096)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------
# Raw TCP faults
# ---------------------------------------------------------------------------------------------


def test_passthrough_20mib_both_directions_intact(servers: ServerLoop) -> None:
    data = payload(20 * MiB)
    with FaultProxy(LOCAL, servers.tcp(echo)) as proxy, connect(proxy.port) as sock:
        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)  # concurrently, or both sides' buffers fill up
        sender.start()
        echoed = recv_all(sock, len(data) + 1)  # +1: must end exactly at EOF
        sender.join(10)
        assert md5(echoed) == md5(data)
        stats = proxy.wait_for(lambda s: s.active == 0)
    assert (stats.connections, stats.bytes_up, stats.bytes_down) == (1, 20 * MiB, 20 * MiB)
    assert stats.fault_log == ()


@pytest.mark.parametrize("after", [0, 1 * MiB + 123])
def test_reset_upload_after_n_bytes(servers: ServerLoop, after: int) -> None:
    sink = Sink()
    rules = [Reset(after_bytes=after)]
    with FaultProxy(LOCAL, servers.tcp(sink.handle), rules) as proxy:
        # More than all socket buffers on the path can absorb, so the client must notice
        # (with after=0 maybe as early as in connect()).
        with pytest.raises((ConnectionResetError, BrokenPipeError)), connect(proxy.port) as sock:
            sock.sendall(bytes(48 * MiB))
            sock.recv(1)
        received = sink.conn()
        assert [(e.kind, e.offset) for e in proxy.stats().fault_log] == [("reset", after)]
    assert received.count == after  # forwarded bytes were flushed before the RST
    assert isinstance(received.error, ConnectionResetError)  # the server side got an RST too


def test_reset_download_after_n_bytes(servers: ServerLoop) -> None:
    after = 3 * MiB + 7
    data = payload(8 * MiB)
    rules = [Reset(after_bytes=after, direction=Direction.DOWN)]
    with FaultProxy(LOCAL, servers.tcp(source(data)), rules) as proxy, connect(proxy.port) as s:
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += chunk
    assert bytes(got) == data[:after]


def test_corrupt_plain_stream_flips_exactly_one_byte(servers: ServerLoop) -> None:
    sink = Sink(keep=True)
    data = payload(64 * 1024)
    rules = [Corrupt(after_bytes=1000, tls=False)]
    with FaultProxy(LOCAL, servers.tcp(sink.handle), rules) as proxy:
        with connect(proxy.port) as sock:
            sock.sendall(data)
        received = bytes(sink.conn().data)
    diff = [i for i in range(len(data)) if data[i] != received[i]]
    assert len(received) == len(data)
    assert diff == [1000]
    assert received[1000] == data[1000] ^ 0xFF


# ---------------------------------------------------------------------------------------------
# TLS corruption: the receiving TLS stack rejects the record's MAC
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOCAL).configure_cert(server_ctx)
    return server_ctx, ca


@dataclass
class TlsOutcome:
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def linger(sock: socket.socket) -> None:
    """Read and drop until the peer closes, as well-behaved servers do before closing: a close
    with unread bytes is an RST, which can discard the TLS alert just written."""
    with socket.socket(fileno=os.dup(sock.fileno())) as plain, contextlib.suppress(OSError):
        plain.settimeout(15)
        while plain.recv(1 << 16):
            pass


def tls_server(server_ctx: ssl.SSLContext, send: bytes) -> tuple[int, TlsOutcome]:
    """One-connection TLS server: sends `send` (may be empty), then reads until it fails."""
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(15)
    outcome = TlsOutcome()

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(15)
            with server_ctx.wrap_socket(raw, server_side=True) as conn:
                try:
                    conn.sendall(send)
                    while conn.recv(1 << 16):
                        pass
                except (OSError, ssl.SSLError) as exc:
                    outcome.error = exc
                outcome.done.set()
                linger(conn)
        finally:
            listener.close()
            outcome.done.set()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], outcome


def reason(exc: BaseException | None) -> str | None:
    return getattr(exc, "reason", None) or (type(exc).__name__ if exc else None)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(
    ("direction", "client_sees", "server_sees"),
    [
        # Upload bytes corrupted: the server fails the MAC and alerts; the client reads the
        # alert — the error the original system saw.
        (Direction.UP, "SSLV3_ALERT_BAD_RECORD_MAC", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"),
        # Download bytes corrupted: the client fails the MAC itself and alerts the server.
        (Direction.DOWN, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "SSLV3_ALERT_BAD_RECORD_MAC"),
    ],
)
def test_tls_corruption_gives_bad_record_mac(
    tls: tuple[ssl.SSLContext, trustme.CA],
    version: ssl.TLSVersion,
    direction: Direction,
    client_sees: str,
    server_sees: str,
) -> None:
    server_ctx, ca = tls
    data = payload(160 * 1024)  # the part after the flip fits the socket buffers
    port, outcome = tls_server(server_ctx, data if direction is Direction.DOWN else b"")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.minimum_version = client_ctx.maximum_version = version
    rules = [Corrupt(after_bytes=100 * 1024, direction=direction)]
    with FaultProxy(LOCAL, port, rules) as proxy:
        with (
            connect(proxy.port, timeout=15) as raw,
            client_ctx.wrap_socket(raw, server_hostname=LOCAL) as conn,
        ):
            with pytest.raises(ssl.SSLError) as client_error:
                if direction is Direction.UP:
                    conn.sendall(data)
                while conn.recv(1 << 16):
                    pass
            assert outcome.done.wait(15)  # linger too, until the server has our alert
        [event] = proxy.stats().fault_log
    assert client_error.value.reason == client_sees, client_error.value
    assert reason(outcome.error) == server_sees, outcome.error
    assert event.kind == "corrupt"
    assert event.direction is direction
    assert event.offset is not None and event.offset >= 100 * 1024


# ---------------------------------------------------------------------------------------------
# Stall
# ---------------------------------------------------------------------------------------------


def test_stall_dead_link_blocks_the_sender(servers: ServerLoop) -> None:
    sink = Sink()
    proxy = FaultProxy(LOCAL, servers.tcp(sink.handle), [Stall(after_bytes=256 * 1024)])
    with proxy, connect(proxy.port, timeout=1.0) as sock:
        with pytest.raises(TimeoutError):  # writes block once the buffers are full
            sock.sendall(bytes(64 * MiB))
        time.sleep(0.5)
        assert sink.conns[0].count == 256 * 1024  # and not one byte more
        assert proxy.stats().faults["stall"] == 1
        started = time.monotonic()
    # Leaving the `with` stopped the proxy with a stalled connection still open.
    assert time.monotonic() - started < 5
    assert sink.conn().count == 256 * 1024


def test_stall_black_hole_swallows_and_ends_when_client_leaves(servers: ServerLoop) -> None:
    sink = Sink()
    rules = [Stall(after_bytes=256 * 1024, discard=True)]
    with FaultProxy(LOCAL, servers.tcp(sink.handle), rules) as proxy:
        with connect(proxy.port, timeout=1.0) as sock:
            sock.sendall(bytes(8 * MiB))  # accepted: the proxy reads and drops
            with pytest.raises(TimeoutError):
                sock.recv(1)
            assert sink.conns[0].count == 256 * 1024
        stats = proxy.wait_for(lambda s: s.active == 0)
        assert sink.conn().count == 256 * 1024
    assert stats.bytes_up == 256 * 1024


# ---------------------------------------------------------------------------------------------
# Bandwidth and latency
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "direction"),
    [
        (1 * MiB, Direction.UP),
        (10 * MiB, Direction.UP),
        (50 * MiB, Direction.UP),
        (5 * MiB, Direction.DOWN),
    ],
)
def test_bandwidth_cap_is_accurate(servers: ServerLoop, rate: int, direction: Direction) -> None:
    size = int(rate * 1.5)  # about 1.5 s per case
    sink = Sink()
    target = servers.tcp(sink.handle if direction is Direction.UP else source(bytes(size)))
    rules = [Throttle(bytes_per_sec=rate, direction=direction)]
    with FaultProxy(LOCAL, target, rules) as proxy, connect(proxy.port) as sock:
        started = time.monotonic()
        if direction is Direction.UP:
            sock.sendall(bytes(size))
            sock.shutdown(socket.SHUT_WR)
            finished = sink.conn(timeout=30).last_at
            assert finished is not None
        else:
            assert len(recv_all(sock, size)) == size
            finished = time.monotonic()
    measured = size / (finished - started)
    # Under load the rate can only fall short; it must never exceed the cap by > 10 %.
    assert 0.85 * rate <= measured <= 1.10 * rate, f"{measured / MiB:.2f} MiB/s"


def rtt(port: int) -> float:
    with connect(port) as sock:
        sock.sendall(b"x")  # warm-up: handshake and task start-up are not the link's latency
        assert sock.recv(1) == b"x"
        started = time.monotonic()
        sock.sendall(b"y")
        assert sock.recv(1) == b"y"
        return time.monotonic() - started


def test_latency_adds_delay_not_serialisation(servers: ServerLoop) -> None:
    with FaultProxy(LOCAL, servers.tcp(echo)) as proxy:
        baseline = rtt(proxy.port)
        proxy.set_rules([Throttle(latency_ms=150, direction=Direction.BOTH)])
        delayed = rtt(proxy.port)
    assert baseline < 0.1
    assert 0.3 <= delayed < 0.3 + 0.25  # 150 ms each way

    # A bulk transfer pays the latency once, not once per chunk (that would be ~20 s here).
    sink = Sink()
    rules = [Throttle(latency_ms=150)]
    with FaultProxy(LOCAL, servers.tcp(sink.handle), rules) as proxy, connect(proxy.port) as s:
        started = time.monotonic()
        s.sendall(bytes(8 * MiB))
        s.shutdown(socket.SHUT_WR)
        received = sink.conn()
    assert received.count == 8 * MiB
    assert received.first_at is not None and received.last_at is not None
    assert received.first_at - started >= 0.15
    assert received.last_at - started < 2.0


# ---------------------------------------------------------------------------------------------
# Which connections a rule hits
# ---------------------------------------------------------------------------------------------


def reset_pattern(proxy: FaultProxy, connections: int) -> list[int]:
    """Open connections one by one; the 1-based numbers of those the client saw reset."""
    hit = []
    for n in range(1, connections + 1):
        try:
            # An RST right after accept can even beat connect() back to the caller.
            with connect(proxy.port, timeout=5) as sock:
                sock.sendall(b"ping")
                if recv_all(sock, 4) != b"ping":
                    hit.append(n)
        except OSError:
            hit.append(n)
    return hit


@pytest.mark.parametrize(
    ("rule", "connections", "expected"),
    [
        (Reset(), 3, [1, 2, 3]),
        (Reset(first=2), 6, [1, 2]),
        (Reset(every=3), 9, [3, 6, 9]),
        (Reset(nth=4), 6, [4]),
        (Reset(first=4, every=2), 8, [2, 4]),
    ],
)
def test_selection(servers: ServerLoop, rule: Rule, connections: int, expected: list[int]) -> None:
    with FaultProxy(LOCAL, servers.tcp(echo), [rule]) as proxy:
        assert reset_pattern(proxy, connections) == expected
        assert proxy.stats().faulted_connections("reset") == expected


def test_probability_is_reproducible_per_seed(servers: ServerLoop) -> None:
    port = servers.tcp(echo)

    def pattern(seed: int) -> list[int]:
        with FaultProxy(LOCAL, port, [Reset(probability=0.5)], seed=seed) as proxy:
            hit = reset_pattern(proxy, 30)
            assert proxy.stats().faulted_connections("reset") == hit
            return hit

    first = pattern(7)
    assert pattern(7) == first
    assert pattern(8) != first  # equal by chance with probability 2**-30
    assert 5 <= len(first) <= 25


def test_set_rules_at_runtime_restarts_counting(servers: ServerLoop) -> None:
    with FaultProxy(LOCAL, servers.tcp(echo), [Reset(first=1)]) as proxy:
        assert reset_pattern(proxy, 2) == [1]
        proxy.set_rules([Reset(first=1)])
        assert reset_pattern(proxy, 2) == [1]  # connection 3 overall
        proxy.clear_rules()
        assert reset_pattern(proxy, 2) == []
        assert proxy.stats().faulted_connections("reset") == [1, 3]


def test_unreachable_target_resets_the_client() -> None:
    with socket.create_server((LOCAL, 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with FaultProxy(LOCAL, dead_port) as proxy:
        with pytest.raises(ConnectionResetError), connect(proxy.port) as sock:
            sock.sendall(b"hello")  # the RST may come as early as connect()
            sock.recv(1)
        proxy.wait_for(lambda s: s.upstream_errors == 1 and s.active == 0)


def test_runs_in_the_callers_event_loop(servers: ServerLoop) -> None:
    port = servers.tcp(echo)

    async def main() -> ProxyStats:
        async with FaultProxy(LOCAL, port) as proxy:
            reader, writer = await asyncio.open_connection(LOCAL, proxy.port)
            writer.write(b"hello")
            await writer.drain()
            assert await reader.readexactly(5) == b"hello"
            writer.close()
            return proxy.stats()

    assert asyncio.run(main()).bytes_down == 5


# ---------------------------------------------------------------------------------------------
# HTTP mode
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    body_md5: str
    body_len: int


class Backend:
    """An aiohttp server that records each request and answers 200 with the body's MD5."""

    def __init__(self, servers: ServerLoop) -> None:
        self.seen: list[Seen] = []
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.port = servers.call(self._start(app))

    async def _start(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, LOCAL, 0).start()
        return int(runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        digest = md5(body)
        self.seen.append(Seen(request.method, request.path, request.query_string, digest, len(body)))
        return web.Response(text=f"{request.method} {digest}", headers={"ETag": f'"{digest}"'})


@pytest.fixture
def backend(servers: ServerLoop) -> Backend:
    return Backend(servers)


def test_http_503_with_retry_after_for_a_matched_request(backend: Backend) -> None:
    rule = HttpRespond(method="PUT", query="partNumber=", status=503, retry_after=7, body="slow")
    with FaultProxy(LOCAL, backend.port, [rule], http=True) as proxy, requests.Session() as s:
        part = s.put(f"{proxy.url()}/bucket/key?partNumber=1&uploadId=u1", data=b"p" * 1000)
        other = s.get(f"{proxy.url()}/bucket/key?uploads")
        stats = proxy.stats()
    assert (part.status_code, part.headers["Retry-After"], part.text) == (503, "7", "slow")
    assert part.headers["Connection"] == "close"
    assert other.status_code == 200 and other.text.startswith("GET ")
    assert [(x.method, x.query) for x in backend.seen] == [("GET", "uploads")]  # no PUT
    assert [(r.method, r.path, r.query, r.action, r.status, r.body_bytes) for r in stats.requests] == [
        ("PUT", "/bucket/key", "partNumber=1&uploadId=u1", "respond", 503, 1000),
        ("GET", "/bucket/key", "uploads", "forwarded", 200, 0),
    ]
    assert stats.faults["respond"] == 1


def test_http_retry_after_as_http_date(backend: Backend) -> None:
    when = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    rule = HttpRespond(status=429, retry_after=when)
    with FaultProxy(LOCAL, backend.port, [rule], http=True) as proxy:
        reply = requests.get(f"{proxy.url()}/x", timeout=10)
    assert reply.status_code == 429
    assert reply.headers["Retry-After"] == "Thu, 02 Jan 2031 03:04:05 GMT"
    assert email.utils.parsedate_to_datetime(reply.headers["Retry-After"]) == when


def test_http_unmatched_requests_pass_through_on_one_keep_alive_connection(
    backend: Backend,
) -> None:
    body = payload(1 * MiB, seed=3)
    chunked_parts = [b"alpha", b"", b"beta" * 1000, b"gamma"]
    rule = HttpRespond(method="DELETE")  # present but never matched
    with FaultProxy(LOCAL, backend.port, [rule], http=True) as proxy, requests.Session() as s:
        url = proxy.url()
        replies = [
            s.get(f"{url}/a?x=1"),
            s.put(f"{url}/b", data=body),
            s.head(f"{url}/c"),  # a bodiless reply with a Content-Length must not desync
            s.post(f"{url}/d", data=iter(chunked_parts)),  # chunked request body
            s.get(f"{url}/e"),
        ]
        stats = proxy.stats()
    assert [r.status_code for r in replies] == [200] * 5
    assert replies[1].text == f"PUT {md5(body)}"
    assert replies[1].headers["ETag"] == f'"{md5(body)}"'
    assert replies[3].text == f"POST {md5(b''.join(chunked_parts))}"
    assert [(x.method, x.path, x.query) for x in backend.seen] == [
        ("GET", "/a", "x=1"),
        ("PUT", "/b", ""),
        ("HEAD", "/c", ""),
        ("POST", "/d", ""),
        ("GET", "/e", ""),
    ]
    assert stats.connections == 1
    assert {r.action for r in stats.requests} == {"forwarded"}
    assert [r.body_bytes for r in stats.requests] == [0, len(body), 0, 4010, 0]


def test_http_drop_answers_200_with_etag_and_the_backend_never_sees_the_body(
    backend: Backend,
) -> None:
    parts = {n: payload(256 * 1024, seed=n) for n in (1, 2, 3)}
    rule = HttpDrop(method="PUT", query="partNumber=", nth=2)
    with FaultProxy(LOCAL, backend.port, [rule], http=True) as proxy, requests.Session() as s:
        replies = {
            n: s.put(f"{proxy.url()}/bucket/key?partNumber={n}&uploadId=u1", data=data)
            for n, data in parts.items()
        }
        stats = proxy.stats()
    assert {n: r.status_code for n, r in replies.items()} == {1: 200, 2: 200, 3: 200}
    # The dropped part gets the ETag S3 would have given it: nothing looks wrong to the client.
    assert {n: r.headers["ETag"] for n, r in replies.items()} == {
        n: f'"{md5(data)}"' for n, data in parts.items()
    }
    assert [x.query for x in backend.seen] == ["partNumber=1&uploadId=u1", "partNumber=3&uploadId=u1"]
    assert md5(parts[2]) not in {x.body_md5 for x in backend.seen}
    assert [(r.action, r.body_bytes) for r in stats.requests] == [
        ("forwarded", 256 * 1024),
        ("drop", 256 * 1024),
        ("forwarded", 256 * 1024),
    ]


def test_http_forwarded_request_answered_with_a_replaced_body(backend: Backend) -> None:
    error = "<Error><Code>InternalError</Code><Message>injected</Message></Error>"
    rule = HttpRespond(method="POST", query="uploadId=", status=200, body=error, forward=True)
    with FaultProxy(LOCAL, backend.port, [rule], http=True) as proxy:
        reply = requests.post(f"{proxy.url()}/bucket/key?uploadId=u1", data=b"<Complete/>")
        [exchange] = proxy.stats().requests
    assert (reply.status_code, reply.text) == (200, error)
    assert reply.headers["Content-Type"] == "application/xml"
    assert [(x.method, x.body_md5) for x in backend.seen] == [("POST", md5(b"<Complete/>"))]
    assert (exchange.action, exchange.status, exchange.upstream_status) == ("respond", 200, 200)


def test_http_expect_100_continue_is_answered_by_the_proxy(backend: Backend) -> None:
    body = b"z" * 5000
    head = (
        f"PUT /k?partNumber=1 HTTP/1.1\r\nHost: {LOCAL}\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    with FaultProxy(LOCAL, backend.port, http=True) as proxy, connect(proxy.port) as sock:
        sock.sendall(head)
        assert recv_all(sock, 25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        reply = recv_until(sock, f"PUT {md5(body)}".encode())
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert [x.body_len for x in backend.seen] == [len(body)]


def test_http_mode_link_faults_still_apply(backend: Backend) -> None:
    rules = [Reset(after_bytes=100 * 1024)]
    with FaultProxy(LOCAL, backend.port, rules, http=True) as proxy:
        with pytest.raises(requests.ConnectionError):
            requests.put(f"{proxy.url()}/big", data=bytes(4 * MiB), timeout=10)
        assert proxy.stats().faults["reset"] == 1
    assert backend.seen == []  # the request never completed


def test_http_mode_over_a_slow_link(backend: Backend) -> None:
    body = payload(1 * MiB, seed=4)
    rules = [Throttle(bytes_per_sec=2 * MiB, latency_ms=100, direction=Direction.BOTH)]
    with FaultProxy(LOCAL, backend.port, rules, http=True) as proxy, requests.Session() as s:
        started = time.monotonic()
        put = s.put(f"{proxy.url()}/slow", data=body, timeout=30)
        get = s.get(f"{proxy.url()}/after", timeout=30)
        elapsed = time.monotonic() - started
    assert (put.status_code, put.text) == (200, f"PUT {md5(body)}")
    assert get.status_code == 200
    assert 0.5 + 0.4 <= elapsed < 10  # 1 MiB at 2 MiB/s, plus 4 one-way delays


def test_http_rules_need_http_mode() -> None:
    with pytest.raises(ValueError, match="http=True"):
        FaultProxy(LOCAL, 1, [HttpDrop()])


def test_stop_ends_the_thread_and_closes_the_port(servers: ServerLoop) -> None:
    proxy = FaultProxy(LOCAL, servers.tcp(echo), [Stall()]).start()
    port = proxy.port
    stalled = connect(port)
    proxy.stop()
    assert not any(t.name.startswith("FaultProxy") for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    assert stalled.recv(1) == b""  # the held connection was closed too
    stalled.close()
    proxy.stop()  # idempotent
