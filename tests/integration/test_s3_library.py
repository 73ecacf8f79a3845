"""The library entry points and AWS settings resolution, in-process, against real SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from resume import ManifestStore
from tests.integration.cli import run_cli, s3_env
from tests.integration.s3_checksums import composite_crc32, object_crc32
from uploader import UploadOptions, UsageError, upload
from uploader.engine import _Upload, build_protocol
from uploader.source import open_source
from uploader.transport_async import AsyncTransport

MiB = 1 << 20


@pytest.fixture
def aws_env(seaweed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env(seaweed, tmp_path).items():
        if key.startswith("AWS_") or key == "HOME":
            monkeypatch.setenv(key, value)


@pytest.mark.parametrize("checksum", [{}, {"checksum": "md5"}], ids=["default-crc32", "md5"])
def test_library_upload_with_progress_and_log_lines(seaweed: Any, aws_env: None, tmp_path: Path,
                                                    make_random_file: Callable[..., Path],
                                                    caplog: pytest.LogCaptureFixture,
                                                    checksum: dict[str, str]) -> None:
    src = make_random_file("lib.bin", 12 * MiB + 3)
    key = seaweed.unique_key("lib")
    seen: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="uploader"):
        result = upload(str(src), f"s3://{seaweed.bucket}/{key}", endpoint_url=seaweed.endpoint,
                        part_size="5MiB", state_dir=str(tmp_path / "state"),
                        progress=lambda done, total: seen.append((done, total)), **checksum)
    assert seaweed.get_object_bytes_md5(key).md5 == hashlib.md5(src.read_bytes()).hexdigest()
    assert object_crc32(seaweed, key) == (None if checksum else composite_crc32(src, 5 * MiB))
    assert result.bytes_total == src.stat().st_size and result.parts == 3 and not result.fallback_used
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.etag == seaweed.head_object(key)["ETag"].strip('"')
    messages = [r.getMessage() for r in caplog.records]
    assert "Uploading file: lib.bin (12.00 MB)" in messages
    assert any(m.startswith("✓ Successfully uploaded 'lib.bin' (took ") and m.endswith(" MB/s)")
               for m in messages)


def test_library_raises_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        upload(str(tmp_path / "missing"), "s3://bkt/key")
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="--checksum must be crc32 or md5") as bad:
        upload(str(tmp_path / "missing"), "s3://bkt/key", checksum="sha256")
    assert bad.value.exit_code == 2


def test_list_parts_pages_through_the_server(seaweed: Any, aws_env: None, tmp_path: Path,
                                             make_random_file: Callable[..., Path]) -> None:
    """ListParts paging, with a page size of 2 so 5 parts need 3 pages of real replies."""
    src = make_random_file("pages.bin", 5 * 5 * MiB)
    key = seaweed.unique_key("pages")
    s3 = seaweed.s3
    upload_id = s3.create_multipart_upload(Bucket=seaweed.bucket, Key=key)["UploadId"]
    data = src.read_bytes()
    for n in range(1, 6):
        s3.upload_part(Bucket=seaweed.bucket, Key=key, UploadId=upload_id, PartNumber=n,
                       Body=data[(n - 1) * 5 * MiB: n * 5 * MiB])
    options = UploadOptions(source=str(src), destination=f"s3://{seaweed.bucket}/{key}",
                            endpoint_url=seaweed.endpoint, state_dir=str(tmp_path / "state"))
    identity = open_source(str(src))
    protocol = build_protocol(options, identity.path)
    protocol.list_page_size = 2  # type: ignore[attr-defined]

    async def listing() -> dict[int, Any]:
        async with AsyncTransport(concurrency=1, connect_timeout=5, stall_timeout=10) as transport:
            run = _Upload(options, identity, protocol, transport,
                          ManifestStore(tmp_path / "state", str(src), "x"), show_bar=False)
            from resume import Manifest
            manifest = Manifest(file=identity, destination="x", target="s3", part_size=5 * MiB, parts=[],
                                session={"upload_id": upload_id})
            return await run.server_parts(manifest)

    found = asyncio.run(listing())
    assert sorted(found) == [1, 2, 3, 4, 5]
    expected = {p["PartNumber"]: p["ETag"].strip('"') for p in seaweed.list_parts(key, upload_id)}
    assert {n: p[-1].etag for n, p in found.items()} == expected
    s3.abort_multipart_upload(Bucket=seaweed.bucket, Key=key, UploadId=upload_id)


def test_profile_and_endpoint_from_aws_files(seaweed: Any, tmp_path: Path,
                                             make_random_file: Callable[..., Path]) -> None:
    """--profile reads the shared credentials file and the profile's endpoint_url, like the AWS CLI."""
    src = make_random_file("p.bin", 1000)
    creds, config = tmp_path / "credentials", tmp_path / "config"
    creds.write_text(f"[demo]\naws_access_key_id = {seaweed.access_key}\n"
                     f"aws_secret_access_key = {seaweed.secret_key}\n")
    config.write_text(f"[profile demo]\nregion = {seaweed.region}\nendpoint_url = {seaweed.endpoint}\n")
    env = s3_env(seaweed, tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(config))
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    key = seaweed.unique_key("profile")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--profile", "demo",
                  "--state-dir", str(tmp_path / "state"), env=env)
    assert run.code == 0, run.stderr
    assert seaweed.get_object_bytes_md5(key).md5 == hashlib.md5(src.read_bytes()).hexdigest()
    missing = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--profile", "nope",
                      "--state-dir", str(tmp_path / "state"), env=env)
    assert missing.code == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_endpoint_from_env(seaweed: Any, tmp_path: Path, make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("e.bin", 1000)
    env = s3_env(seaweed, tmp_path, AWS_ENDPOINT_URL=seaweed.endpoint)
    key = seaweed.unique_key("envendpoint")
    run = run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--state-dir", str(tmp_path / "s"), env=env)
    assert run.code == 0, run.stderr
    assert seaweed.head_object(key)["ContentLength"] == 1000


def _run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal, as a user's shell would."""
    import os
    import pty
    import subprocess

    from tests.integration.cli import REPO, cli_args
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli_args(*args), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only(seaweed: Any, tmp_path: Path, make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("bar.bin", 11 * MiB)
    env = s3_env(seaweed, tmp_path)
    base = ["upload", str(src), f"s3://{seaweed.bucket}/{seaweed.unique_key('bar')}", "--endpoint-url",
            seaweed.endpoint, "--part-size", "5MiB", "--state-dir", str(tmp_path / "s")]
    code, screen = _run_on_terminal(base, env)
    assert code == 0, screen
    assert "100%" in screen and "11.0M/11.0M" in screen  # tqdm's bytes counter reached the file size
    code, quiet = _run_on_terminal([*base, "-q"], env)
    assert code == 0 and "%|" not in quiet
    piped = run_cli(*base, env=env)
    assert piped.code == 0 and "%|" not in piped.stderr
