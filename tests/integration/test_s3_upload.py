"""The walking skeleton against real SeaweedFS: uploads, kill -9 and resume, bad input.

Expected values come from the server (ListParts, GetObject) and from the file on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import md5_file
from tests.integration.cli import REPO, cli_args, manifests, popen_cli, run_cli, s3_env
from tests.integration.s3_checksums import composite_crc32, crc32_b64, object_crc32
from tests.servers.fault_proxy import FaultProxy, HttpRespond, Throttle

MiB = 1 << 20


@pytest.fixture
def env(seaweed: Any, tmp_path: Path) -> dict[str, str]:
    return s3_env(seaweed, tmp_path)


def _dest(seaweed: Any, name: str) -> str:
    return f"s3://{seaweed.bucket}/{seaweed.unique_key(name)}"


def _key(dest: str) -> str:
    return dest.split("/", 3)[3]


def _wait_for_parts(seaweed: Any, state: Path, key: str, want: int, proc: Any) -> list[dict[str, Any]]:
    """Poll the server until it holds `want` parts of the upload the manifest names."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "upload finished before it could be interrupted"
        found = manifests(state)
        if found and found[0]["session"].get("upload_id"):
            parts = seaweed.list_parts(key, found[0]["session"]["upload_id"])
            if len(parts) >= want:
                return list(parts)
        time.sleep(0.05)
    raise AssertionError("the server never reached the wanted part count")


def _kill_midway(seaweed: Any, env: dict[str, str], src: Path, dest: str, state: Path,
                 fraction: float, part_size: int, *extra: str) -> tuple[str, int]:
    proc = popen_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                     "--part-size", str(part_size), *extra, env=env)
    total_parts = -(-src.stat().st_size // part_size)
    _wait_for_parts(seaweed, state, _key(dest), int(total_parts * fraction) + 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    upload_id = manifests(state)[0]["session"]["upload_id"]
    # SeaweedFS lists a re-uploaded part once per upload: count each part number once.
    on_server = sum({p["PartNumber"]: p["Size"] for p in seaweed.list_parts(_key(dest), upload_id)}.values())
    return upload_id, on_server


def _settled(listing: Callable[[], dict[int, int]]) -> dict[int, int]:
    """The server finishes the parts whose bytes all arrived before the kill a moment later:
    list until two listings half a second apart agree."""
    last, deadline = listing(), time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = listing()
        if now == last:
            return now
        last = now
    return last


@pytest.mark.slow
def test_600mib_killed_and_resumed(seaweed: Any, env: dict[str, str], make_random_file: Callable[..., Path],
                                   tmp_path: Path) -> None:
    src = make_random_file("big.bin", 600 * MiB)
    dest, state, part_size, concurrency = _dest(seaweed, "big"), tmp_path / "state", 16 * MiB, 8
    upload_id, on_server = _kill_midway(seaweed, env, src, dest, state, 0.3, part_size)
    assert on_server >= 0.3 * src.stat().st_size
    size = src.stat().st_size
    planned = {n: min(part_size, size - (n - 1) * part_size) for n in range(1, 39)}
    # A part the kill cut short may be listed too: it does not count.
    whole = _settled(lambda: {p["PartNumber"]: p["Size"] for p in seaweed.list_parts(_key(dest), upload_id)
                              if p["Size"] == planned[p["PartNumber"]]})

    second = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                     "--json", "--concurrency", str(concurrency), env=env)
    assert second.code == 0, second.stderr
    summary = second.summary
    assert summary["resumed"] is True
    assert summary["upload_id"] == upload_id
    # The resume line counts what ListParts said after the kill, checkpointed or not.
    line = f"{len(whole)} of 38 parts ({sum(whole.values()) / MiB:.2f} MB) already on the server"
    assert line in second.stderr
    assert summary["bytes_sent"] <= src.stat().st_size - on_server + concurrency * part_size
    assert summary["bytes_resumed"] >= on_server - concurrency * part_size
    assert seaweed.get_object_bytes_md5(_key(dest)).md5 == md5_file(src)
    assert manifests(state) == []  # removed once the server confirmed the object
    assert seaweed.list_multipart_uploads(_key(dest)) == []


@pytest.mark.parametrize("checksum", [None, "md5"], ids=["default-crc32", "md5"])
@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 3 * 5 * MiB + 12345])
def test_sizes_round_trip(seaweed: Any, env: dict[str, str], make_random_file: Callable[..., Path],
                          tmp_path: Path, size: int, checksum: str | None) -> None:
    src = make_random_file(f"f{size}.bin", size)
    dest = _dest(seaweed, f"size{size}")
    flags = ["--checksum", checksum] if checksum else []
    run = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--part-size", "5MiB",
                  "--state-dir", str(tmp_path / "state"), "--json", *flags, env=env)
    assert run.code == 0, run.stderr
    got = seaweed.get_object_bytes_md5(_key(dest))
    assert (got.size, got.md5) == (size, md5_file(src))
    single = size < 5 * MiB
    if single:  # single PutObject: a plain md5 ETag, never a multipart "-N" one
        assert "-" not in seaweed.head_object(_key(dest))["ETag"]
    # The server kept the CRC-32 it verified (whole body, or composite of the parts); with
    # Content-MD5 only, it has none.
    expected = crc32_b64(src.read_bytes()) if single else composite_crc32(src, 5 * MiB)
    assert object_crc32(seaweed, _key(dest)) == (None if checksum == "md5" else expected)
    assert seaweed.list_multipart_uploads(_key(dest)) == []


