"""chunkhaul's tus target against real servers on 127.0.0.1, run as a user runs it.

@tus/server 2.4.5 with its file store and with its S3 store in front of SeaweedFS; the
spec-following TusSpecServer for checksum and concatenation (the real stores offer neither);
the fault proxy for resets and stalls. Expected values come from the servers (HEAD, the
stores' own records, the stored bytes) and from the file on disk, never from our output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from resume import FileIdentity, ManifestStore
from tests.integration.cli import Run, manifests, popen_cli, run_cli, s3_env
from tests.servers.fault_proxy import FaultProxy, Reset, Stall, Throttle
from tests.servers.seaweed import SeaweedFS
from tests.servers.tus_servers import TusNodeServer
from tests.servers.tus_spec_server import TusSpecServer
from uploader import upload
from uploader.config import UploadOptions
from uploader.errors import UploadFailed
from uploader.targets.tus import decode_metadata, tus_protocol
from uploader.tus_sync import sync_fallback

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}
FILENAME = "Überprüfung – Straße 5 (日本).pdf"
LOST = "no longer has"  # the one line logged when the server lost the upload


# ----- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def file_tus() -> Iterator[TusNodeServer]:
    with TusNodeServer("file") as tus:
        yield tus


@pytest.fixture(scope="module")
def s3_tus(seaweed: SeaweedFS) -> Iterator[TusNodeServer]:
    with TusNodeServer("s3", s3=seaweed) as tus:
        yield tus


@pytest.fixture(params=["file", "s3"])
def node_tus(request: pytest.FixtureRequest) -> TusNodeServer:
    server: TusNodeServer = request.getfixturevalue(f"{request.param}_tus")
    return server


@pytest.fixture
def spec_tus() -> Iterator[TusSpecServer]:
    with TusSpecServer() as tus:
        yield tus


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKHAUL_"))}
    return {**clean, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}


def tus_upload(env: dict[str, str], src: Path, url: str, state: Path, *extra: str, timeout: float = 600) -> Run:
    return run_cli("upload", str(src), url, "--protocol", "tus", "--state-dir", str(state), "--json", *extra,
                   env=env, timeout=timeout)


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def head(url: str) -> requests.Response:
    return requests.head(url, headers=TUS, timeout=30)


def manifest_url(state: Path) -> str | None:
    found = manifests(state) if state.exists() else []
    url = found[0]["session"].get("upload_url") if found else None
    return str(url) if url else None


def kill_after(proc: subprocess.Popen[str], state: Path, at_least: int) -> str:
    """SIGKILL the CLI once the server (HEAD) holds at_least bytes; returns the upload URL."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the upload ended before it could be interrupted: {proc.stderr}"
        url = manifest_url(state)
        if url is not None and int(head(url).headers.get("Upload-Offset", 0)) >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return url
        time.sleep(0.05)
    raise AssertionError("the server never reached the wanted offset")


def read_by(pid: int) -> int:
    """Bytes the process read so far (the kernel's count, /proc/PID/io): a PATCH body is
    read from disk piece by piece as the socket takes it."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def kill_after_sent(proc: subprocess.Popen[str], state: Path, at_least: int) -> str:
    """SIGKILL the CLI once it has read at_least bytes of the file for sending. For a streamed
    PATCH: @tus/server answers HEAD only after the PATCH holding the upload's lock ends."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the upload ended before it could be interrupted: {proc.stderr}"
        url = manifest_url(state)
        if url is not None and read_by(proc.pid) >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return url
        time.sleep(0.01)
    raise AssertionError("the upload never read the wanted byte count")


def start_upload(env: dict[str, str], src: Path, url: str, state: Path, *extra: str) -> subprocess.Popen[str]:
    return popen_cli("upload", str(src), url, "--protocol", "tus", "--state-dir", str(state), *extra, env=env)


def offset_now(url: str) -> int:
    # After a kill @tus/server may hold the lock of the cut PATCH for a moment; HEAD waits for it.
    return int(head(url).headers["Upload-Offset"])


# ----- 600 MiB, SIGKILL, resume -----------------------------------------------------------


