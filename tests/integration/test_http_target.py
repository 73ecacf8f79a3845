"""Plain HTTP single-shot PUT/POST, the CLI run as a subprocess against real servers on 127.0.0.1.

PUTs go to the SeaweedFS filer of the session's `seaweed` fixture: it stores a raw `PUT /dir/name`
body as a file and returns it (and its Content-Type and Seaweed-* headers) on GET, so every byte
and header is read back from the server. The filer takes POST only as multipart/form-data (a raw
POST gets 500 "request Content-Type isn't multipart/form-data", checked with SeaweedFS 4.48), so
POST and the credentials checks go to `StoringServer` below: stdlib http.server, which keeps each
request's method, headers and body as it received them. Faults come from the fault proxy.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import write_random_file
from tests.integration.cli import Run, popen_cli, run_cli
from tests.servers.fault_proxy import FaultProxy, HttpRespond, Reset, Throttle
from tests.servers.local_http import LocalHTTPServer
from uploader.errors import RESUME_HINT

KiB, MiB = 1 << 10, 1 << 20


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StoringServer(LocalHTTPServer):
    """Answers 201 to PUT and POST and keeps what arrived; GET is not needed."""

    def __init__(self) -> None:
        got: list[Received] = []
        self.received = got

        class Handler(BaseHTTPRequestHandler):
            def _store(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append(Received(self.command, self.path, dict(self.headers.items()), body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _store

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKHAUL_"))}
    return {**clean, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def storing() -> Iterator[StoringServer]:
    with StoringServer() as server:
        yield server


def filer(seaweed: Any) -> str:
    return f"http://127.0.0.1:{seaweed.ports['filer.port']}"


def new_path(name: str = "f.bin") -> str:
    return f"/chunkhaul-http/{secrets.token_hex(6)}/{name}"


def upload(env: dict[str, str], src: Path, url: str, tmp_path: Path, *extra: str) -> Run:
    return run_cli("upload", str(src), url, "--state-dir", str(tmp_path / "state"), "--json", *extra, env=env)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def error_line(run: Run) -> str:
    """The run's only error line; no traceback, no resume advice (nothing can be resumed)."""
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("chunkhaul: error:")]
    assert len(lines) == 1, run.stderr
    assert RESUME_HINT not in lines[0] and "--restart" not in lines[0]
    return lines[0]


def no_manifest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert not state.exists() or not list(state.glob("*.json"))


@pytest.mark.parametrize("size", [3 * KiB + 17, 20 * MiB + 5], ids=["3KiB", "20MiB"])
def test_put_is_read_back_identical_from_the_filer(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                   size: int) -> None:
    src = write_random_file(tmp_path / "f.bin", size, seed=size)
    path = new_path()
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], http=True) as proxy:
        run = upload(env, src, proxy.url() + path, tmp_path)
        requests_seen = [(r.method, r.path, r.upstream_status, r.body_bytes) for r in proxy.stats().requests]
    assert run.code == 0, run.stderr
    # One request carries the file, whatever its size (20 MiB is over the default part size).
    assert requests_seen == [("PUT", path, 201, size)]
    got = requests.get(filer(seaweed) + path, timeout=60)
    assert got.status_code == 200
    assert (len(got.content), md5(got.content)) == (size, md5(src.read_bytes()))
    no_manifest(tmp_path)


@pytest.mark.parametrize(("name", "extra", "expected_type"), [
    ("notes.bin", ("--content-type", "application/x-chunkhaul-test"), "application/x-chunkhaul-test"),
    ("report.pdf", (), "application/pdf"),  # guessed from the name, as for the other targets
])
def test_content_type_and_header_are_stored(seaweed: Any, env: dict[str, str], tmp_path: Path, name: str,
                                            extra: tuple[str, ...], expected_type: str) -> None:
    src = write_random_file(tmp_path / name, 4 * KiB, seed=3)
    path = new_path(name)
    # The filer keeps request headers named Seaweed-* with the file and returns them on GET.
    run = upload(env, src, filer(seaweed) + path, tmp_path, "--header", "Seaweed-Chunkhaul-Note: from the test",
                 *extra)
    assert run.code == 0, run.stderr
    got = requests.get(filer(seaweed) + path, timeout=60)
    assert got.headers["Content-Type"] == expected_type
    assert got.headers["Seaweed-Chunkhaul-Note"] == "from the test"
    assert got.content == src.read_bytes()


def test_post_with_an_authorization_header(storing: StoringServer, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "clip.mp4", 64 * KiB + 1, seed=4)
    run = upload(env, src, storing.url + "/incoming/clip.mp4", tmp_path, "--method", "post",
                 "--header", "Authorization: Bearer tok-123")
    assert run.code == 0, run.stderr
    [got] = storing.received
    assert (got.method, got.path, got.body) == ("POST", "/incoming/clip.mp4", src.read_bytes())
    assert got.headers["Authorization"] == "Bearer tok-123"
    assert got.headers["Content-Type"] == "video/mp4"
    assert got.headers["Content-Length"] == str(src.stat().st_size)
    assert "tok-123" not in run.stdout + run.stderr
    no_manifest(tmp_path)


def test_user_and_password_in_the_url_go_as_basic_auth(storing: StoringServer, env: dict[str, str],
                                                       tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 5 * KiB, seed=5)
    url = storing.url.replace("http://", "http://alice:pw-SECRET-9@") + "/f.bin"
    run = upload(env, src, url, tmp_path)
    assert run.code == 0, run.stderr
    [got] = storing.received
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:pw-SECRET-9").decode()
    assert got.body == src.read_bytes()
    assert "pw-SECRET-9" not in run.stdout + run.stderr
    # Credentials given twice (URL and --header): refused before anything is sent, as for tus.
    twice = upload(env, src, url, tmp_path, "--header", "Authorization: Bearer x")
    assert twice.code == 2 and "give them one way" in error_line(twice)
    assert len(storing.received) == 1


