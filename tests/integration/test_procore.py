"""`chunkhaul upload FILE procore://...` as a user runs it (a subprocess), against the Procore
emulator (tests/servers/procore_emulator.py) backed by a real SeaweedFS, with the fault proxy
between the client and storage where a test needs a bad link.

Expected values come from the servers: object md5s are read back from SeaweedFS, request
counts and times from the emulator's log, fault counts from the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import md5_file
from tests.integration.cli import manifests, popen_cli, run_cli
from tests.servers.fault_proxy import Corrupt, Direction, FaultProxy, HttpRespond, Rule, Throttle
from tests.servers.procore_emulator import ProcoreEmulator

MiB = 1 << 20
TOKEN = "tok-SECRET-5f3a9c1e"
COMPANY, PROJECT = 1, 10
V21_DEST = f"procore://{COMPANY}/projects/{PROJECT}"
V11_DEST = f"procore://{COMPANY}"
EXPIRED_XML = (b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>AccessDenied</Code>"
               b"<Message>Request has expired</Message></Error>")


@pytest.fixture
def procore(seaweed: Any) -> Iterator[ProcoreEmulator]:
    with ProcoreEmulator(seaweed, tokens=(TOKEN,), companies={COMPANY: (PROJECT,)}) as emulator:
        yield emulator
        # Every storage request of every test: never a token (contract, "Every API call").
        assert not any(r.has_authorization for r in emulator.requests if r.side == "storage")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKHAUL_", "PROCORE_"))}
    return {**clean, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "PROCORE_ACCESS_TOKEN": TOKEN}


class Cli:
    """The command line a user types, with the emulator's base URL and a private state dir."""

    def __init__(self, procore: ProcoreEmulator, env: dict[str, str], state: Path) -> None:
        self.procore, self.env, self.state = procore, env, state

    def args(self, src: Path, dest: str, *extra: str) -> list[str]:
        return ["upload", str(src), dest, "--procore-base-url", self.procore.base_url,
                "--state-dir", str(self.state), *extra]

    def run(self, src: Path, dest: str, *extra: str, env: dict[str, str] | None = None) -> Any:
        return run_cli(*self.args(src, dest, *extra), env=env or self.env)

    def popen(self, src: Path, dest: str, *extra: str) -> subprocess.Popen[str]:
        return popen_cli(*self.args(src, dest, *extra), env=self.env)


@pytest.fixture
def cli(procore: ProcoreEmulator, env: dict[str, str], tmp_path: Path) -> Cli:
    return Cli(procore, env, tmp_path / "state")


@contextmanager
def storage_through(procore: ProcoreEmulator, rules: list[Rule], http: bool = False) -> Iterator[FaultProxy]:
    """Put the fault proxy between the client and the storage front: the part URLs (and the
    POST form URL) the emulator hands out from now on point at the proxy."""
    front = urlsplit(procore.storage_url)
    with FaultProxy(front.hostname or "127.0.0.1", front.port or 80, rules, http=http) as proxy:
        procore.storage_url = proxy.url()
        try:
            yield proxy
        finally:
            procore.storage_url = f"{front.scheme}://{front.netloc}"


def summary(run: Any) -> dict[str, Any]:
    assert run.code == 0, run.stderr
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


