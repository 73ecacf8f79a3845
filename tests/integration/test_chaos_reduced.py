"""A reduced count of the chaos and kill suites inside the normal test command (the full counts:
`make chaos`), plus the regression tests for what the suites found."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.chaos import ALL_KINDS, run_chaos
from tests.chaos.kills import run_kills
from tests.conftest import write_random_file
from tests.integration.cli import REPO, cli_args, manifests, run_cli, s3_env
from tests.servers.fault_proxy import Corrupt, Direction, FaultProxy, Throttle

MiB = 1 << 20


@pytest.mark.timeout(240)
def test_chaos_reduced(seaweed: Any, seaweed_tls: Any, tmp_path: Path) -> None:
    """Every fault kind on at least one upload (the first len(ALL_KINDS) uploads force one each)."""
    figures = run_chaos(seaweed, seaweed_tls, uploads=len(ALL_KINDS) + 2, seed=6, work=tmp_path, max_size=24 * MiB)
    print(figures.render())
    assert figures.corrupted == 0
    assert figures.lost == 0
    assert figures.anomalies == []
    assert sum(figures.faults.values()) > 0
    assert figures.results["first-time"] + figures.results["resume"] == figures.uploads


@pytest.mark.timeout(300)
def test_kills_reduced(seaweed: Any, tmp_path: Path) -> None:
    """One kill aimed at each phase of a 64 MiB upload; the resume completes every time with a
    byte-identical object and re-sends at most (concurrency + 1) x part size."""
    figures = run_kills(seaweed, kills=5, seed=3, work=tmp_path, size=64 * MiB, part_size=8 * MiB, concurrency=2)
    print(figures.render())
    assert {k.target for k in figures.kills} == {"create", "parts", "complete", "manifest-write", "fallback"}
    assert all(k.resume_code == 0 and k.identical for k in figures.kills), figures.failures()
    assert not any(k.torn_manifest for k in figures.kills)
    assert all(k.within_bound for k in figures.kills), figures.failures()
    assert sum(k.landed.startswith("manifest write") for k in figures.kills) == 1


# -- regression tests for what the suites found -------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tls_proxy(seaweed_tls: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed_tls.s3_port) as proxy:
        yield proxy


def test_tls_record_corrupted_during_handshake_is_retried(seaweed_tls: Any, tls_proxy: FaultProxy,
                                                          tmp_path: Path) -> None:
    # TLS 1.3 sends the server's handshake (certificate, finished) in application-data records:
    # a flipped byte there fails the handshake the way a flaky link would. Only the first connection.
    tls_proxy.set_rules([Corrupt(after_bytes=0, direction=Direction.DOWN, first=1)])
    src = write_random_file(tmp_path / "f.bin", MiB, seed=11)
    key = seaweed_tls.unique_key("handshake")
    run = run_cli("upload", str(src), f"s3://{seaweed_tls.bucket}/{key}", "--endpoint-url", tls_proxy.url("https"),
                  "--ca-bundle", str(seaweed_tls.ca_file), "--state-dir", str(tmp_path / "state"),
                  "--fallback", "never", "--json", env=s3_env(seaweed_tls, tmp_path))
    assert tls_proxy.stats().faults["corrupt"] == 1
    assert run.code == 0, run.stderr
    assert run.summary["part_retries"] == 1
    assert seaweed_tls.get_object_bytes_md5(key).md5 == _md5(src)


def test_kill_after_the_server_completed_does_not_resend_the_file(seaweed: Any, tmp_path: Path) -> None:
    src = write_random_file(tmp_path / "f.bin", 30 * MiB, seed=12)
    key, state, env = seaweed.unique_key("completed"), tmp_path / "state", s3_env(seaweed, tmp_path)
    args = ("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--state-dir", str(state), "--part-size", "5MiB",
            "--concurrency", "3")
    # Every reply takes 1.5 s to come back: the server has completed the object well before
    # the client hears of it, and the kill falls in between.
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(latency_ms=1500, direction=Direction.DOWN)],
                    http=True) as proxy:
        proc = subprocess.Popen(cli_args(*args, "--endpoint-url", proxy.url()), env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not any(r.method == "POST" and "uploadId=" in r.query for r in proxy.stats().requests):
            assert proc.poll() is None and time.monotonic() < deadline, "no CompleteMultipartUpload"
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    assert seaweed.get_object_bytes_md5(key).md5 == _md5(src)  # the server has the whole object
    assert len(manifests(state)) == 1  # and the client did not know
    again = run_cli(*args, "--endpoint-url", seaweed.endpoint, "--json", env=env)
    assert again.code == 0, again.stderr
    assert seaweed.get_object_bytes_md5(key).md5 == _md5(src)
    assert again.summary["bytes_sent"] <= 3 * 5 * MiB  # the bound: concurrency x part size


def test_kill_during_a_manifest_write_leaves_no_litter(seaweed: Any, tmp_path: Path) -> None:
    from tests.chaos.harness import slow_disk_env
    from tests.chaos.kills import DirWatch

    src = write_random_file(tmp_path / "f.bin", 12 * MiB, seed=13)
    key, state, env = seaweed.unique_key("litter"), tmp_path / "state", s3_env(seaweed, tmp_path)
    args = ("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", seaweed.endpoint,
            "--state-dir", str(state), "--part-size", "5MiB")
    state.mkdir(mode=0o700)
    watch = DirWatch(state)
    try:  # a slow disk (fsync + 1 s) and inotify: the kill lands inside the first manifest write
        proc = subprocess.Popen(cli_args(*args), env=slow_disk_env(env, tmp_path, 1.0), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while ".tmp" not in (watch.next_created(30) or ""):
            assert proc.poll() is None
        proc.kill()
        proc.wait()
    finally:
        watch.close()
    assert list(state.glob("*.tmp*")), "the kill did not land inside the write"
    again = run_cli(*args, env=env)
    assert again.code == 0, again.stderr
    assert seaweed.get_object_bytes_md5(key).md5 == _md5(src)
    assert sorted(p.suffix for p in state.iterdir()) == []  # no temp file; the lock file went with its run
