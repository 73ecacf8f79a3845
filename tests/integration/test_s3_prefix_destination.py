"""s3://BUCKET/PREFIX/ as a destination: the file's base name is appended to the key, as
`aws s3 cp FILE s3://BUCKET/PREFIX/` does. What was stored is read back from SeaweedFS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli import run_cli, s3_env
from tests.servers.fault_proxy import FaultProxy, HttpRespond
from uploader import upload

MiB = 1 << 20


@pytest.fixture
def env(seaweed: Any, tmp_path: Path) -> dict[str, str]:
    return s3_env(seaweed, tmp_path)


def _upload(seaweed: Any, env: dict[str, str], src: Path, dest: str, state: Path, endpoint: str,
            *extra: str) -> Any:
    return run_cli("upload", str(src), dest, "--endpoint-url", endpoint, "--state-dir", str(state),
                   "--part-size", "5MiB", "--json", *extra, env=env)


def _interrupt(seaweed: Any, env: dict[str, str], src: Path, dest: str, state: Path) -> None:
    """Part 1 on the server, part 2 refused with 403: exit 1, manifest kept."""
    rule = HttpRespond(status=403, method="PUT", query="partNumber=2",
                       body="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with FaultProxy("127.0.0.1", seaweed.s3_port, [rule], http=True) as proxy:
        run = _upload(seaweed, env, src, dest, state, proxy.url(), "--concurrency", "1")
    assert run.code == 1, run.stderr
    assert len(list(state.glob("*.json"))) == 1
    # A 4xx is final for this run, but part 1 is kept: the message says how to go on.
    last = run.stderr.strip().splitlines()[-1]
    assert "UploadPart 2: HTTP 403 AccessDenied" in last
    assert last.endswith("the upload so far is kept: fix that, then run the same command again to resume")


def test_prefix_destination_appends_the_file_name(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                  make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("big.bin", 11 * MiB + 5)
    prefix = seaweed.unique_key("dir")
    run = _upload(seaweed, env, src, f"s3://{seaweed.bucket}/{prefix}/", tmp_path / "state", seaweed.endpoint)
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes(f"{prefix}/big.bin") == src.read_bytes()
    listed = seaweed.s3.list_objects_v2(Bucket=seaweed.bucket, Prefix=f"{prefix}/")["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}/big.bin"]


def test_bucket_root_with_slash_appends_the_file_name(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                      make_random_file: Callable[..., Path]) -> None:
    name = seaweed.unique_key("root") + ".bin"
    src = make_random_file(name, 1 * MiB + 1)  # below the part size: one PutObject
    run = _upload(seaweed, env, src, f"s3://{seaweed.bucket}/", tmp_path / "state", seaweed.endpoint)
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes(name) == src.read_bytes()


def test_prefix_and_full_key_share_one_manifest(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                make_random_file: Callable[..., Path]) -> None:
    src, state = make_random_file("big.bin", 11 * MiB), tmp_path / "state"
    prefix = seaweed.unique_key("dir")
    _interrupt(seaweed, env, src, f"s3://{seaweed.bucket}/{prefix}/", state)
    on_server = seaweed.list_multipart_uploads(f"{prefix}/")
    assert [u["Key"] for u in on_server] == [f"{prefix}/big.bin"]
    # Same object, spelled out: the interrupted upload resumes instead of starting over.
    run = _upload(seaweed, env, src, f"s3://{seaweed.bucket}/{prefix}/big.bin", state, seaweed.endpoint)
    assert run.code == 0, run.stderr
    assert run.summary["resumed"] is True and run.summary["bytes_resumed"] == 5 * MiB
    assert seaweed.get_object_bytes(f"{prefix}/big.bin") == src.read_bytes()
    assert list(state.glob("*.json")) == []


def test_abort_with_a_prefix_destination(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                         make_random_file: Callable[..., Path]) -> None:
    src, state = make_random_file("big.bin", 11 * MiB), tmp_path / "state"
    prefix = seaweed.unique_key("dir")
    _interrupt(seaweed, env, src, f"s3://{seaweed.bucket}/{prefix}/big.bin", state)
    run = run_cli("abort", str(src), f"s3://{seaweed.bucket}/{prefix}/", "--endpoint-url", seaweed.endpoint,
                  "--state-dir", str(state), "--json", env=env)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"aborted": True}
    assert seaweed.list_multipart_uploads(f"{prefix}/") == []
    assert list(state.glob("*.json")) == []


def test_library_prefix_destination(seaweed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    make_random_file: Callable[..., Path]) -> None:
    for key, value in s3_env(seaweed, tmp_path).items():
        if key.startswith("AWS_") or key == "HOME":
            monkeypatch.setenv(key, value)
    src = make_random_file("lib.bin", 6 * MiB + 7)
    prefix = seaweed.unique_key("lib")
    result = upload(str(src), f"s3://{seaweed.bucket}/{prefix}/", endpoint_url=seaweed.endpoint,
                    part_size="5MiB", state_dir=str(tmp_path / "state"))
    assert seaweed.get_object_bytes(f"{prefix}/lib.bin") == src.read_bytes()
    assert result.etag == seaweed.head_object(f"{prefix}/lib.bin")["ETag"].strip('"')


def test_bucket_without_slash_appends_the_file_name(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                    make_random_file: Callable[..., Path]) -> None:
    """`aws s3 cp FILE s3://BUCKET` (and s5cmd) store BUCKET/<base name of FILE>."""
    name = seaweed.unique_key("bare") + ".bin"
    src = make_random_file(name, 6 * MiB + 3)  # two parts: the multipart path
    run = _upload(seaweed, env, src, f"s3://{seaweed.bucket}", tmp_path / "state", seaweed.endpoint)
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes(name) == src.read_bytes()


def test_a_symlink_uploads_and_is_named_by_its_own_name(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                       make_random_file: Callable[..., Path]) -> None:
    """As `aws s3 cp link s3://B/P/` does: the key takes the link's name, the bytes its target's;
    the log says the same name the key has."""
    target = make_random_file("target-data.dat", 6 * MiB + 3)
    link = tmp_path / "shown-name.bin"
    link.symlink_to(target)
    prefix = seaweed.unique_key("link")
    run = _upload(seaweed, env, link, f"s3://{seaweed.bucket}/{prefix}/", tmp_path / "state", seaweed.endpoint)
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes(f"{prefix}/shown-name.bin") == target.read_bytes()
    assert "Uploading file: shown-name.bin (" in run.stderr and "target-data" not in run.stderr


def test_abort_of_a_path_with_nothing_recorded_and_no_file_is_a_usage_error(
        seaweed: Any, env: dict[str, str], tmp_path: Path) -> None:
    """A typo in the path must not read as "nothing to abort" (exit 0): exit 2, say why."""
    run = run_cli("abort", str(tmp_path / "typo.bin"), f"s3://{seaweed.bucket}/x", "--endpoint-url",
                  seaweed.endpoint, "--state-dir", str(tmp_path / "state"), env=env)
    assert run.code == 2, run.stderr
    assert "typo.bin: no such file, and no interrupted upload of it to" in run.stderr
    assert "Traceback" not in run.stderr


def test_abort_after_the_file_was_deleted_still_aborts(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                                       make_random_file: Callable[..., Path]) -> None:
    """The manifest is found by the path the user gives, so a deleted file's upload can be aborted."""
    src, state = make_random_file("gone.bin", 11 * MiB), tmp_path / "state"
    prefix = seaweed.unique_key("gone")
    _interrupt(seaweed, env, src, f"s3://{seaweed.bucket}/{prefix}/gone.bin", state)
    src.unlink()
    run = run_cli("abort", str(src), f"s3://{seaweed.bucket}/{prefix}/", "--endpoint-url", seaweed.endpoint,
                  "--state-dir", str(state), "--json", env=env)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"aborted": True}
    assert seaweed.list_multipart_uploads(f"{prefix}/") == []