def _kill_with_recorded_parts(seaweed: Any, env: dict[str, str], src: Path, dest: str, state: Path,
                              *extra: str) -> None:
    """Kill -9 once the manifest has recorded 2 parts and the server holds 4 (a link slowed
    to 4 MiB/s per connection, so that happens long before the end)."""
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(bytes_per_sec=4 * MiB)]) as slow:
        proc = popen_cli("upload", str(src), dest, "--endpoint-url", slow.url(), "--state-dir", str(state),
                         "--part-size", "5MiB", "--concurrency", "2", *extra, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "upload finished before it could be interrupted"
            found = manifests(state)
            recorded = [p for p in found[0]["parts"] if p["etag"]] if found else []
            if len(recorded) >= 2 and len(seaweed.list_parts(_key(dest), found[0]["session"]["upload_id"])) >= 4:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.05)
    raise AssertionError("the manifest never recorded 2 parts")


def _forget_one_recorded_part(state: Path, data: bytes, created_with: str) -> int:
    """Make the manifest forget a part the server has, as if the process had died between the
    server's reply and the manifest write; returns the part's number."""
    (path,) = state.glob("*.json")
    manifest = json.loads(path.read_text())
    assert manifest["session"]["checksum"] == created_with
    recorded = [p for p in manifest["parts"] if p["etag"]]
    for p in recorded:  # CRC-32s are kept exactly for uploads created with CRC32
        part_crc = crc32_b64(data[p["off"]:p["off"] + p["len"]])
        assert p.get("crc32") == (part_crc if created_with == "crc32" else None)
    forgotten = recorded[0]
    forgotten["etag"] = forgotten["xxh3"] = None
    forgotten.pop("crc32", None)
    path.write_text(json.dumps(manifest))
    return int(forgotten["n"])


@pytest.mark.parametrize(("first", "second"), [("crc32", "crc32"), ("md5", "md5"), ("crc32", "md5")])
def test_killed_and_resumed_completes_with_the_checksum_it_was_created_with(
        seaweed: Any, env: dict[str, str], make_random_file: Callable[..., Path], tmp_path: Path,
        first: str, second: str) -> None:
    """The resumed Complete needs the CRC-32 of parts the first process sent: from the
    manifest, or computed from the file for a part the manifest never recorded (SeaweedFS's
    ListParts has no ChecksumCRC32). A changed --checksum does not change a started upload."""
    src = make_random_file("k.bin", 60 * MiB)
    dest, state = _dest(seaweed, f"kill-{first}-{second}"), tmp_path / "state"
    _kill_with_recorded_parts(seaweed, env, src, dest, state, "--checksum", first)
    forgotten = _forget_one_recorded_part(state, src.read_bytes(), first)
    with FaultProxy("127.0.0.1", seaweed.s3_port, http=True) as proxy:  # to see what is re-sent
        run = run_cli("upload", str(src), dest, "--endpoint-url", proxy.url(), "--state-dir", str(state),
                      "--checksum", second, "--part-size", "8MiB", "--json", "-v", env=env)
        sent = [r.query for r in proxy.stats().requests if r.method == "PUT"]
    assert run.code == 0, run.stderr
    assert run.summary["resumed"] is True
    assert not [q for q in sent if q.startswith(f"partNumber={forgotten}&")], "a part the server had was re-sent"
    assert seaweed.get_object_bytes_md5(_key(dest)).md5 == md5_file(src)
    assert object_crc32(seaweed, _key(dest)) == (composite_crc32(src, 5 * MiB) if first == "crc32" else None)
    switched = "created with checksum crc32 and continues with it (--checksum md5 applies to new uploads)"
    assert (switched in run.stderr) == (first != second)
    assert "continues with its parts of 5.00 MB (--part-size applies to new uploads)" in run.stderr
    assert manifests(state) == []


