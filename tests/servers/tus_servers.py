"""Launch the real tus server (@tus/server, Node) for tests, the demo and benchmarks.

    with TusNodeServer() as tus:                       # file store in a temp dir
        upload_url = create_and_upload(tus.url, ...)   # tus.url == "http://127.0.0.1:PORT/files/"
        assert tus.stored_md5(upload_url) == expected

    with SeaweedFS() as s3, TusNodeServer("s3", s3=s3) as tus:   # S3 store in front of SeaweedFS
        ...

The node script (tus/server.mjs) binds 127.0.0.1 on a kernel-chosen port and prints
`LISTENING <port>`; we read that line instead of guessing a free port, so parallel runs
never collide. The npm packages are installed by scripts/bootstrap.sh (`npm ci`).
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol
from urllib.parse import urlsplit

from tests.servers.lifecycle import Server

TUS_DIR = Path(__file__).resolve().parent / "tus"
SERVER_SCRIPT = TUS_DIR / "server.mjs"
READ_CHUNK = 1 << 20
MIN_S3_PART_SIZE = 5 * 1024 * 1024

StoreKind = Literal["file", "s3"]


class TusServerError(RuntimeError):
    """The node tus server could not be started (or is missing its npm packages)."""


class S3Endpoint(Protocol):
    """What the S3 store needs to know; tests.servers.seaweed.SeaweedFS provides it."""

    @property
    def endpoint(self) -> str: ...
    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def region(self) -> str: ...


@dataclass(frozen=True)
class S3Settings:
    """A plain S3Endpoint, for an S3 service that is not started by our fixtures."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


def upload_id(upload_url: str) -> str:
    """@tus/server puts the upload id after the last '/' of the upload URL."""
    path = urlsplit(upload_url).path.rstrip("/")
    return path.rsplit("/", 1)[-1]


