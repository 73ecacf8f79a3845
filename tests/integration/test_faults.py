"""Retries, stalls and the sync fallback, proven through the fault proxy against real SeaweedFS
(over TLS for the link faults, so the TLS stack itself rejects corrupted records)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli import manifests, popen_cli, run_cli, s3_env
from tests.integration.s3_checksums import composite_crc32, crc32_b64, object_crc32
from tests.servers.fault_proxy import Corrupt, FaultProxy, HttpDrop, HttpRespond, Reset, Stall, Throttle

MiB = 1 << 20


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tls_proxy(seaweed_tls: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed_tls.s3_port) as proxy:
        yield proxy


@pytest.fixture
def http_proxy(seaweed: Any) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", seaweed.s3_port, http=True) as proxy:
        yield proxy


def _tls_args(server: Any, proxy: FaultProxy, state: Path) -> list[str]:
    return ["--endpoint-url", proxy.url("https"), "--ca-bundle", str(server.ca_file), "--state-dir", str(state)]


def test_tls_corruption_exhausts_async_then_sync_fallback_succeeds(
        seaweed_tls: Any, tls_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    # One part in flight, so the async path consumes exactly its 5 attempts' connections
    # and the single shot gets the first clean one (with more, cancelled parts use fewer).
    concurrency = 1
    tls_proxy.set_rules([Corrupt(after_bytes=MiB, first=5 * concurrency)])
    src = make_random_file("tls.bin", 12 * MiB)
    key = seaweed_tls.unique_key("tlsfallback")
    run = run_cli("upload", str(src), f"s3://{seaweed_tls.bucket}/{key}", *_tls_args(seaweed_tls, tls_proxy,
                  tmp_path / "state"), "--part-size", "5MiB", "--concurrency", str(concurrency),
                  "--sync-delay", "0.2", "--json", env=s3_env(seaweed_tls, tmp_path))
    assert run.code == 0, run.stderr
    summary = run.summary
    assert summary["fallback_used"] is True
    # The alert can be lost when the server closes at once (the client then sees a disconnect);
    # the retries' lines still name the TLS error.
    assert summary["fallback_reason"].get("ssl_reason") in ("SSLV3_ALERT_BAD_RECORD_MAC", None)
    assert tls_proxy.stats().faults["corrupt"] >= 5
    lines = run.stderr.splitlines()
    for expected in ("ASYNC UPLOAD FAILED AFTER ALL RETRIES", "Falling back to synchronous upload...",
                     "Upload timeout set to 300s for 12.00 MB file", "Sync upload attempt 1/3..."):
        assert any(expected in line for line in lines), expected
    assert any("SSLV3_ALERT_BAD_RECORD_MAC" in line for line in lines)
    assert any(line.startswith("UPLOAD SUCCEEDED VIA SYNC FALLBACK") for line in lines)
    assert seaweed_tls.get_object_bytes_md5(key).md5 == md5_file(src)
    assert object_crc32(seaweed_tls, key) == crc32_b64(src.read_bytes())  # the PutObject carried its CRC-32
    assert seaweed_tls.list_multipart_uploads(key) == []  # the chunked upload was aborted
    assert manifests(tmp_path / "state") == []


def test_resets_on_30_percent_of_connections_chunked_path_copes(
        seaweed_tls: Any, tls_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tls_proxy.set_rules([Reset(after_bytes=off, probability=0.1) for off in (300_000, 2 * MiB + 17, 4 * MiB)])
    src = make_random_file("resets.bin", 60 * MiB)
    key = seaweed_tls.unique_key("resets")
    for name, value in s3_env(seaweed_tls, tmp_path).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    from uploader import upload

    seen: list[int] = []
    result = upload(str(src), f"s3://{seaweed_tls.bucket}/{key}", endpoint_url=tls_proxy.url("https"),
                    ca_bundle=str(seaweed_tls.ca_file), state_dir=str(tmp_path / "state"), part_size="5MiB",
                    concurrency=4, fallback="never", progress=lambda done, total: seen.append(done))
    assert tls_proxy.stats().faults["reset"] >= 1
    assert result.part_retries >= 1 and not result.fallback_used
    assert max(seen) == src.stat().st_size and seen == sorted(seen)
    assert seaweed_tls.get_object_bytes_md5(key).md5 == md5_file(src)


def test_stall_is_detected_and_the_part_retried(
        seaweed_tls: Any, tls_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    tls_proxy.set_rules([Stall(after_bytes=2 * MiB, nth=2)])
    src = make_random_file("stall.bin", 20 * MiB)
    key = seaweed_tls.unique_key("stall")
    started = time.monotonic()
    run = run_cli("upload", str(src), f"s3://{seaweed_tls.bucket}/{key}", *_tls_args(seaweed_tls, tls_proxy,
                  tmp_path / "state"), "--part-size", "5MiB", "--concurrency", "2", "--stall-timeout", "3",
                  "--fallback", "never", "--json", env=s3_env(seaweed_tls, tmp_path))
    elapsed = time.monotonic() - started
    assert run.code == 0, run.stderr
    assert tls_proxy.stats().faults["stall"] == 1
    assert "stalled, no bytes moved for 3s" in run.stderr
    assert run.summary["part_retries"] >= 1
    assert elapsed < 30  # detected at ~3 s, not at a 300 s default
    assert seaweed_tls.get_object_bytes_md5(key).md5 == md5_file(src)


def _kill_after_first_part(server: Any, env: dict[str, str], src: Path, dest: str, state: Path) -> None:
    proc = popen_cli("upload", str(src), dest, "--endpoint-url", server.endpoint, "--state-dir", str(state),
                     "--part-size", "5MiB", "--concurrency", "1", env=env)
    key = dest.split("/", 3)[3]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = manifests(state)
        if found and found[0]["session"].get("upload_id") and server.list_parts(key, found[0]["session"]["upload_id"]):
            proc.kill()
            proc.wait()
            return
        time.sleep(0.02)
    raise AssertionError("no part reached the server")


def test_sync_deadline_cuts_a_trickling_link_and_manifest_survives(
        seaweed: Any, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("trickle.bin", 40 * MiB)
    key, state, env = seaweed.unique_key("trickle"), tmp_path / "state", s3_env(seaweed, tmp_path)
    dest = f"s3://{seaweed.bucket}/{key}"
    _kill_after_first_part(seaweed, env, src, dest, state)
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(bytes_per_sec=64 * 1024)]) as slow:
        started = time.monotonic()
        run = run_cli("upload", str(src), dest, "--endpoint-url", slow.url(), "--state-dir", str(state),
                      "--fallback", "only", "--sync-deadline", "1.5", "--sync-delay", "0.2", env=env)
        elapsed = time.monotonic() - started
    assert run.code == 1, run.stderr
    assert [f"Sync upload attempt {n}/3..." in run.stderr for n in (1, 2, 3)] == [True, True, True]
    attempts = [line for line in run.stderr.splitlines() if line.startswith("Sync upload attempt") and "failed" in line]
    # The deadline as the user gave it, not rounded to "2s" (or "0s" for 0.5).
    assert "Upload timeout set to 1.5s for 40.00 MB file" in run.stderr
    assert len(attempts) == 3 and all("deadline of 1.5s reached" in line for line in attempts)
    assert 4.5 <= elapsed < 20  # three 1.5 s attempts, not 40 MiB at 64 KiB/s (10 min)
    assert "run the same command again to resume" in run.stderr.splitlines()[-1]
    assert len(manifests(state)) == 1
    again = run_cli("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                    "--json", env=env)
    assert again.code == 0, again.stderr
    assert again.summary["resumed"] is True and again.summary["bytes_resumed"] >= 5 * MiB
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)


@pytest.mark.parametrize("status", [403, 413])
def test_fallback_refusal_is_not_retried(seaweed: Any, http_proxy: FaultProxy, status: int,
                                         make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    http_proxy.set_rules([HttpRespond(status=status, method="PUT",
                                      body=f"<Error><Code>E{status}</Code><Message>no</Message></Error>")])
    src = make_random_file("refused.bin", 6 * MiB)
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{seaweed.unique_key('refused')}", "--endpoint-url",
                  http_proxy.url(), "--state-dir", str(tmp_path / "s"), "--fallback", "only", "--sync-delay", "0",
                  env=s3_env(seaweed, tmp_path))
    assert run.code == 1
    assert f"HTTP {status} E{status}" in run.stderr
    assert "Sync upload attempt 2/3" not in run.stderr
    assert len([r for r in http_proxy.stats().requests if r.method == "PUT"]) == 1
    assert "Traceback" not in run.stderr


def test_fallback_never_keeps_manifest_and_only_skips_multipart(
        seaweed: Any, http_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("modes.bin", 12 * MiB)
    key, state, env = seaweed.unique_key("modes"), tmp_path / "state", s3_env(seaweed, tmp_path)
    http_proxy.set_rules([Reset(after_bytes=MiB, probability=1.0)])
    never = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                    "--state-dir", str(state), "--part-size", "5MiB", "--retries", "2", "--fallback", "never",
                    env=env)
    assert never.code == 1 and "ASYNC UPLOAD FAILED" not in never.stderr
    assert "run the same command again to resume" in never.stderr
    assert len(manifests(state)) == 1
    http_proxy.set_rules([])
    http_proxy.reset_stats()
    only = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                   "--state-dir", str(state), "--fallback", "only", "--json", env=env)
    assert only.code == 0, only.stderr
    requests = http_proxy.stats().requests
    assert [(r.method, "partNumber" in r.query) for r in requests if r.method in ("PUT", "POST")] == [("PUT", False)]
    assert any(r.method == "DELETE" and "uploadId" in r.query for r in requests)  # leftover multipart aborted
    assert only.summary["fallback_used"] is True
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)
    assert manifests(state) == [] and seaweed.list_multipart_uploads(key) == []


@pytest.mark.parametrize("checksum", ["crc32", "md5"])
def test_a_byte_flipped_in_flight_is_refused_by_the_server_and_the_part_resent(
        seaweed: Any, http_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path,
        checksum: str) -> None:
    """Plain HTTP, so only the part checksum stands between a flipped byte and the object."""
    http_proxy.set_rules([Corrupt(after_bytes=MiB, tls=False, first=1)])  # inside part 1's body
    src = make_random_file("flip.bin", 12 * MiB)
    key = seaweed.unique_key(f"flip-{checksum}")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                  "--state-dir", str(tmp_path / "s"), "--part-size", "5MiB", "--concurrency", "1",
                  "--checksum", checksum, "--json", env=s3_env(seaweed, tmp_path))
    assert run.code == 0, run.stderr
    assert http_proxy.stats().faults["corrupt"] == 1
    part1 = [r.upstream_status for r in http_proxy.stats().requests
             if r.method == "PUT" and r.query.startswith("partNumber=1&")]
    assert part1 == [400, 200]  # SeaweedFS refused the damaged body (BadDigest); the resend was stored
    assert "BadDigest" in run.stderr and run.summary["part_retries"] == 1
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)
    assert object_crc32(seaweed, key) == (composite_crc32(src, 5 * MiB) if checksum == "crc32" else None)


# Recorded refusals of x-amz-checksum headers (see tests/unit/test_s3_protocol.py for sources).
R2_REFUSAL = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>Header "
              "'x-amz-checksum-algorithm' with value 'CRC32C' not implemented</Message></Error>")
B2_REFUSAL = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n    <Code>InvalidArgument</Code>\n    "
              "<Message>Unsupported header 'x-amz-checksum-crc32' received for this API call.</Message>\n</Error>")


@pytest.mark.parametrize(("size", "refusal"), [
    (12 * MiB, HttpRespond(status=501, body=R2_REFUSAL, method="POST", query="uploads", first=1)),
    (MiB, HttpRespond(status=400, body=B2_REFUSAL, method="PUT", first=1)),
], ids=["CreateMultipartUpload-r2", "PutObject-b2"])
def test_a_store_refusing_crc32_gets_content_md5(
        seaweed: Any, http_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path,
        size: int, refusal: HttpRespond) -> None:
    http_proxy.set_rules([refusal])
    src = make_random_file("refused.bin", size)
    key = seaweed.unique_key("nocrc")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                  "--state-dir", str(tmp_path / "s"), "--part-size", "5MiB", "--json", env=s3_env(seaweed, tmp_path))
    assert run.code == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "does not support x-amz-checksum-crc32" in line]
    assert len(warnings) == 1 and warnings[0].endswith("; using Content-MD5 (--checksum md5)"), run.stderr
    same = [(r.action, r.status) for r in http_proxy.stats().requests
            if r.method == refusal.method and (refusal.query or "") in r.query and "partNumber" not in r.query]
    assert same == [("respond", refusal.status), ("forwarded", 200)]
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)
    assert object_crc32(seaweed, key) is None  # the server saw Content-MD5 only


def test_http_503_and_429_with_retry_after_are_honoured(
        seaweed: Any, http_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    http_proxy.set_rules([
        HttpRespond(status=503, retry_after=2, query="partNumber=", first=1),
        HttpRespond(status=429, retry_after=time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                          time.gmtime(time.time() + 3)), method="POST", nth=2),
    ])
    src = make_random_file("busy.bin", 11 * MiB)
    key = seaweed.unique_key("busy")
    started = time.monotonic()
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                  "--state-dir", str(tmp_path / "s"), "--part-size", "5MiB", "--json", env=s3_env(seaweed, tmp_path))
    assert run.code == 0, run.stderr
    assert time.monotonic() - started >= 2
    assert run.summary["part_retries"] == 2
    statuses = [r.status for r in http_proxy.stats().requests]
    assert 503 in statuses and 429 in statuses
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)


def test_dropped_part_and_complete_error_body_are_recovered(
        seaweed: Any, http_proxy: FaultProxy, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    """An UploadPart answered 200 but never stored, and a Complete answered 200 with <Error>."""
    error = "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"
    http_proxy.set_rules([
        HttpDrop(query="partNumber=2", first=1),
        HttpRespond(status=200, body=error, method="POST", query="uploadId=", first=1, forward=False),
    ])
    src = make_random_file("drop.bin", 16 * MiB)
    key = seaweed.unique_key("drop")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", http_proxy.url(),
                  "--state-dir", str(tmp_path / "s"), "--part-size", "5MiB", "--json", env=s3_env(seaweed, tmp_path))
    assert run.code == 0, run.stderr
    assert http_proxy.stats().faults["drop"] == 1
    assert "checking which parts it has" in run.stderr
    assert seaweed.get_object_bytes_md5(key).md5 == md5_file(src)
    assert json.loads(run.stdout)["fallback_used"] is False


def test_ctrl_c_during_the_sync_fallback_stops_at_once(
        seaweed: Any, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    """A blocking requests call in a worker thread must not outlive Ctrl-C (found by a user test:
    it used to run on for 30+ s)."""
    import signal

    src = make_random_file("sigfb.bin", 64 * MiB)
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(bytes_per_sec=1_000_000)]) as slow:
        proc = popen_cli("upload", str(src), f"s3://{seaweed.bucket}/{seaweed.unique_key('sigfb')}",
                         "--endpoint-url", slow.url(), "--fallback", "only", "--state-dir", str(tmp_path / "s"),
                         env=s3_env(seaweed, tmp_path))
        deadline = time.monotonic() + 30
        while slow.stats().bytes_up < 2 * MiB and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slow.stats().bytes_up >= 2 * MiB, "the single shot never started"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert time.monotonic() - started < 5
        assert "interrupted" in err and "Traceback" not in err
