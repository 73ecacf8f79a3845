"""The stream-count probe on a real link: through the fault proxy capping every connection (so
half the streams move half the data), the CLI tries half once and goes back to all of them.
In-flight counts come from the proxy's record of when each UploadPart arrived and was answered."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.cli import run_cli, s3_env
from tests.servers.fault_proxy import FaultProxy, HttpExchange, Throttle

MiB = 1 << 20


def _overlaps(parts: list[HttpExchange]) -> list[int]:
    """For each UploadPart in arrival order: how many were in flight half-way through it."""
    middles = [(p.started + p.ended) / 2 for p in parts]
    return [sum(1 for o in parts if o.started <= mid < o.ended) for mid in middles]


def _upload_parts(proxy: FaultProxy) -> list[HttpExchange]:
    parts = [x for x in proxy.stats().requests if x.method == "PUT" and "partNumber=" in x.query]
    return sorted(parts, key=lambda x: x.started)


def _upload(seaweed: Any, proxy: FaultProxy, src: Path, tmp_path: Path, *extra: str) -> str:
    key = seaweed.unique_key("streams")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", proxy.url(),
                  "--state-dir", str(tmp_path / "state"), "--part-size", "5MiB", "--concurrency", "4", *extra,
                  env=s3_env(seaweed, tmp_path))
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes_md5(key).md5 == hashlib.md5(src.read_bytes()).hexdigest()
    return key


def test_capped_connections_probe_half_then_return_to_all(
        seaweed: Any, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("capped.bin", 18 * 5 * MiB)  # 18 parts: enough waves for a probe
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(bytes_per_sec=8 * MiB)], http=True) as proxy:
        _upload(seaweed, proxy, src, tmp_path)
        overlaps = _overlaps(_upload_parts(proxy))
    assert len(overlaps) == 18
    assert overlaps[:4] == [4, 4, 4, 4]  # the first wave: all four streams
    probe = overlaps.index(min(overlaps[4:12]), 4)
    assert overlaps[probe] <= 2  # the probe: parts sent with two in flight
    assert max(overlaps[probe:]) == 4  # and back to four: half moved half as much


def test_fixed_concurrency_never_probes(
        seaweed: Any, make_random_file: Callable[..., Path], tmp_path: Path) -> None:
    src = make_random_file("fixed.bin", 18 * 5 * MiB)
    with FaultProxy("127.0.0.1", seaweed.s3_port, [Throttle(bytes_per_sec=8 * MiB)], http=True) as proxy:
        _upload(seaweed, proxy, src, tmp_path, "--fixed-concurrency")
        overlaps = _overlaps(_upload_parts(proxy))
    assert len(overlaps) == 18
    assert min(overlaps[:14]) == 4  # four all along until the last wave drains