class _CountingListener:
    """A port that counts connection attempts: proves no request was sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def accepted(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


def test_changed_file_refuses_to_resume_without_sending(seaweed: Any, env: dict[str, str],
                                                        make_random_file: Callable[..., Path],
                                                        tmp_path: Path) -> None:
    src = make_random_file("c.bin", 120 * MiB)
    dest, state = _dest(seaweed, "changed"), tmp_path / "state"
    _kill_midway(seaweed, env, src, dest, state, 0.3, 5 * MiB, "--concurrency", "2")
    with src.open("r+b") as fh:  # same size, one byte different
        fh.seek(77)
        old = fh.read(1)
        fh.seek(77)
        fh.write(bytes([old[0] ^ 0xFF]))
    listener = _CountingListener()
    run = run_cli("upload", str(src), dest, "--endpoint-url", listener.url, "--state-dir", str(state), env=env)
    assert run.code == 2
    assert "--restart" in run.stderr
    assert "Traceback" not in run.stderr
    assert listener.accepted() == 0
    assert len(manifests(state)) == 1  # kept: the user decides


def test_server_side_abort_starts_new_upload_once(seaweed: Any, env: dict[str, str],
                                                  make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("a.bin", 100 * MiB)
    dest, state = _dest(seaweed, "aborted"), tmp_path / "state"
    upload_id, _ = _kill_midway(seaweed, env, src, dest, state, 0.3, 5 * MiB, "--concurrency", "2")
    seaweed.s3.abort_multipart_upload(Bucket=seaweed.bucket, Key=_key(dest), UploadId=upload_id)
    run = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                  "--json", env=env)
    assert run.code == 0, run.stderr
    assert sum("no longer has" in line for line in run.stderr.splitlines()) == 1
    assert run.summary["upload_id"] != upload_id
    assert seaweed.get_object_bytes_md5(_key(dest)).md5 == md5_file(src)


def test_two_runs_on_one_file_second_fails_fast(seaweed: Any, env: dict[str, str],
                                                make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("two.bin", 200 * MiB)
    dest, state = _dest(seaweed, "two"), tmp_path / "state"
    args = ("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
            "--part-size", "5MiB", "--concurrency", "2")
    first = popen_cli(*args, env=env)
    _wait_for_parts(seaweed, state, _key(dest), 1, first)
    started = time.monotonic()
    second = run_cli(*args, env=env)
    assert time.monotonic() - started < 15
    assert second.code == 1
    assert f"process {first.pid}" in second.stderr
    assert first.wait(timeout=300) == 0
    assert seaweed.get_object_bytes_md5(_key(dest)).md5 == md5_file(src)


def test_state_is_private_and_secret_free(seaweed: Any, env: dict[str, str],
                                          make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("s.bin", 60 * MiB)
    dest, state = _dest(seaweed, "secret"), tmp_path / "state"
    env = dict(env)
    _, _ = _kill_midway(seaweed, env, src, dest, state, 0.2, 5 * MiB, "--concurrency", "1", "-v")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    manifest_files = list(state.glob("*.json"))
    assert len(manifest_files) == 1 and stat.S_IMODE(manifest_files[0].stat().st_mode) == 0o600
    manifest_text = manifest_files[0].read_text()
    run = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                  "--json", "-vv", env=env)
    assert run.code == 0, run.stderr
    for text in (manifest_text, run.stdout, run.stderr):
        assert seaweed.secret_key not in text
        assert "Signature=" not in text and "X-Amz-Signature" not in text
        assert "AWS4-HMAC-SHA256 Credential" not in text


def _one_line_error(run: Any) -> None:
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("chunkhaul: error:")]
    assert len(errors) == 1, run.stderr


@pytest.mark.parametrize(
    ("case", "code", "phrase"),
    [("missing", 2, "no such file"), ("directory", 2, "is a directory"), ("scheme", 2, "unknown destination")],
)
def test_bad_input(seaweed: Any, env: dict[str, str], tmp_path: Path, case: str, code: int, phrase: str) -> None:
    src, dest = tmp_path / "x.bin", _dest(seaweed, "bad")
    src.write_bytes(b"hello")
    if case == "missing":
        src = tmp_path / "nope.bin"
    elif case == "directory":
        src = tmp_path
    elif case == "scheme":
        dest = "gopher://host/file"
    run = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint,
                  "--state-dir", str(tmp_path / "state"), env=env)
    assert run.code == code, run.stderr
    assert phrase in run.stderr
    _one_line_error(run)


def test_unreadable_file(seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "secret.bin"
    src.write_bytes(b"x" * 100)
    src.chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    proc = subprocess.run([*prefix, *cli_args("upload", str(src), _dest(seaweed, "unreadable"), "--endpoint-url",
                                              seaweed.endpoint, "--state-dir", str(tmp_path / "state"))],
                          env=env, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_wrong_secret_is_not_retried(seaweed: Any, tmp_path: Path, make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("w.bin", 6 * MiB)
    env = s3_env(seaweed, tmp_path, AWS_SECRET_ACCESS_KEY="not-the-secret")
    run = run_cli("upload", str(src), _dest(seaweed, "wrong"), "--endpoint-url", seaweed.endpoint,
                  "--part-size", "5MiB", "--state-dir", str(tmp_path / "state"), env=env)
    assert run.code == 1, run.stderr
    assert "403" in run.stderr
    assert "Retrying" not in run.stderr
    _one_line_error(run)


def test_rewrite_keeping_size_and_mtime_is_caught_before_complete(seaweed: Any, env: dict[str, str],
                                                                   make_random_file: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    """cp -p, rsync -t or an unpacked archive can rewrite a file and keep its size and mtime:
    the identity check passes, the parts kept from the killed run must still be the file's."""
    src = make_random_file("same-mtime.bin", 60 * MiB)
    dest, state = _dest(seaweed, "same-mtime"), tmp_path / "state"
    _kill_with_recorded_parts(seaweed, env, src, dest, state)
    [manifest] = manifests(state)
    first_kept = min(int(p["n"]) for p in manifest["parts"] if p["etag"])
    offset = next(int(p["off"]) for p in manifest["parts"] if int(p["n"]) == first_kept)
    before = src.stat()
    with src.open("r+b") as fh:  # a byte the server already has, in a part the manifest recorded
        fh.seek(offset + 100)
        old = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([old[0] ^ 0xFF]))
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))

    run = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state), env=env)
    assert run.code == 2, run.stderr
    assert f"part {first_kept}" in run.stderr and "--restart" in run.stderr
    assert "Traceback" not in run.stderr
    assert len(manifests(state)) == 1  # kept
    assert seaweed.head_object(_key(dest)) is None  # never completed: no object made of two versions

    again = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                    "--restart", env=env)
    assert again.code == 0, again.stderr
    assert seaweed.get_object_bytes_md5(_key(dest)).md5 == md5_file(src)


