"""Shared pieces of the chaos and kill suites: servers, the CLI as a subprocess, the proxy's
request log with in-flight requests, server-side checks and the printed figures."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tests.integration.cli import REPO, Run, cli_args, s3_env
from tests.servers.fault_proxy import FaultProxy
from tests.servers.seaweed import SeaweedFS, make_tls_files

MiB = 1 << 20
CLI_TIMEOUT = 900.0  # seconds; a run that takes longer is recorded as hung, then killed


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


# -- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def seaweed_servers(tls: bool) -> Iterator[tuple[SeaweedFS, SeaweedFS | None]]:
    """A plain-HTTP SeaweedFS and (with tls) one behind HTTPS with a trustme CA."""
    with tempfile.TemporaryDirectory(prefix="chunkhaul-chaos-tls-") as certs, SeaweedFS() as plain:
        if not tls:
            yield plain, None
            return
        files = make_tls_files(certs)
        with SeaweedFS(tls=(files.cert_file, files.key_file), ca_file=files.ca_file) as secure:
            yield plain, secure


# -- the CLI ----------------------------------------------------------------------------------


@dataclass
class Timed(Run):
    seconds: float = 0.0
    hung: bool = False


def cli_env(server: SeaweedFS, home: Path) -> dict[str, str]:
    return s3_env(server, home)


def run_bounded(args: Sequence[str], env: dict[str, str], timeout: float = CLI_TIMEOUT) -> Timed:
    """Run the CLI; a run that outlives `timeout` is killed and reported as hung."""
    started = time.monotonic()
    proc = subprocess.Popen(cli_args(*args), env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    return Timed(proc.returncode, out, err, time.monotonic() - started, hung)


def popen(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cli_args(*args), env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


SLOW_FSYNC = """import os, time
_fsync = os.fsync


def _slow_fsync(fd):
    time.sleep(float(os.environ.get("CHUNKHAUL_TEST_FSYNC_DELAY", "0")))
    _fsync(fd)


os.fsync = _slow_fsync
"""


def slow_disk_env(env: dict[str, str], work: Path, delay: float) -> dict[str, str]:
    """`env` for a CLI on a slow disk: every fsync takes `delay` s longer (a sitecustomize module
    on PYTHONPATH), so a signal or a kill can be made to land inside a manifest write."""
    site = work / "slow-disk"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_FSYNC)
    return {**env, "PYTHONPATH": str(site), "CHUNKHAUL_TEST_FSYNC_DELAY": str(delay)}


# -- the proxy's request log ------------------------------------------------------------------


def label_of(method: str, query: str) -> str:
    """The S3 operation behind a request line."""
    method = method.upper()
    if method == "POST":
        return "create" if query.startswith("uploads") else "complete" if "uploadId=" in query else "post"
    if method == "PUT":
        return "part" if "partNumber=" in query else "put"
    if method == "GET":
        return "list" if "uploadId=" in query else "get"
    return "abort" if method == "DELETE" else method.lower()


class RequestTracker:
    """Requests the proxy (HTTP mode) has started and those the server has answered.

    The proxy logs an exchange once the server's reply head is in; it has no hook for a
    request's start. Its rule book is asked once per request, at the start, before anything
    is forwarded, so the tracker wraps that call (a private attribute: test code only).
    """

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._lock = threading.Lock()
        self._started: list[tuple[float, str]] = []
        book = proxy._rules
        original = book.for_request

        def for_request(method: str, path: str, query: str) -> Any:
            with self._lock:
                self._started.append((time.monotonic(), label_of(method, query)))
            return original(method, path, query)

        book.for_request = for_request  # type: ignore[method-assign]

    def clear(self) -> None:
        with self._lock:
            self._started.clear()
        self._proxy.reset_stats()

    def started(self) -> Counter[str]:
        with self._lock:
            return Counter(label for _, label in self._started)

    def first_start(self, label: str) -> float | None:
        with self._lock:
            return next((t for t, lab in self._started if lab == label), None)

    def answered(self) -> Counter[str]:
        return Counter(label_of(r.method, r.query) for r in self._proxy.stats().requests)

    def snapshot(self) -> Snapshot:
        answered = self.answered()  # first: a request answered in between counts as answered
        started = self.started()
        return Snapshot(started, answered)


@dataclass(frozen=True)
class Snapshot:
    started: Counter[str]
    answered: Counter[str]

    def in_flight(self, label: str) -> int:
        return max(0, self.started[label] - self.answered[label])


def settle(proxy: FaultProxy, timeout: float = 15.0) -> None:
    """Wait until the proxy has closed every connection of a dead client."""
    with contextlib.suppress(TimeoutError):
        proxy.wait_for(lambda s: s.active == 0, timeout)


def wait_until(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float,
               step: float = 0.005) -> bool:
    """Poll until predicate() holds; False when the process ended or time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(step)
    return False


# -- server-side checks -----------------------------------------------------------------------


def parts_on_server(server: SeaweedFS, key: str, upload_id: str) -> dict[int, int] | None:
    """{part number: size} the server holds for the upload; None if it no longer knows it.
    SeaweedFS lists a re-uploaded part once per upload: each number counts once."""
    try:
        return {p["PartNumber"]: p["Size"] for p in server.list_parts(key, upload_id)}
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return None
        raise


def abort_others(server: SeaweedFS, key: str, keep: str | None = None) -> int:
    """Abort the multipart uploads of `key` other than `keep`; how many there were."""
    count = 0
    for upload in server.list_multipart_uploads(key):
        if upload["Key"] == key and upload["UploadId"] != keep:
            server.s3.abort_multipart_upload(Bucket=server.bucket, Key=key, UploadId=upload["UploadId"])
            count += 1
    return count


def object_md5(server: SeaweedFS, key: str) -> str | None:
    try:
        return server.get_object_bytes_md5(key).md5
    except ClientError:
        return None


def delete_object(server: SeaweedFS, key: str) -> None:
    with contextlib.suppress(ClientError):
        server.s3.delete_object(Bucket=server.bucket, Key=key)


# -- figures ----------------------------------------------------------------------------------


def table(rows: Sequence[tuple[str, object]], width: int = 46) -> str:
    return "\n".join(f"  {name:<{width}} {value}" for name, value in rows)


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        mem_kib = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                           if line.startswith("MemTotal")).split()[1])
        mem = f"{mem_kib / 1024 / 1024:.0f} GB RAM"
    except (OSError, StopIteration, ValueError):
        mem = "RAM unknown"
    return f"{cpus} CPUs, {mem}, Python {sys.version.split()[0]}, {sys.platform}"
