"""A run refused before it sends anything (exit 2, README "Exit codes": "nothing was sent")
must not first log "Uploading file:". Each case is refused by a check the product documents:
the manifest, the file's identity, the tus server's Tus-Max-Size, Procore's part limits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli import Run, run_cli, s3_env
from tests.servers.fault_proxy import FaultProxy, HttpRespond
from tests.servers.procore_emulator import ProcoreEmulator
from tests.servers.tus_spec_server import TusSpecServer

MiB = 1 << 20
CLAIM = "Uploading file:"
TOKEN = "tok-announce-1"


def _refused(run: Run, phrase: str) -> None:
    assert run.code == 2, run.stderr
    assert phrase in run.stderr
    assert CLAIM not in run.stderr
    assert "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("chunkhaul: error:")] != []


def _s3(seaweed: Any, env: dict[str, str], src: Path, dest: str, state: Path, endpoint: str, *extra: str) -> Run:
    return run_cli("upload", str(src), dest, "--endpoint-url", endpoint, "--state-dir", str(state),
                   "--part-size", "5MiB", *extra, env=env)


@pytest.fixture
def interrupted(seaweed: Any, tmp_path: Path,
                make_random_file: Callable[..., Path]) -> tuple[Path, str, Path, dict[str, str]]:
    """A real interrupted S3 upload: part 1 on the server, part 2 refused (403), manifest kept."""
    env, state = s3_env(seaweed, tmp_path), tmp_path / "state"
    src, dest = make_random_file("in.bin", 11 * MiB), f"s3://{seaweed.bucket}/{seaweed.unique_key('ann')}"
    rule = HttpRespond(status=403, method="PUT", query="partNumber=2",
                       body="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with FaultProxy("127.0.0.1", seaweed.s3_port, [rule], http=True) as proxy:
        first = _s3(seaweed, env, src, dest, state, proxy.url(), "--concurrency", "1")
    assert first.code == 1 and CLAIM in first.stderr, first.stderr  # it did upload part 1
    assert len(list(state.glob("*.json"))) == 1
    return src, dest, state, env


def test_unusable_manifest(seaweed: Any, interrupted: tuple[Path, str, Path, dict[str, str]]) -> None:
    src, dest, state, env = interrupted
    manifest = next(state.glob("*.json"))
    manifest.write_bytes(manifest.read_bytes()[:40])
    _refused(_s3(seaweed, env, src, dest, state, seaweed.endpoint), "--restart")


def test_file_changed_since_the_interrupted_upload(seaweed: Any,
                                                   interrupted: tuple[Path, str, Path, dict[str, str]]) -> None:
    src, dest, state, env = interrupted
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _refused(_s3(seaweed, env, src, dest, state, seaweed.endpoint), "changed since the interrupted upload")


def test_tus_file_over_the_servers_max_size(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "HOME": str(tmp_path)}
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(1_000_001))
    with TusSpecServer(max_size=1_000_000) as spec:
        run = run_cli("upload", str(src), spec.url, "--protocol", "tus", "--state-dir", str(tmp_path / "state"),
                      env=env)
        assert (spec.counts["POST"], spec.counts["PATCH"]) == (0, 0)
    _refused(run, "Tus-Max-Size")


@pytest.fixture
def procore(seaweed: Any) -> Iterator[ProcoreEmulator]:
    with ProcoreEmulator(seaweed, tokens=(TOKEN,), companies={1: (10,)}) as emulator:
        yield emulator


def test_procore_part_size_over_the_v21_limit(procore: ProcoreEmulator, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROCORE_"))},
           "HOME": str(tmp_path), "PROCORE_ACCESS_TOKEN": TOKEN}
    src = tmp_path / "plans.pdf"
    src.write_bytes(os.urandom(1 * MiB))
    # docs/procore-contract.md: a v2.1 part is at most 100,000,000 bytes.
    run = run_cli("upload", str(src), "procore://1/projects/10", "--procore-base-url", procore.base_url,
                  "--state-dir", str(tmp_path / "state"), "--part-size", "200MiB", env=env)
    assert procore.count(side="api", method="POST") == 0
    _refused(run, "--part-size")
