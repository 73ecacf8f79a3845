"""Small misbehaving servers on 127.0.0.1 for the bad-input and security suites: a TLS server
with a chosen certificate and protocol range, and an HTTP server that records what it got."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType

import trustme

from tests.servers.local_http import LocalHTTPServer

ERROR_XML = b"<Error><Code>InternalError</Code><Message>try again</Message></Error>"


def leaf(ca: trustme.CA, *hosts: str, valid_days: tuple[int, int] | None = None) -> trustme.LeafCert:
    """A certificate from `ca` for `hosts`; valid_days=(start, end) relative to now (negative = past)."""
    if valid_days is None:
        return ca.issue_cert(*hosts)
    now = dt.datetime.now(dt.timezone.utc)
    return ca.issue_cert(*hosts, not_before=now + dt.timedelta(days=valid_days[0]),
                         not_after=now + dt.timedelta(days=valid_days[1]))


def old_tls_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context that speaks only TLS 1.0 / 1.1 (OpenSSL 3 needs security level 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@dataclass
class Handshake:
    ok: bool
    detail: str  # the TLS version, or the server-side error


@dataclass
class TlsServer:
    """Accepts TLS connections with `context`; answers any request that gets through with 500.
    `handshakes` records how each connection's handshake went."""

    context: ssl.SSLContext
    handshakes: list[Handshake] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> TlsServer:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            conn, _ = self._sock.accept()
            if self._stop:
                conn.close()
                return
            conn.settimeout(10)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes.append(Handshake(True, str(tls.version())))
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                            % len(ERROR_XML) + ERROR_XML)
        except (OSError, ssl.SSLError) as exc:
            self.handshakes.append(Handshake(False, str(exc)))
        finally:
            conn.close()


class RecordingServer(LocalHTTPServer):
    """Plain HTTP; records every request's line and headers and answers 500 (S3 InternalError),
    so a client retries and signs several requests."""

    def __init__(self) -> None:
        seen: list[tuple[str, dict[str, str]]] = []
        self.requests = seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.requestline, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length") or 0)
                while length > 0:
                    length -= len(self.rfile.read(min(length, 1 << 20)) or b"x" * length)
                self.send_response(500)
                self.send_header("Content-Length", str(len(ERROR_XML)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(ERROR_XML)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path