class TusNodeServer(Server):
    """A real @tus/server process with a file store or an S3 store (context manager)."""

    def __init__(
        self,
        store: StoreKind = "file",
        *,
        directory: Path | None = None,
        s3: S3Endpoint | None = None,
        max_size: int | None = None,
        expiration_ms: int | None = None,
        cleanup_interval_ms: int | None = None,
        part_size: int = MIN_S3_PART_SIZE,
        startup_timeout: float = 30.0,
    ) -> None:
        if store == "s3" and s3 is None:
            raise ValueError("store='s3' needs s3=<endpoint, bucket and credentials>")
        self.store: StoreKind = store
        self.s3 = s3
        self.max_size = max_size
        self.expiration_ms = expiration_ms
        self.cleanup_interval_ms = cleanup_interval_ms
        self.part_size = part_size
        self.startup_timeout = startup_timeout
        # workdir (always ours, removed on stop) holds the server log and S3 downloads;
        # the file store writes uploads to `directory`, which a caller may keep.
        self.workdir = Path(tempfile.mkdtemp(prefix="tus-"))
        self.directory = Path(directory) if directory else self.workdir / "files"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._s3_client: Any = None

    # ----- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The tus creation endpoint (POST here), with the trailing slash."""
        if not self.port:
            raise TusServerError("tus server is not running")
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self) -> TusNodeServer:
        node = shutil.which("node")
        if node is None:
            raise TusServerError("node is not on PATH (Node.js >= 20.19 is required)")
        if not (TUS_DIR / "node_modules" / "@tus" / "server").is_dir():
            raise TusServerError(f"npm packages missing in {TUS_DIR}: run scripts/bootstrap.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._log = (self.workdir / "tus-server.log").open("wb")
        self._proc = subprocess.Popen(
            self._command(node),
            cwd=TUS_DIR,
            env=self._environment(),
            # stdin stays an open pipe: the server exits when it closes, so even a
            # SIGKILLed test run leaves no orphan server behind.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = 0
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _command(self, node: str) -> list[str]:
        cmd = [node, str(SERVER_SCRIPT), "--port", "0", "--exit-on-stdin-close"]
        cmd += ["--store", self.store]
        if self.store == "file":
            cmd += ["--dir", str(self.directory)]
        if self.max_size is not None:
            cmd += ["--max-size", str(self.max_size)]
        if self.expiration_ms is not None:
            cmd += ["--expiration-ms", str(self.expiration_ms)]
        if self.cleanup_interval_ms is not None:
            cmd += ["--cleanup-interval-ms", str(self.cleanup_interval_ms)]
        return cmd

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TUS_", "AWS_"))}
        # The pinned AWS SDK warns on Node 20; the warning is noise in test logs.
        env["NODE_NO_WARNINGS"] = "1"
        if self.s3 is not None and self.store == "s3":
            # Secrets travel in the environment, never on the command line (visible in ps).
            env.update(
                TUS_S3_ENDPOINT=self.s3.endpoint,
                TUS_S3_BUCKET=self.s3.bucket,
                TUS_S3_REGION=self.s3.region,
                TUS_S3_PART_SIZE=str(self.part_size),
                AWS_ACCESS_KEY_ID=self.s3.access_key,
                AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
            )
            ca_file = getattr(self.s3, "ca_file", None)  # SeaweedFS over TLS, private CA
            if ca_file:
                env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
        return env

    def _wait_listening(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    line = self._proc.stdout.readline().decode(errors="replace").strip()
                    if line.startswith("LISTENING "):
                        return int(line.split()[1])
                    if not line and self._proc.poll() is not None:
                        break
        raise TusServerError(f"tus server did not start: {self._log_tail()}")

    def _log_tail(self) -> str:
        log = self.workdir / "tus-server.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text[-2000:] or "(no output)"

    # ----- verification ----------------------------------------------------------------

    def object_key(self, upload_url: str) -> str:
        """S3 store: the finished upload is the object <id>; its info is <id>.info."""
        return upload_id(upload_url)

    def info(self, upload_url: str) -> dict[str, Any]:
        """The store's own record of the upload (file store: <id>.json; S3: <id>.info)."""
        uid = upload_id(upload_url)
        if self.store == "file":
            return dict(json.loads((self.directory / f"{uid}.json").read_text()))
        body = self._s3().get_object(Bucket=self._bucket(), Key=f"{uid}.info")["Body"]
        return dict(json.loads(body.read()))

    def stored_path(self, upload_url: str) -> Path:
        """A local file holding the stored bytes (S3 store: downloaded into the workdir)."""
        uid = upload_id(upload_url)
        if self.store == "file":
            return self.directory / uid
        target = self.workdir / "downloads" / uid
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for chunk in self._s3_chunks(uid):
                out.write(chunk)
        return target

    def stored_md5(self, upload_url: str) -> str:
        """Hex md5 of the stored bytes, streamed (no full copy in memory)."""
        digest = hashlib.md5()
        uid = upload_id(upload_url)
        if self.store == "file":
            with (self.directory / uid).open("rb") as f:
                while chunk := f.read(READ_CHUNK):
                    digest.update(chunk)
        else:
            for chunk in self._s3_chunks(uid):
                digest.update(chunk)
        return digest.hexdigest()

    def stored_bytes(self, upload_url: str) -> bytes:
        """All stored bytes: for small test uploads only."""
        return self.stored_path(upload_url).read_bytes()

    def _s3_chunks(self, key: str) -> Any:
        body = self._s3().get_object(Bucket=self._bucket(), Key=key)["Body"]
        return body.iter_chunks(READ_CHUNK)

    def _bucket(self) -> str:
        assert self.s3 is not None
        return self.s3.bucket

    def _s3(self) -> Any:
        if self.store != "s3" or self.s3 is None:
            raise TusServerError("not an S3-store tus server")
        if self._s3_client is None:
            # Imported lazily: only S3-store users need botocore.
            import botocore.session
            from botocore.config import Config

            self._s3_client = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=self.s3.endpoint,
                region_name=self.s3.region,
                aws_access_key_id=self.s3.access_key,
                aws_secret_access_key=self.s3.secret_key,
                verify=getattr(self.s3, "verify", True),
                config=Config(
                    s3={"addressing_style": "path"},
                    response_checksum_validation="when_required",
                ),
            )
        return self._s3_client


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Close stdin (the server exits on EOF), then SIGTERM, then SIGKILL as a last resort."""
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    try:
        proc.wait(timeout=3)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