def test_a_part_size_too_small_for_the_part_limit_grows_and_says_so(seaweed: Any, env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    """S3 allows at most 10,000 parts (S3 user guide, multipart limits): a 60 GiB file cannot go
    in 5 MiB parts, so the part size grows to ceil(60 GiB / 10,000) = 6.15 MiB, rounded up to
    7 MiB; the user who asked for 5 MiB is told. A sparse file; CreateMultipartUpload is refused
    (403 from the proxy) so nothing is sent."""
    src = tmp_path / "huge.bin"
    with open(src, "wb") as fh:
        fh.truncate(60 * 1024 * MiB)
    refuse = HttpRespond(status=403, method="POST", query="uploads",
                         body="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with FaultProxy("127.0.0.1", seaweed.s3_port, [refuse], http=True) as proxy:
        run = run_cli("upload", str(src), _dest(seaweed, "huge"), "--endpoint-url", proxy.url(),
                      "--state-dir", str(tmp_path / "state"), "--part-size", "5MiB", "--fallback", "never", env=env)
    assert run.code == 1, run.stderr
    # 60 GiB / 10,000 parts = 6.14 MiB, rounded up to whole MiB; said as --part-size takes it
    assert ("--part-size 5MiB does not fit the target's limits (at most 10,000 parts of at least 5MiB): "
            "using parts of 7MiB") in run.stderr


def test_a_redirected_part_is_not_sent_on_elsewhere(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                    make_random_file: Callable[..., Path]) -> None:
    """S3 answers 307 TemporaryRedirect while a new bucket's DNS settles. Following it would send
    the part's body, signed for this host, to another one; the 307 comes back as the error."""
    src = make_random_file("moved.bin", 11 * MiB)
    body = "<Error><Code>TemporaryRedirect</Code><Message>Please re-send this request</Message></Error>"
    with FaultProxy("127.0.0.1", seaweed.s3_port, [], http=True) as proxy:
        moved = HttpRespond(status=307, method="PUT", query="partNumber=2", body=body,
                            headers={"Location": proxy.url() + "/elsewhere/moved.bin"})
        proxy.set_rules([moved])
        run = run_cli("upload", str(src), _dest(seaweed, "moved"), "--endpoint-url", proxy.url(), "--part-size",
                      "5MiB", "--concurrency", "1", "--state-dir", str(tmp_path / "state"), env=env)
        seen = [(r.method, r.path, r.status) for r in proxy.stats().requests]
    assert run.code == 1, run.stderr
    assert "UploadPart 2: HTTP 307 TemporaryRedirect" in run.stderr.strip().splitlines()[-1]
    assert not [s for s in seen if s[1].startswith("/elsewhere")], seen
    assert [s[2] for s in seen if s[0] == "PUT"].count(307) == 1