def wait_for_puts(procore: ProcoreEmulator, want: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 180
    while procore.count(side="storage", method="PUT", status=200) < want:
        assert proc.poll() is None, f"upload ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the upload never reached the wanted part count"
        time.sleep(0.05)


def wait_for_recorded(state: Path, want: int, proc: subprocess.Popen[str]) -> None:
    """Until the manifest on disk holds `want` ETags: v2.1 cannot list storage, so only
    recorded parts can count as resumed, and the manifest is written at most once a second."""
    deadline = time.monotonic() + 180
    while sum(p["etag"] is not None for m in manifests(state) for p in m["parts"]) < want:
        assert proc.poll() is None, f"upload ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "the manifest never recorded the wanted part count"
        time.sleep(0.05)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


# -- 600 MiB, SIGKILL mid-upload, resume ------------------------------------------------------


@pytest.mark.slow
def test_v21_600mib_killed_and_resumed(procore: ProcoreEmulator, cli: Cli,
                                       make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 600 * MiB)
    part, total = 16 * MiB, 38
    proc = cli.popen(src, V21_DEST, "--part-size", "16MiB", "--concurrency", "4")
    wait_for_recorded(cli.state, 8, proc)
    kill(proc)
    upload_id = manifests(cli.state)[0]["session"]["upload_id"]
    api_before = len([r for r in procore.requests if r.side == "api"])

    s = summary(cli.run(src, V21_DEST, "--json", "--part-size", "16MiB", "--concurrency", "4"))
    assert s["resumed"] is True and s["upload_id"] == upload_id and s["parts"] == total
    assert s["bytes_resumed"] >= 8 * part
    assert s["bytes_sent"] <= src.stat().st_size - s["bytes_resumed"] + 4 * part
    assert procore.object_md5(upload_id) == md5_file(src)
    assert procore.upload(upload_id).status == "available"
    # The resumed run's first API call is the GET that renews the URLs of unrecorded parts.
    second = [r for r in procore.requests if r.side == "api"][api_before:]
    assert (second[0].method, second[0].status) == ("GET", 200)
    assert procore.count(side="api", method="POST") == 1  # no second upload was created
    assert manifests(cli.state) == []


@pytest.mark.slow
def test_v11_600mib_killed_and_resumed(procore: ProcoreEmulator, cli: Cli,
                                       make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 600 * MiB)
    proc = cli.popen(src, V11_DEST, "--part-size", "16MiB", "--concurrency", "4")
    wait_for_recorded(cli.state, 4, proc)
    kill(proc)
    stored = manifests(cli.state)[0]["session"]
    assert stored["api"] == "v1.1" and len(stored["urls"]) == 38  # v1.1 cannot fetch them again

    run = cli.run(src, V11_DEST, "--json", "--part-size", "16MiB", "--concurrency", "4")
    s = summary(run)
    assert s["resumed"] is True and s["upload_id"] == stored["upload_id"]
    # v1.1 has no ListParts: only parts the manifest recorded (checkpointed each second) count.
    assert s["bytes_resumed"] >= 4 * 16 * MiB
    assert procore.object_md5(stored["upload_id"]) == md5_file(src)
    assert procore.count(side="api", method="POST") == 1
    assert procore.count(side="api", method="GET") == 0  # v1.1 has no GET
    assert "X-Amz-Signature" not in run.stderr  # stored URLs never reach a log line
    assert manifests(cli.state) == []


def test_abort_takes_the_procore_options_and_forgets_the_upload(
        procore: ProcoreEmulator, cli: Cli, env: dict[str, str], make_random_file: Callable[..., Path],
        tmp_path: Path) -> None:
    src = make_random_file("plans.bin", 64 * MiB)
    with storage_through(procore, [Throttle(bytes_per_sec=8 * MiB, direction=Direction.UP)]):
        proc = cli.popen(src, V21_DEST, "--part-size", "8MiB", "--concurrency", "1")
        wait_for_recorded(cli.state, 1, proc)
        kill(proc)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    no_env = {k: v for k, v in env.items() if k != "PROCORE_ACCESS_TOKEN"}
    api_before = procore.count(side="api")
    run = run_cli("abort", str(src), V21_DEST, "--procore-base-url", procore.base_url, "--state-dir",
                  str(cli.state), "--token-file", str(token_file), "--json", env=no_env)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {"aborted": True}
    assert manifests(cli.state) == []
    assert procore.count(side="api") == api_before  # Procore has no delete: unfinished uploads expire


def test_v11_resume_after_the_start_window_creates_a_new_upload(
        procore: ProcoreEmulator, cli: Cli, make_random_file: Callable[..., Path]) -> None:
    procore.start_window_s = 4  # stands for uploads.md's one hour
    src = make_random_file("plans.bin", 96 * MiB)
    # The stored URLs name the proxy: it stays up (without rules) for the second run.
    with storage_through(procore, [Throttle(bytes_per_sec=8 * MiB, direction=Direction.UP)]) as proxy:
        proc = cli.popen(src, V11_DEST, "--part-size", "8MiB", "--concurrency", "1")
        wait_for_puts(procore, 2, proc)
        kill(proc)
        proxy.clear_rules()
        first = manifests(cli.state)[0]["session"]["upload_id"]
        time.sleep(max(0.0, procore.upload(first).created_at + 4.5 - time.time()))
        procore.start_window_s = 3600  # the new upload gets the documented hour
        run = cli.run(src, V11_DEST, "--json")
    s = summary(run)
    assert s["upload_id"] != first and s["resumed"] is False, run.stderr
    lines = [line for line in run.stderr.splitlines() if "creating a new upload" in line]
    assert len(lines) == 1 and "expired" in lines[0]
    assert procore.count(side="api", method="POST") == 2
    assert procore.object_md5(s["upload_id"]) == md5_file(src)
    assert "Hashing" not in run.stderr  # the digests came from the manifest


# -- URLs expiring, rate limits, corruption ----------------------------------------------------


def test_v21_urls_expiring_every_10s_on_a_slow_link(procore: ProcoreEmulator, cli: Cli,
                                                   make_random_file: Callable[..., Path]) -> None:
    procore.url_expiry_s = 10
    src = make_random_file("plans.bin", 48 * MiB + 3)
    with storage_through(procore, [Throttle(bytes_per_sec=1.5 * MiB, direction=Direction.UP)]) as proxy:
        run = cli.run(src, V21_DEST, "--json", "--part-size", "8MiB", "--concurrency", "2")
    s = summary(run)
    started = min(r.at for r in procore.requests)
    assert time.time() - started > 12, "the link was not slow enough for URLs to expire"
    assert proxy.stats().faults["throttle"] >= 1
    renewals = [line for line in run.stderr.splitlines() if line.startswith("Renewed")]
    assert renewals, run.stderr
    assert s["part_retries"] == 0 and "Retrying" not in run.stderr
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_v21_expired_url_answer_is_renewed_not_retried(procore: ProcoreEmulator, cli: Cli,
                                                      make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 30 * MiB)
    rule = HttpRespond(method="PUT", status=403, body=EXPIRED_XML, first=1)
    with storage_through(procore, [rule], http=True) as proxy:
        run = cli.run(src, V21_DEST, "--json", "--part-size", "8MiB")
    s = summary(run)
    assert proxy.stats().faults["respond"] == 1
    assert s["part_retries"] == 0
    assert any(line.startswith("Renewed") and "expired" in line for line in run.stderr.splitlines())
    # create, GET (renewal), PATCH, GET (status) until available
    assert procore.count(side="api", method="GET") >= 2
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_429_waits_until_the_reset_then_continues(procore: ProcoreEmulator, cli: Cli,
                                                 make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 12 * MiB)
    procore.rate_limit_next(1, reset_in_s=3)
    s = summary(cli.run(src, V21_DEST, "--json"))
    api = [r for r in procore.requests if r.side == "api"]
    assert api[0].status == 429 and api[1].method == "POST" and api[1].status == 201
    # X-Rate-Limit-Reset = ceil(time of the 429 + 3): the retry may not come earlier.
    assert api[1].at - api[0].at >= 2.9
    assert s["part_retries"] == 1
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_503_retry_after_is_honoured(procore: ProcoreEmulator, cli: Cli,
                                     make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 12 * MiB)
    procore.unavailable_next(1, retry_after_s=2)
    s = summary(cli.run(src, V21_DEST, "--json"))
    api = [r for r in procore.requests if r.side == "api"]
    assert api[0].status == 503 and api[1].at - api[0].at >= 1.9
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_corrupted_segment_is_refused_by_storage_and_resent(procore: ProcoreEmulator, cli: Cli,
                                                           make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("plans.bin", 40 * MiB)
    # One byte of the first connection's upload stream flipped, inside the first part's body.
    with storage_through(procore, [Corrupt(after_bytes=1 * MiB, tls=False, first=1)]) as proxy:
        run = cli.run(src, V21_DEST, "--json", "--part-size", "8MiB")
    s = summary(run)
    assert proxy.stats().faults["corrupt"] == 1
    assert procore.count(side="storage", method="PUT", status=400) == 1  # storage refused the damaged body
    assert s["part_retries"] == 1
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


# -- single shot -------------------------------------------------------------------------------


def test_fallback_only_sends_the_s3_post_form(procore: ProcoreEmulator, cli: Cli,
                                              make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("drawing.pdf", 12 * MiB + 7)
    s = summary(cli.run(src, V21_DEST, "--json", "--fallback", "only"))
    assert s["fallback_used"] is True
    upload = procore.upload(s["upload_id"])
    assert upload.flavor == "v1.1-single" and upload.status == "complete"
    assert upload.content_type == "application/pdf"
    assert procore.count(side="storage", method="POST", status=204) == 1
    assert procore.count(side="storage", method="PUT") == 0
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_empty_file_goes_up_as_a_post_form(procore: ProcoreEmulator, cli: Cli,
                                           make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("empty.bin", 0)
    s = summary(cli.run(src, V21_DEST, "--json"))
    assert procore.object_md5(s["upload_id"]) == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("size", [1, 5 * MiB, 5 * MiB + 1, 10 * MiB + 2])
def test_sizes_round_trip(procore: ProcoreEmulator, cli: Cli, make_random_file: Callable[..., Path],
                          size: int) -> None:
    src = make_random_file(f"f{size}.bin", size)
    s = summary(cli.run(src, V21_DEST, "--json", "--part-size", "5MiB"))
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def _rewrite_in_place(path: Path, offset: int, length: int) -> None:
    """Other bytes at [offset, offset + length), with the same size, inode and mtime: what
    cp -p, rsync -t or an unpacked archive leave, which the identity check cannot see."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


@pytest.mark.parametrize("dest", [V21_DEST, V11_DEST], ids=["v2.1", "v1.1"])
def test_kept_part_changed_with_size_and_mtime_kept_is_not_completed(
        procore: ProcoreEmulator, cli: Cli, make_random_file: Callable[..., Path], dest: str) -> None:
    src = make_random_file("plans.bin", 48 * MiB)
    # The stored v1.1 URLs name the proxy: it stays up (without rules) for the second run.
    with storage_through(procore, [Throttle(bytes_per_sec=8 * MiB, direction=Direction.UP)]) as proxy:
        proc = cli.popen(src, dest, "--part-size", "8MiB", "--concurrency", "1")
        wait_for_recorded(cli.state, 2, proc)
        kill(proc)
        proxy.clear_rules()
        (manifest,) = manifests(cli.state)
        kept = next(p for p in manifest["parts"] if p["etag"] is not None)
        _rewrite_in_place(src, kept["off"] + 1000, 4096)
        run = cli.run(src, dest)
    assert run.code == 2, run.stderr
    line = one_line_error(run)
    assert "--restart" in line and f"part {kept['n']}" in line and "Traceback" not in run.stderr
    upload_id = manifest["session"]["upload_id"]
    assert procore.upload(upload_id).status not in ("complete", "available")  # never completed
    assert [m["session"]["upload_id"] for m in manifests(cli.state)] == [upload_id]  # manifest kept


# -- errors a user can act on -------------------------------------------------------------------


def one_line_error(run: Any) -> str:
    errors = [line for line in run.stderr.splitlines() if line.startswith("chunkhaul: error:")]
    assert len(errors) == 1, run.stderr
    return errors[0]


def test_missing_token(cli: Cli, env: dict[str, str], make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("a.bin", 1000)
    no_token = {k: v for k, v in env.items() if k != "PROCORE_ACCESS_TOKEN"}
    run = cli.run(src, V21_DEST, env=no_token)
    assert run.code == 2
    line = one_line_error(run)
    assert "PROCORE_ACCESS_TOKEN" in line and "--token-file" in line


def test_wrong_company(procore: ProcoreEmulator, cli: Cli, make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("a.bin", 6 * MiB)
    run = cli.run(src, "procore://999/projects/10")
    assert run.code == 1
    line = one_line_error(run)
    assert "company 999" in line and "installed" in line and "403" in line


def test_wrong_project(procore: ProcoreEmulator, cli: Cli, make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("a.bin", 6 * MiB)
    run = cli.run(src, f"procore://{COMPANY}/projects/77")
    assert run.code == 1 and "project 77" in one_line_error(run)


def test_expired_token_stops_with_the_fix_then_a_fresh_token_resumes(
        procore: ProcoreEmulator, cli: Cli, env: dict[str, str], make_random_file: Callable[..., Path],
        tmp_path: Path) -> None:
    src = make_random_file("plans.bin", 48 * MiB)
    with storage_through(procore, [Throttle(bytes_per_sec=8 * MiB, direction=Direction.UP)]):
        proc = cli.popen(src, V21_DEST, "--part-size", "8MiB", "--concurrency", "1", "-v", "--json")
        wait_for_puts(procore, 1, proc)
        procore.expire_token(TOKEN)  # tokens last 1.5 hours; this one just ran out
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("chunkhaul: error:")]
    assert len(errors) == 1 and "401" in errors[0] and "PROCORE_ACCESS_TOKEN" in errors[0]
    assert "1.5 hours" in errors[0] and "resume" in errors[0]
    manifest_text = "".join(p.read_text() for p in cli.state.glob("*.json"))
    assert manifest_text and TOKEN not in manifest_text
    assert TOKEN not in out and TOKEN not in err

    fresh = "tok-FRESH-77aa"
    procore.add_token(fresh)
    token_file = tmp_path / "token"
    token_file.write_text(fresh + "\n")
    no_env = {k: v for k, v in env.items() if k != "PROCORE_ACCESS_TOKEN"}
    run = cli.run(src, V21_DEST, "--json", "-v", "--token-file", str(token_file), env=no_env)
    s = summary(run)
    assert s["resumed"] is True
    assert fresh not in run.stdout + run.stderr and TOKEN not in run.stdout + run.stderr
    assert procore.object_md5(s["upload_id"]) == md5_file(src)


def test_content_type_option_reaches_procore(procore: ProcoreEmulator, cli: Cli,
                                             make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("scan.pdf", 6 * MiB)
    s = summary(cli.run(src, V21_DEST, "--json", "--content-type", "image/tiff"))
    assert procore.upload(s["upload_id"]).content_type == "image/tiff"
    assert procore.object_md5(s["upload_id"]) == md5_file(src)
