"""A library progress callback that raises: the upload stops as an interrupted one does (the
manifest kept, the server's upload left open), the caller gets the callback's own exception,
and the same call without that callback resumes. Bytes are read back from the servers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.cli import manifests, s3_env
from tests.servers.tus_servers import TusNodeServer
from uploader import upload

MiB = 1 << 20


class Enough(Exception):
    """The caller's own exception type: what it must get back, unchanged."""


def _raising_after(limit: int, calls: list[int], error: BaseException | None = None) -> Callable[[int, int], None]:
    error = error or Enough(f"stop after {limit} bytes")

    def callback(done: int, total: int) -> None:
        calls.append(done)
        if done >= limit:
            raise error
    callback.error = error  # type: ignore[attr-defined]
    return callback


@pytest.fixture
def aws_env(seaweed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env(seaweed, tmp_path).items():
        if key.startswith("AWS_") or key == "HOME":
            monkeypatch.setenv(key, value)


@pytest.mark.parametrize("kind", [Enough, KeyboardInterrupt])
def test_s3_callback_exception_stops_and_the_next_call_resumes(
        seaweed: Any, aws_env: None, tmp_path: Path, make_random_file: Callable[..., Path],
        kind: type[BaseException]) -> None:
    """KeyboardInterrupt as well: the same process must be able to resume (lock released)."""
    src, state = make_random_file("cb.bin", 40 * MiB + 3), tmp_path / "state"
    key = seaweed.unique_key("cb")
    dest = f"s3://{seaweed.bucket}/{key}"
    calls: list[int] = []
    callback = _raising_after(10 * MiB, calls, kind("stop"))
    with pytest.raises(kind) as raised:
        upload(str(src), dest, endpoint_url=seaweed.endpoint, part_size="5MiB", concurrency=2,
               state_dir=str(state), progress=callback)
    assert raised.value is callback.error  # type: ignore[attr-defined]
    assert [c for c in calls if c >= 10 * MiB] == [calls[-1]]  # never called again after it raised
    assert seaweed.head_object(key) is None  # not completed
    uploads = seaweed.list_multipart_uploads(key)
    assert [u["Key"] for u in uploads] == [key]
    parts_on_server = seaweed.list_parts(key, uploads[0]["UploadId"])
    assert len(parts_on_server) >= 2
    assert len(list(state.glob("*.json"))) == 1  # the manifest survived

    result = upload(str(src), dest, endpoint_url=seaweed.endpoint, part_size="5MiB", state_dir=str(state))
    assert result.resumed and result.bytes_resumed >= 10 * MiB
    assert seaweed.get_object_bytes(key) == src.read_bytes()
    assert list(state.glob("*.json")) == []


@pytest.fixture(scope="module")
def file_tus() -> Iterator[TusNodeServer]:
    with TusNodeServer("file") as server:
        yield server


def test_tus_callback_exception_while_a_patch_streams(file_tus: TusNodeServer, tmp_path: Path,
                                                      make_random_file: Callable[..., Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed PATCH reports progress from inside the HTTP client's body writer: the
    callback's exception must not pass for a network error there (retried, then a fallback)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    src, state = make_random_file("cb-tus.bin", 64 * MiB + 1), tmp_path / "state"
    callback = _raising_after(8 * MiB, [])
    with pytest.raises(Enough) as raised:
        upload(str(src), file_tus.url, protocol="tus", state_dir=str(state), progress=callback)
    assert raised.value is callback.error  # type: ignore[attr-defined]
    (manifest,) = manifests(state)
    reply = requests.head(manifest["session"]["upload_url"], headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert int(reply.headers["Upload-Offset"]) < int(reply.headers["Upload-Length"])  # left unfinished

    result = upload(str(src), file_tus.url, protocol="tus", state_dir=str(state))
    assert result.resumed and not result.fallback_used
    stored = file_tus.stored_bytes(str(result.upload_id))
    assert hashlib.md5(stored).hexdigest() == hashlib.md5(src.read_bytes()).hexdigest()
    assert os.path.getsize(src) == len(stored)