def test_600mib_killed_and_resumed(node_tus: TusNodeServer, env: dict[str, str],
                                   make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    # Default settings: one PATCH streams the file; the kill cuts it and the server keeps
    # what arrived, so the second run sends exactly what the server's HEAD says is missing.
    size = 600 * MiB
    src = make_random_file("big.bin", size)
    state = tmp_path / "state"
    proc = start_upload(env, src, node_tus.url, state)
    url = kill_after_sent(proc, state, int(0.4 * size))
    on_server = offset_now(url)
    assert 0.3 * size <= on_server < size  # 0.1 of slack: what sat in socket buffers is lost

    again = tus_upload(env, src, node_tus.url, state)
    assert again.code == 0, again.stderr
    summary = again.summary
    assert summary["upload_id"] == url  # the same upload, continued
    assert summary["resumed"] is True
    assert summary["bytes_resumed"] == on_server
    assert summary["bytes_sent"] == size - on_server  # not one byte the server had
    assert node_tus.stored_md5(url) == md5_file(src)
    assert node_tus.info(url)["size"] == size
    assert manifests(state) == []  # done: the manifest is removed


# ----- metadata, empty files, size limits -------------------------------------------------


def test_non_ascii_filename_round_trips(node_tus: TusNodeServer, env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / FILENAME
    src.write_bytes(os.urandom(300_000))
    result = tus_upload(env, src, "tus+" + node_tus.url, tmp_path / "state")  # the tus+http:// form
    assert result.code == 0, result.stderr
    url = result.summary["upload_id"]
    expected = {"filename": FILENAME, "filetype": "application/pdf"}
    assert decode_metadata(head(url).headers["Upload-Metadata"]) == expected
    assert node_tus.info(url)["metadata"] == expected  # what the store itself recorded
    assert node_tus.stored_bytes(url) == src.read_bytes()


def test_content_type_option_sets_filetype(node_tus: TusNodeServer, env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(1000))
    result = tus_upload(env, src, node_tus.url, tmp_path / "state", "--content-type", "video/webm")
    assert result.code == 0, result.stderr
    metadata = node_tus.info(result.summary["upload_id"])["metadata"]
    assert metadata == {"filename": "data.bin", "filetype": "video/webm"}


def test_a_server_never_reached_is_not_offered_a_resume(env: dict[str, str], tmp_path: Path) -> None:
    """OPTIONS cannot connect: nothing was created, no manifest kept, so the message does not
    promise a resume (it said "run the same command again to resume")."""
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(1000))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = tus_upload(env, src, f"http://127.0.0.1:{port}/files/", tmp_path / "state", "--retries", "1")
    assert result.code == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot connect" in last
    assert last.endswith("nothing was kept to resume from; check the destination and run the same command again")
    assert manifests(tmp_path / "state") == []


def test_a_symlink_is_named_by_its_own_name(node_tus: TusNodeServer, env: dict[str, str], tmp_path: Path) -> None:
    """filename and filetype come from the name the user gave (a link's own, as tus-js-client
    would send a File's name), the bytes from the target."""
    target = tmp_path / "target-data.dat"
    target.write_bytes(os.urandom(300_000))
    link = tmp_path / "report.pdf"
    link.symlink_to(target)
    result = tus_upload(env, link, node_tus.url, tmp_path / "state")
    assert result.code == 0, result.stderr
    url = result.summary["upload_id"]
    assert node_tus.info(url)["metadata"] == {"filename": "report.pdf", "filetype": "application/pdf"}
    assert node_tus.stored_bytes(url) == target.read_bytes()
    assert "Uploading file: report.pdf (" in result.stderr


def test_extra_metadata_and_auth_header_never_in_the_manifest(
        file_tus: TusNodeServer, env: dict[str, str], make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("data.bin", 40 * MiB)
    state = tmp_path / "state"
    proc = start_upload(env, src, file_tus.url, state, "--part-size", "5MiB", "--metadata", "project=Zürich 7",
                        "--header", "Authorization: Bearer sekrit-token")
    url = kill_after(proc, state, 5 * MiB)
    raw = "".join(p.read_text() for p in state.glob("*.json"))
    assert "sekrit" not in raw and "Authorization" not in raw
    assert json.loads(raw)["session"]["upload_url"] == url
    result = tus_upload(env, src, file_tus.url, state, "--part-size", "5MiB", "--metadata", "project=Zürich 7",
                        "--header", "Authorization: Bearer sekrit-token")
    assert result.code == 0, result.stderr
    assert "sekrit" not in result.stdout + result.stderr
    metadata = file_tus.info(url)["metadata"]
    assert metadata == {"filename": "data.bin", "filetype": "application/octet-stream", "project": "Zürich 7"}


def test_empty_file(node_tus: TusNodeServer, env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    result = tus_upload(env, src, node_tus.url, tmp_path / "state")
    assert result.code == 0, result.stderr
    url = result.summary["upload_id"]
    reply = head(url)
    assert (reply.headers["Upload-Offset"], reply.headers["Upload-Length"]) == ("0", "0")
    assert node_tus.stored_bytes(url) == b""


def test_too_large_fails_before_sending(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1_000_001))
    with TusNodeServer("file", max_size=1_000_000) as tus:
        result = tus_upload(env, src, tus.url, tmp_path / "state")
        assert result.code == 2
        assert "Tus-Max-Size" in result.stderr and "nothing was sent" in result.stderr
        assert list(tus.directory.iterdir()) == []  # the store never saw a creation
    with TusSpecServer(max_size=1_000_000) as spec:
        result = tus_upload(env, src, spec.url, tmp_path / "state")
        assert result.code == 2
        assert (spec.counts["POST"], spec.counts["PATCH"]) == (0, 0)


# ----- lost uploads, abort, restart, changed files ----------------------------------------


def test_upload_deleted_on_the_server_between_kill_and_resume(
        file_tus: TusNodeServer, env: dict[str, str], make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("lost.bin", 200 * MiB)
    state = tmp_path / "state"
    url = kill_after(start_upload(env, src, file_tus.url, state, "--part-size", "8MiB"), state, 40 * MiB)
    assert requests.delete(url, headers=TUS, timeout=30).status_code == 204
    result = tus_upload(env, src, file_tus.url, state, "--part-size", "8MiB")
    assert result.code == 0, result.stderr
    assert result.stderr.count(LOST) == 1
    new_url = result.summary["upload_id"]
    assert new_url != url
    assert result.summary["bytes_resumed"] == 0
    assert file_tus.stored_md5(new_url) == md5_file(src)


def test_expired_upload_is_recreated(env: dict[str, str], make_random_file: Callable[..., Path],
                                     tmp_path: Path) -> None:
    src = make_random_file("exp.bin", 100 * MiB)
    state = tmp_path / "state"
    with TusNodeServer("file", expiration_ms=4000) as tus:
        url = kill_after(start_upload(env, src, tus.url, state, "--part-size", "5MiB"), state, 10 * MiB)
        stored = manifests(state)[0]["session"]["segments"][0]["expires"]
        assert stored is not None and stored > time.time()  # Upload-Expires went into the manifest
        time.sleep(max(0.0, stored - time.time()) + 0.5)
        result = tus_upload(env, src, tus.url, state, "--part-size", "5MiB")
        assert result.code == 0, result.stderr
        assert result.stderr.count(LOST) == 1 and "expired" in result.stderr
        assert result.summary["upload_id"] != url
        assert tus.stored_md5(result.summary["upload_id"]) == md5_file(src)


def test_abort_deletes_the_server_upload_and_the_manifest(
        file_tus: TusNodeServer, env: dict[str, str], make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("abort.bin", 100 * MiB)
    state = tmp_path / "state"
    url = kill_after(start_upload(env, src, file_tus.url, state, "--part-size", "5MiB"), state, 10 * MiB)
    result = run_cli("abort", str(src), file_tus.url, "--protocol", "tus", "--state-dir", str(state), "--json",
                     env=env)
    assert result.code == 0, result.stderr
    assert result.summary == {"aborted": True}
    assert head(url).status_code == 404
    assert "Deleted the upload on the server" in result.stderr
    assert manifests(state) == []
    again = run_cli("abort", str(src), "tus+" + file_tus.url, "--state-dir", str(state), "--json", env=env)
    assert (again.code, again.summary) == (0, {"aborted": False})


def test_abort_of_an_upload_the_server_deleted_says_so(
        file_tus: TusNodeServer, env: dict[str, str], make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src, state = make_random_file("gone.bin", 100 * MiB), tmp_path / "state"
    url = kill_after(start_upload(env, src, file_tus.url, state, "--part-size", "5MiB"), state, 10 * MiB)
    assert requests.delete(url, headers={"Tus-Resumable": "1.0.0"}, timeout=10).status_code == 204
    result = run_cli("abort", str(src), file_tus.url, "--protocol", "tus", "--state-dir", str(state), env=env)
    assert result.code == 0, result.stderr
    assert "The server no longer had the upload" in result.stderr
    assert "Deleted the upload" not in result.stderr and manifests(state) == []


def test_abort_is_generic_and_aborts_an_s3_multipart_upload(
        seaweed: SeaweedFS, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    # `chunkhaul abort` goes through the protocol's abort(): for S3, AbortMultipartUpload.
    src = make_random_file("s3abort.bin", 200 * MiB)
    state, key = tmp_path / "state", seaweed.unique_key("abort")
    dest, env = f"s3://{seaweed.bucket}/{key}", s3_env(seaweed, tmp_path)
    proc = popen_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                     "--part-size", "5MiB", "--concurrency", "2", env=env)
    deadline = time.monotonic() + 120
    while not seaweed.list_multipart_uploads(prefix=key) and time.monotonic() < deadline:
        assert proc.poll() is None, "the upload ended before it could be interrupted"
        time.sleep(0.05)
    while not manifests(state) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seaweed.list_multipart_uploads(prefix=key) != []
    result = run_cli("abort", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                     env=env)
    assert result.code == 0, result.stderr
    assert seaweed.list_multipart_uploads(prefix=key) == []
    assert manifests(state) == []


def test_restart_deletes_the_old_upload(file_tus: TusNodeServer, env: dict[str, str],
                                        make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("restart.bin", 100 * MiB)
    state = tmp_path / "state"
    url = kill_after(start_upload(env, src, file_tus.url, state, "--part-size", "5MiB"), state, 10 * MiB)
    result = tus_upload(env, src, file_tus.url, state, "--restart")
    assert result.code == 0, result.stderr
    assert head(url).status_code == 404
    assert result.summary["bytes_sent"] == src.stat().st_size
    assert file_tus.stored_md5(result.summary["upload_id"]) == md5_file(src)


def test_changed_file_is_refused(file_tus: TusNodeServer, env: dict[str, str],
                                 make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("changed.bin", 100 * MiB)
    state = tmp_path / "state"
    kill_after(start_upload(env, src, file_tus.url, state, "--part-size", "5MiB"), state, 10 * MiB)
    with src.open("ab") as fh:
        fh.write(b"more")
    result = tus_upload(env, src, file_tus.url, state)
    assert result.code == 2
    assert "--restart" in result.stderr


# ----- checksum and concatenation (spec server) -------------------------------------------


def _patches(spec: TusSpecServer) -> list[Any]:
    return [r for r in spec.requests if r.method == "PATCH"]


def test_checksum_on_every_patch_and_460_resends(spec_tus: TusSpecServer, env: dict[str, str],
                                                 make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("sum.bin", 23 * MiB)
    spec_tus.fail_patch(nth=3, status=460)
    result = tus_upload(env, src, spec_tus.url, tmp_path / "state", "--part-size", "5MiB", "--concurrency", "1")
    assert result.code == 0, result.stderr
    patches = _patches(spec_tus)
    assert [p.status for p in patches] == [204, 204, 460, 204, 204, 204]
    for patch in patches:
        algorithm, _, value = patch.headers["Upload-Checksum"].partition(" ")
        assert algorithm == "sha256" and len(base64.b64decode(value)) == 32
    assert patches[2].headers["Upload-Offset"] == patches[3].headers["Upload-Offset"]  # the same chunk again
    assert hashlib.md5(spec_tus.stored_bytes(result.summary["upload_id"])).hexdigest() == md5_file(src)


def test_concatenation_in_parallel(spec_tus: TusSpecServer, env: dict[str, str],
                                   make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("concat.bin", 47 * MiB + 13)
    result = tus_upload(env, src, spec_tus.url, tmp_path / "state", "--part-size", "5MiB", "--concurrency", "4")
    assert result.code == 0, result.stderr
    final = result.summary["upload_id"]
    described = head(final)
    concat = described.headers["Upload-Concat"]
    assert concat.startswith("final;") and len(concat.split(";", 1)[1].split()) == 4
    assert described.headers["Upload-Length"] == described.headers["Upload-Offset"] == str(src.stat().st_size)
    assert decode_metadata(described.headers["Upload-Metadata"])["filename"] == "concat.bin"
    assert hashlib.md5(spec_tus.stored_bytes(final)).hexdigest() == md5_file(src)
    posts = [r for r in spec_tus.requests if r.method == "POST"]
    assert sorted(r.headers["Upload-Concat"].split(";")[0] for r in posts) == ["final"] + ["partial"] * 4
    with_body = [r for r in spec_tus.requests if r.body_length > 0]
    assert sum(r.body_length for r in with_body) == src.stat().st_size  # each byte sent once
    assert all(r.headers["Upload-Checksum"].startswith("sha256 ") for r in with_body)
    assert len(_patches(spec_tus)) >= 4  # the partials were PATCHed chunk by chunk, not sent whole


def test_failed_patch_then_502_on_head(spec_tus: TusSpecServer, env: dict[str, str],
                                       make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("flaky.bin", 12 * MiB)
    spec_tus.fail_patch(nth=2, status=500, keep_bytes=1_000_000)
    spec_tus.fail_head_once(502)
    spec_tus.fail("PATCH", 423, nth=3)
    result = tus_upload(env, src, spec_tus.url, tmp_path / "state", "--part-size", "5MiB", "--concurrency", "1")
    assert result.code == 0, result.stderr
    assert spec_tus.counts["POST"] == 1  # never started over
    offsets = [int(p.headers["Upload-Offset"]) for p in _patches(spec_tus)]
    assert 5 * MiB + 1_000_000 in offsets  # continued from what the server kept of the failed PATCH
    assert hashlib.md5(spec_tus.stored_bytes(result.summary["upload_id"])).hexdigest() == md5_file(src)


# ----- the fault proxy: reset and stall mid-PATCH ------------------------------------------


@pytest.mark.parametrize("chunking", [(), ("--part-size", "16MiB")], ids=["streamed", "chunks"])
@pytest.mark.parametrize("rule", [Reset(after_bytes=40 * MiB, first=1), Stall(after_bytes=40 * MiB, first=1)],
                         ids=["reset", "stall"])
def test_link_faults_mid_patch(rule: Reset | Stall, chunking: tuple[str, ...], env: dict[str, str],
                               make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    size, chunk = 96 * MiB, 16 * MiB  # chunk: also more than the socket buffers a cut stream loses
    src = make_random_file("fault.bin", size)
    with TusNodeServer("file") as tus, FaultProxy("127.0.0.1", tus.port, rules=[rule], http=True) as proxy:
        url = proxy.url() + "/files/"
        result = tus_upload(env, src, url, tmp_path / "state", *chunking, "--stall-timeout", "3")
        assert result.code == 0, result.stderr
        stats = proxy.stats()
        kind = "reset" if isinstance(rule, Reset) else "stall"
        assert stats.faults[kind] == 1
        assert [r.method for r in stats.requests].count("POST") == 1  # no upload restarted from zero
        # Every byte the server stored left our socket at least once (counted when handed over).
        assert size <= result.summary["bytes_sent"] <= size + chunk
        assert result.summary["part_retries"] >= 1
        assert tus.stored_md5(result.summary["upload_id"]) == md5_file(src)


def _truncate(path: Path) -> None:
    os.truncate(path, 4 * MiB)


def _rewrite_sent_bytes(path: Path) -> None:
    with path.open("r+b") as fh:  # same size; bytes the server already has
        fh.seek(1000)
        fh.write(os.urandom(64))


@pytest.mark.parametrize("change", [_truncate, _rewrite_sent_bytes], ids=["truncated", "rewritten"])
def test_file_changed_while_streaming_stops_with_the_restart_hint(
        change: Callable[[Path], None], file_tus: TusNodeServer, env: dict[str, str],
        make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("moving.bin", 48 * MiB)
    state = tmp_path / "state"
    with FaultProxy("127.0.0.1", file_tus.port, rules=[Throttle(bytes_per_sec=16 * MiB)], http=True) as proxy:
        proc = start_upload(env, src, proxy.url() + "/files/", state)
        proxy.wait_for(lambda st: st.bytes_up > 8 * MiB, timeout=60)
        change(src)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert "changed while uploading" in stderr and "--restart" in stderr
        assert "Traceback" not in stderr and "FAILED AFTER ALL RETRIES" not in stderr
        [manifest] = manifests(state)  # kept: --restart (or abort) can still delete the upload
        reply = head(manifest["session"]["upload_url"])
    # The server must not hold a finished upload made of both versions (its on-finish hooks
    # would have run on it): the bytes that finish an upload go only from an unchanged file.
    assert reply.status_code == 200
    assert int(reply.headers["Upload-Offset"]) < int(reply.headers["Upload-Length"]) == 48 * MiB


def test_a_413_on_the_streamed_patch_switches_to_chunks(env: dict[str, str], make_random_file: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    src = make_random_file("limited.bin", 80 * MiB)
    # What @tus/file-store offers: no checksum (whose bodies stay bounded anyway).
    offered = ("creation", "creation-with-upload", "termination", "expiration")
    with TusSpecServer(max_body=40 * MiB, extensions=offered) as tus:
        # One upload (no concatenation), so the file goes by PATCH.
        result = tus_upload(env, src, tus.url, tmp_path / "state", "--concurrency", "1")
        assert result.code == 0, result.stderr
        statuses = [(p.body_length, p.status) for p in _patches(tus)]
        assert statuses[0] == (0, 413)  # refused before a byte of the body was read
        assert all(n <= 40 * MiB and status == 204 for n, status in statuses[1:])
        assert tus.counts["POST"] == 1
        assert hashlib.md5(tus.stored_bytes(result.summary["upload_id"])).hexdigest() == md5_file(src)
    assert "413" in result.stderr and "chunks" in result.stderr


def test_tus_chunks_may_be_smaller_than_s3_parts(env: dict[str, str], make_random_file: Callable[..., Path],
                                                tmp_path: Path) -> None:
    # tus has no 5 MiB minimum (that is S3's): 1 MiB PATCHes for a link that drops often.
    src = make_random_file("small-chunks.bin", 3 * MiB + 5)
    with TusSpecServer(extensions=("creation", "termination")) as tus:
        result = tus_upload(env, src, tus.url, tmp_path / "state", "--part-size", "1MiB")
        assert result.code == 0, result.stderr
        assert [p.body_length for p in _patches(tus)] == [MiB, MiB, MiB, 5]
        assert hashlib.md5(tus.stored_bytes(result.summary["upload_id"])).hexdigest() == md5_file(src)


def test_a_413_with_a_chosen_part_size_says_what_to_do(env: dict[str, str], make_random_file: Callable[..., Path],
                                                       tmp_path: Path) -> None:
    src = make_random_file("limited.bin", 16 * MiB)
    with TusSpecServer(max_body=6 * MiB) as tus:
        result = tus_upload(env, src, tus.url, tmp_path / "state", "--part-size", "8MiB", "--concurrency", "1")
    assert result.code == 1
    assert "413" in result.stderr and "smaller --part-size" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(manifests(tmp_path / "state")) == 1  # kept: the next run can go on


# ----- the sync fallback --------------------------------------------------------------------


def test_fallback_only_uploads_in_one_request(file_tus: TusNodeServer, env: dict[str, str],
                                              make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("once.bin", 20 * MiB)
    result = tus_upload(env, src, file_tus.url, tmp_path / "state", "--fallback", "only")
    assert result.code == 0, result.stderr
    assert result.summary["fallback_used"] is True
    assert file_tus.stored_md5(result.summary["upload_id"]) == md5_file(src)


def test_sync_fallback_sends_the_rest_in_one_patch(spec_tus: TusSpecServer, make_random_file: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    size = 17 * MiB
    src = make_random_file("rest.bin", size)
    spec_tus.fail("PATCH", 500, nth=2, times=100)  # the async path gets one chunk through, then fails
    with pytest.raises(UploadFailed):
        upload(str(src), spec_tus.url, protocol="tus", part_size="5MiB", retries=2, fallback="never", concurrency=1,
               state_dir=str(tmp_path / "state"))
    url = _patches(spec_tus)[0].path
    held = spec_tus.offset(url)
    assert held == 5 * MiB
    spec_tus.clear_faults()
    before = len(spec_tus.requests)

    options = UploadOptions(source=str(src), destination=spec_tus.url, protocol="tus",
                            state_dir=str(tmp_path / "state"))
    identity = FileIdentity.of(str(src))
    protocol = tus_protocol(options, identity.path)
    store = ManifestStore(tmp_path / "state", identity.path, protocol.destination())
    done = sync_fallback(protocol, identity, options, store, sleep=lambda _: None)

    later = [(r.method, r.body_length) for r in spec_tus.requests[before:]]
    assert later == [("OPTIONS", 0), ("HEAD", 0), ("PATCH", size - held)]  # the rest, in one PATCH
    assert done.upload_id is not None and done.upload_id.endswith(url)
    assert hashlib.md5(spec_tus.stored_bytes(url)).hexdigest() == md5_file(src)
    assert not store.path.exists()