def test_4xx_is_final_one_line_no_resume(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 8 * KiB, seed=6)
    path = new_path()
    refuse = HttpRespond(method="PUT", status=403, body="write access denied here", content_type="text/plain")
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], [refuse], http=True) as proxy:
        run = upload(env, src, proxy.url() + path, tmp_path, "--sync-delay", "0")
        statuses = [r.status for r in proxy.stats().requests]
    assert run.code == 1, run.stderr
    line = error_line(run)
    assert "HTTP 403" in line and "write access denied here" in line and "credentials" in line
    assert statuses == [403]  # not retried, no fallback
    assert requests.get(filer(seaweed) + path, timeout=60).status_code == 404
    no_manifest(tmp_path)


def test_5xx_twice_then_stored(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 1 * MiB + 3, seed=7)
    path = new_path()
    busy = HttpRespond(method="PUT", status=503, first=2)
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], [busy], http=True) as proxy:
        run = upload(env, src, proxy.url() + path, tmp_path)
        statuses = [r.status for r in proxy.stats().requests]
    assert run.code == 0, run.stderr
    assert statuses == [503, 503, 201]
    assert requests.get(filer(seaweed) + path, timeout=60).content == src.read_bytes()


def test_reset_link_falls_back_to_the_sync_single_shot(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 4 * MiB, seed=8)
    path = new_path()
    # Both async attempts are cut mid-body; the sync fallback's connection (the third) is not.
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], [Reset(after_bytes=MiB, first=2)]) as proxy:
        run = upload(env, src, proxy.url() + path, tmp_path, "--retries", "2", "--sync-delay", "0")
        resets = proxy.stats().faults["reset"]
    assert run.code == 0, run.stderr
    assert resets == 2
    assert "UPLOAD SUCCEEDED VIA SYNC FALLBACK" in run.stderr
    assert requests.get(filer(seaweed) + path, timeout=60).content == src.read_bytes()
    no_manifest(tmp_path)


def test_redirect_is_not_followed(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 8 * KiB, seed=9)
    path, elsewhere = new_path(), new_path()
    moved = HttpRespond(method="PUT", status=307, headers={"Location": filer(seaweed) + elsewhere})
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], [moved], http=True) as proxy:
        run = upload(env, src, proxy.url() + path, tmp_path)
        statuses = [r.status for r in proxy.stats().requests]
    assert run.code == 1, run.stderr
    assert "HTTP 307" in error_line(run) and elsewhere in error_line(run)
    assert statuses == [307]
    for where in (path, elsewhere):  # the body went nowhere
        assert requests.get(filer(seaweed) + where, timeout=60).status_code == 404


def test_method_on_an_s3_destination_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", KiB, seed=10)
    run = upload(env, src, "s3://bucket/key", tmp_path, "--method", "POST")
    assert run.code == 2
    assert "--method applies to http uploads only" in error_line(run)


@pytest.mark.parametrize("busy_first", [0, 2], ids=["one-attempt", "two-503s-first"])
def test_the_library_progress_moves_during_the_one_request(seaweed: Any, tmp_path: Path, busy_first: int) -> None:
    from uploader import upload as upload_file

    size = 24 * MiB + 1
    src = write_random_file(tmp_path / "f.bin", size, seed=9)
    path, seen = new_path(), []
    rules = [HttpRespond(method="PUT", status=503, first=busy_first)] if busy_first else []
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], rules, http=True) as proxy:
        result = upload_file(str(src), proxy.url() + path, state_dir=str(tmp_path / "state"),
                             progress=lambda done, total: seen.append((done, total)))
        statuses = [r.status for r in proxy.stats().requests]
    assert statuses == [503] * busy_first + [201]
    assert requests.get(filer(seaweed) + path, timeout=60).content == src.read_bytes()
    assert result.bytes_total == size
    done = [d for d, _ in seen]
    # The bar moves while the body goes (1 MiB steps), never backwards, never past the file,
    # though retried attempts send the first bytes again.
    assert len([d for d in done if 0 < d < size]) >= 4
    assert done == sorted(done) and done[-1] == size and {t for _, t in seen} == {size}


def test_ctrl_c_says_there_is_nothing_to_resume(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 32 * MiB, seed=10)
    path = new_path()
    slow = Throttle(bytes_per_sec=4 * MiB)
    with FaultProxy("127.0.0.1", seaweed.ports["filer.port"], [slow], http=True) as proxy:
        proc = popen_cli("upload", str(src), proxy.url() + path, "--state-dir", str(tmp_path / "state"), env=env)
        proxy.wait_for(lambda st: st.bytes_up > 4 * MiB, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == ("chunkhaul: error: interrupted; plain HTTP keeps nothing to resume "
                                               "from: the same command sends the file again")
    assert requests.get(filer(seaweed) + path, timeout=60).status_code == 404  # nothing half-stored
    no_manifest(tmp_path)


def test_content_type_as_a_header_points_to_the_option(env: dict[str, str], tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", KiB, seed=11)
    run = upload(env, src, "http://127.0.0.1:9/x", tmp_path, "--header", "Content-Type: text/x")
    assert run.code == 2
    assert error_line(run).endswith("chunkhaul sets this header itself; give the type with --content-type")
