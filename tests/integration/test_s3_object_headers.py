"""What is stored with the object besides its bytes: Content-Type (guessed from the file name
as aws-cli does, or --content-type) and user metadata (--metadata: x-amz-meta-*), on every
path that creates an object. What was stored is read back from SeaweedFS (HeadObject)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli import run_cli, s3_env
from tests.servers.fault_proxy import FaultProxy, HttpRespond

MiB = 1 << 20


@pytest.fixture
def env(seaweed: Any, tmp_path: Path) -> dict[str, str]:
    return s3_env(seaweed, tmp_path)


def _upload(seaweed: Any, env: dict[str, str], src: Path, key: str, tmp_path: Path, *extra: str,
            endpoint: str | None = None) -> Any:
    return run_cli("upload", str(src), f"s3://{seaweed.bucket}/{key}", "--endpoint-url", endpoint or seaweed.endpoint,
                   "--state-dir", str(tmp_path / "state"), "--part-size", "5MiB", "--sync-delay", "0", *extra,
                   env=env)


@pytest.mark.parametrize(("size", "extra"), [
    (11 * MiB, ()),  # CreateMultipartUpload
    (1 * MiB, ()),  # one PutObject
    (11 * MiB, ("--fallback", "only")),  # the sync single shot
], ids=["multipart", "put-object", "fallback"])
def test_content_type_from_the_name_and_metadata_are_stored(
        seaweed: Any, env: dict[str, str], tmp_path: Path, make_random_file: Callable[..., Path],
        size: int, extra: tuple[str, ...]) -> None:
    src = make_random_file("clip.mp4", size)
    key = seaweed.unique_key("meta") + ".mp4"
    run = _upload(seaweed, env, src, key, tmp_path, "--metadata", "project=alpha", "--metadata", "Owner=Ann B",
                  *extra)
    assert run.code == 0, run.stderr
    head = seaweed.head_object(key)
    assert head["ContentType"] == "video/mp4"  # IANA's type for .mp4 (RFC 4337)
    assert head["Metadata"] == {"project": "alpha", "owner": "Ann B"}  # S3 lowercases metadata names
    assert seaweed.get_object_bytes(key) == src.read_bytes()


def test_content_type_option_wins(seaweed: Any, env: dict[str, str], tmp_path: Path,
                                  make_random_file: Callable[..., Path]) -> None:
    src = make_random_file("notes.mp4", 6 * MiB)
    key = seaweed.unique_key("ctype")
    run = _upload(seaweed, env, src, key, tmp_path, "--content-type", "text/plain; charset=utf-8")
    assert run.code == 0, run.stderr
    assert seaweed.head_object(key)["ContentType"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(("extra", "phrase"), [
    (("--metadata", "city=Zürich"), "S3 metadata must be ASCII"),
    (("--metadata", "bad key=x"), "S3 metadata must be ASCII"),
    (("--metadata", "big=" + "x" * 2100), "S3 allows 2048 bytes of user metadata"),
    (("--content-type", "not a type"), "is not a media type"),
    (("--content-type", "text/plain\r\nX-Evil: 1"), "is not a media type"),
], ids=["non-ascii-value", "space-in-key", "over-2KB", "not-a-type", "header-injection"])
def test_metadata_s3_would_refuse_is_refused_before_sending(
        seaweed: Any, env: dict[str, str], tmp_path: Path, make_random_file: Callable[..., Path],
        extra: tuple[str, ...], phrase: str) -> None:
    src = make_random_file("x.bin", 6 * MiB)
    key = seaweed.unique_key("refused")
    run = _upload(seaweed, env, src, key, tmp_path, *extra)
    assert run.code == 2, run.stderr
    assert phrase in run.stderr and "Traceback" not in run.stderr
    assert seaweed.list_multipart_uploads(key) == []


KEPT = "keeps the content type and metadata it was created with"


@pytest.mark.parametrize(("resumed_with", "warned", "ctype", "meta"), [
    (("--content-type", "text/plain", "--metadata", "stage=draft"), False, "text/plain", "draft"),
    (("--content-type", "application/json", "--metadata", "stage=final"), True, "text/plain", "draft"),
    ((), True, "text/plain", "draft"),  # no options now: the guessed type and no metadata differ
], ids=["same-command", "changed", "dropped"])
def test_a_resume_keeps_what_the_upload_was_created_with_and_says_so(
        seaweed: Any, env: dict[str, str], tmp_path: Path, make_random_file: Callable[..., Path],
        resumed_with: tuple[str, ...], warned: bool, ctype: str, meta: str) -> None:
    src = make_random_file("report.csv", 11 * MiB)
    key = seaweed.unique_key("kept")
    created_with = ("--content-type", "text/plain", "--metadata", "stage=draft")
    refuse = HttpRespond(status=403, method="PUT", query="partNumber=2",
                         body="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with FaultProxy("127.0.0.1", seaweed.s3_port, [refuse], http=True) as proxy:
        first = _upload(seaweed, env, src, key, tmp_path, *created_with, "--concurrency", "1",
                        endpoint=proxy.url())
    assert first.code == 1 and len(list((tmp_path / "state").glob("*.json"))) == 1, first.stderr
    run = _upload(seaweed, env, src, key, tmp_path, *resumed_with)
    assert run.code == 0, run.stderr
    assert (KEPT in run.stderr) is warned, run.stderr
    head = seaweed.head_object(key)  # what S3 took at CreateMultipartUpload stays
    assert (head["ContentType"], head["Metadata"]) == (ctype, {"stage": meta})
    assert seaweed.get_object_bytes(key) == src.read_bytes()
