"""The command line itself: --version, and usage errors that name the right command and flag."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.integration.cli import run_cli

REPO = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    return dict(os.environ)


def test_version_is_the_packaged_one() -> None:
    found = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert found, "pyproject.toml declares no version"
    declared = found.group(1)
    run = run_cli("--version", env=env())
    assert (run.code, run.stdout.strip()) == (0, f"chunkhaul {declared}")


@pytest.mark.parametrize(("args", "hint"), [
    ((), "see chunkhaul --help"),
    (("abort", "f"), "see chunkhaul abort --help"),
    (("upload", "f"), "see chunkhaul upload --help"),
])
def test_usage_errors_point_at_the_command_used(args: tuple[str, ...], hint: str) -> None:
    run = run_cli(*args, env=env())
    assert run.code == 2 and hint in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(("flag", "value"), [("--stall-timeout", "inf"), ("--connect-timeout", "nan"),
                                             ("--connect-timeout", "0"), ("--retries", "0")])
def test_timeouts_and_retries_must_be_usable(flag: str, value: str, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    run = run_cli("upload", str(src), "s3://bkt/key", flag, value, "--state-dir", str(tmp_path / "s"), env=env())
    assert run.code == 2
    assert run.stderr.startswith(f"chunkhaul: error: {flag} must be") and len(run.stderr.splitlines()) == 1


@pytest.mark.parametrize(("dest", "floor"), [("tus+http://127.0.0.1:9/files/", "256KiB"), ("s3://bkt/key", "5MiB")])
def test_part_size_floor_follows_the_target(dest: str, floor: str, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    run = run_cli("upload", str(src), dest, "--part-size", "100KiB", "--state-dir", str(tmp_path / "s"), env=env())
    assert run.code == 2 and f"--part-size must be between {floor} and 5GiB" in run.stderr
