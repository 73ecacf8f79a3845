"""The tus protocol module and flow against recorded responses (no sockets, no sleeping).

Response headers are copied from @tus/server 2.4.5 (file store) replies recorded on this
machine; the 423 / 460 / 502 shapes and the checksum values come from the tus 1.0.0 text
(https://tus.io/protocols/resumable-upload) and from hashlib/zlib, never from our output.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest

from chunker import digest_bytes
from resume import FileIdentity, ManifestStore
from uploader.config import UploadOptions
from uploader.engine import _Upload
from uploader.errors import PermanentError, SessionLost, TransientError, UsageError
from uploader.retry import RetryPolicy
from uploader.targets.tus import (
    ChecksumMismatch,
    OffsetConflict,
    ServerInfo,
    TusProtocol,
    UploadLocked,
    checksum_header,
    decode_metadata,
    default_metadata,
    encode_metadata,
    parse_tus_url,
)
from uploader.tus_flow import MAX_PARTIALS, TusFlow, plan_segments
from uploader.tus_sync import sync_fallback
from uploader.wire import FileSlice, HttpRequest, HttpResponse

ENDPOINT = "http://tus.test/files/"
UPLOAD = "http://tus.test/files/47d66988a1c81eae70cf96a8b9a954b5"
FILENAME = "Überprüfung – Straße 5 (日本).pdf"
EXPIRES = "Thu, 03 Dec 2026 16:27:00 GMT"  # as recorded; soon in the past
IN_A_DAY = formatdate(time.time() + 86400, usegmt=True)  # for flows that must not see an expired upload

# Recorded from @tus/server 2.4.5 + @tus/file-store (CORS headers trimmed).
REAL_OPTIONS = {"tus-extension": "creation,creation-with-upload,creation-defer-length,termination,expiration",
                "tus-max-size": "1000", "tus-resumable": "1.0.0", "tus-version": "1.0.0"}
# Recorded replies, with the expiry moved a day ahead so flows don't see an expired upload.
REAL_POST = {"location": UPLOAD, "tus-resumable": "1.0.0", "upload-expires": IN_A_DAY}
REAL_PATCH = {"tus-resumable": "1.0.0", "upload-expires": IN_A_DAY, "upload-offset": "3"}
REAL_HEAD = {"cache-control": "no-store", "tus-resumable": "1.0.0", "upload-length": "10",
             "upload-metadata": "filename aGVsbG8=", "upload-offset": "3"}
REAL_409 = HttpResponse(409, {"tus-resumable": "1.0.0"}, b"Upload-Offset conflict\n")
REAL_404 = HttpResponse(404, {"tus-resumable": "1.0.0"}, b"The file for this url was not found\n")
REAL_410 = HttpResponse(410, {"tus-resumable": "1.0.0"}, b"The file for this url no longer exists\n")
REAL_413 = HttpResponse(413, {"tus-resumable": "1.0.0"}, b"Maximum size exceeded\n")
SPEC_OPTIONS = {"tus-version": "1.0.0", "tus-resumable": "1.0.0",
                "tus-extension": "creation,creation-with-upload,termination,expiration,checksum,concatenation",
                "tus-checksum-algorithm": "md5,sha1,crc32"}


def proto(**kw: object) -> TusProtocol:
    return TusProtocol(ENDPOINT, source="/data/report.pdf", **kw)  # type: ignore[arg-type]


# ----- metadata ---------------------------------------------------------------------------


def test_metadata_is_base64_of_utf8_and_round_trips_non_ascii() -> None:
    header = encode_metadata({"filename": FILENAME, "filetype": "application/pdf", "flag": ""})
    assert header is not None
    first = header.split(",")[0]
    assert first == "filename " + base64.b64encode(FILENAME.encode("utf-8")).decode()
    assert header.endswith(",flag")  # a key with an empty value is sent alone (spec)
    assert decode_metadata(header) == {"filename": FILENAME, "filetype": "application/pdf", "flag": ""}


def test_no_pairs_means_no_header() -> None:
    assert encode_metadata({}) is None
    req = proto().create_upload(10, metadata=False)
    assert "Upload-Metadata" not in req.headers


@pytest.mark.parametrize("key", ["", "two words", "a,b"])
def test_metadata_keys_without_spaces_or_commas(key: str) -> None:
    with pytest.raises(UsageError):
        encode_metadata({key: "v"})


def test_filename_and_filetype_by_default_user_pairs_win() -> None:
    assert default_metadata("/x/" + FILENAME, {}) == {"filename": FILENAME, "filetype": "application/pdf"}
    assert default_metadata("/x/blob", {"filetype": "text/plain", "k": "v"}) == {
        "filename": "blob", "filetype": "text/plain", "k": "v"}


# ----- requests ---------------------------------------------------------------------------


def test_options_carries_auth_but_not_tus_resumable() -> None:
    req = proto(headers={"Authorization": "Bearer s3cr3t"}).options()
    assert (req.method, req.url) == ("OPTIONS", ENDPOINT)
    assert req.headers == {"Authorization": "Bearer s3cr3t"}


def test_create_headers() -> None:
    req = proto(headers={"Authorization": "Bearer s3cr3t"}, metadata={"project": "42"}).create_upload(1234)
    assert (req.method, req.url, req.body) == ("POST", ENDPOINT, b"")
    assert req.headers["Tus-Resumable"] == "1.0.0"
    assert req.headers["Upload-Length"] == "1234"
    assert req.headers["Authorization"] == "Bearer s3cr3t"
    assert decode_metadata(req.headers["Upload-Metadata"]) == {
        "filename": "report.pdf", "filetype": "application/pdf", "project": "42"}
    assert "Content-Type" not in req.headers  # no body: not creation-with-upload


def test_creation_with_upload_and_partial() -> None:
    body = FileSlice("/data/report.pdf", 0, 10)
    req = proto().create_upload(10, first=body, checksum="md5 abc=", partial=True, metadata=False)
    assert req.body == body
    assert req.headers["Content-Type"] == "application/offset+octet-stream"
    assert req.headers["Upload-Concat"] == "partial"
    assert req.headers["Upload-Checksum"] == "md5 abc="


def test_patch_headers_and_body_slice() -> None:
    req = proto().patch(UPLOAD, 4096, FileSlice("/data/report.pdf", 4096, 100))
    assert req.method == "PATCH"
    assert req.headers["Upload-Offset"] == "4096"
    assert req.headers["Content-Type"] == "application/offset+octet-stream"
    assert req.body == FileSlice("/data/report.pdf", 4096, 100)
    assert "Upload-Checksum" not in req.headers


def test_final_upload_lists_partials_in_order_without_length() -> None:
    req = proto().create_final(["http://tus.test/files/a", "http://tus.test/files/b"])
    assert req.headers["Upload-Concat"] == "final;http://tus.test/files/a http://tus.test/files/b"
    assert "Upload-Length" not in req.headers


def test_user_headers_cannot_override_tus_headers() -> None:
    with pytest.raises(UsageError):
        proto(headers={"Upload-Offset": "0"})


def test_tus_urls() -> None:
    assert parse_tus_url("tus+https://h.example/files/") == "https://h.example/files/"
    assert parse_tus_url("http://127.0.0.1:1080/files") == "http://127.0.0.1:1080/files"
    for bad in ("s3://bucket/key", "tus+ftp://h/", "https:///files", "tus+http://[::1/files/",
                "tus+http://127.0.0.1:99999/files/"):
        with pytest.raises(UsageError):
            parse_tus_url(bad)


# ----- checksums --------------------------------------------------------------------------


def test_checksum_header_values() -> None:
    data = b"hello world"
    digest = digest_bytes(data, ("sha256", "sha1", "md5", "crc32"))
    # The spec's own example: sha1 of "hello world".
    assert checksum_header("sha1", digest) == "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="
    assert checksum_header("md5", digest) == "md5 " + base64.b64encode(hashlib.md5(data).digest()).decode()
    assert checksum_header("sha256", digest) == "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    crc = zlib.crc32(data).to_bytes(4, "big")
    assert checksum_header("crc32", digest) == "crc32 " + base64.b64encode(crc).decode()


@pytest.mark.parametrize(("advertised", "best"), [
    ("md5,sha1,crc32", "sha1"), ("crc32,sha256,md5", "sha256"), ("crc32", "crc32"), ("whirlpool", None)])
def test_best_advertised_algorithm(advertised: str, best: str | None) -> None:
    info = proto().parse_options(HttpResponse(204, {**SPEC_OPTIONS, "tus-checksum-algorithm": advertised}))
    assert info.checksum == best


def test_no_checksum_without_the_extension() -> None:
    info = proto().parse_options(HttpResponse(204, {**REAL_OPTIONS, "tus-checksum-algorithm": "sha1"}))
    assert info.checksum is None


# ----- OPTIONS ----------------------------------------------------------------------------


def test_options_of_the_real_server() -> None:
    p = proto()
    info = p.parse_options(HttpResponse(204, REAL_OPTIONS))
    assert info.max_size == 1000
    assert info.supports("creation-with-upload") and info.supports("termination")
    assert not info.supports("checksum") and not info.supports("concatenation")
    assert p.known
    p.check_size(1000)
    with pytest.raises(UsageError, match="at most 1,000 bytes"):
        p.check_size(1001)


def test_options_version_mismatch_and_failures() -> None:
    with pytest.raises(PermanentError, match=r"2\.0\.0"):
        proto().parse_options(HttpResponse(204, {"tus-version": "2.0.0"}))
    with pytest.raises(TransientError):
        proto().parse_options(HttpResponse(502, {}))
    with pytest.raises(PermanentError):
        proto().parse_options(HttpResponse(401, {}))
    # A server without discovery: core + creation assumed; the POST will tell.
    assert proto().parse_options(HttpResponse(405, {})) == ServerInfo()


# ----- creation ---------------------------------------------------------------------------


def test_parse_created_real_reply_and_relative_location() -> None:
    url, state = proto().parse_created(HttpResponse(201, {**REAL_POST, "upload-expires": EXPIRES}))
    assert url == UPLOAD
    assert state.offset == 0
    assert state.expires == pytest.approx(1796315220.0)  # Thu, 03 Dec 2026 16:27:00 GMT
    url, state = proto().parse_created(HttpResponse(201, {"location": "/files/abc", "upload-offset": "10"}))
    assert (url, state.offset) == ("http://tus.test/files/abc", 10)


def test_creation_errors() -> None:
    with pytest.raises(PermanentError, match="refuses uploads this large"):
        proto().parse_created(REAL_413)
    with pytest.raises(PermanentError, match="not a tus creation URL"):
        proto().parse_created(REAL_404)  # on the creation URL: not "upload lost"
    with pytest.raises(PermanentError, match="no Location"):
        proto().parse_created(HttpResponse(201, {}))
    with pytest.raises(TransientError):
        proto().parse_created(HttpResponse(503, {"retry-after": "3"}))


# ----- HEAD and PATCH replies -------------------------------------------------------------


def test_head_real_reply() -> None:
    state = proto().parse_head(HttpResponse(200, REAL_HEAD))
    assert (state.offset, state.length) == (3, 10)


@pytest.mark.parametrize("resp", [REAL_404, REAL_410])
def test_head_and_patch_gone(resp: HttpResponse) -> None:
    with pytest.raises(SessionLost):
        proto().parse_head(resp)
    with pytest.raises(SessionLost):
        proto().parse_patch(resp)


@pytest.mark.parametrize("status", [502, 500, 503, 423, 400])
def test_head_other_errors_are_transient_never_lost(status: int) -> None:
    with pytest.raises(TransientError) as info:
        proto().parse_head(HttpResponse(status, {}))
    assert not isinstance(info.value, SessionLost)


def test_head_without_offset_is_transient_and_auth_is_permanent() -> None:
    with pytest.raises(TransientError):
        proto().parse_head(HttpResponse(200, {"upload-length": "10"}))
    with pytest.raises(PermanentError):
        proto().parse_head(HttpResponse(403, {}))


def test_patch_real_reply_offset_is_the_servers() -> None:
    state = proto().parse_patch(HttpResponse(204, REAL_PATCH))
    assert state.offset == 3
    assert state.expires is not None


def test_patch_error_classes() -> None:
    p = proto()
    with pytest.raises(OffsetConflict):
        p.parse_patch(REAL_409)
    with pytest.raises(UploadLocked) as locked:
        p.parse_patch(HttpResponse(423, {"retry-after": "2"}))
    assert locked.value.retry_after == 2.0
    with pytest.raises(ChecksumMismatch):
        p.parse_patch(HttpResponse(460, {}, b"Checksum Mismatch\n"))
    with pytest.raises(TransientError):
        p.parse_patch(HttpResponse(500, {}))
    with pytest.raises(TransientError):
        p.parse_patch(HttpResponse(204, {}))  # no Upload-Offset: HEAD will tell
    with pytest.raises(PermanentError):
        p.parse_patch(HttpResponse(400, {}, b"bad"))


def test_termination() -> None:
    p = proto()
    assert p.delete(UPLOAD).method == "DELETE"
    assert p.parse_delete(HttpResponse(204, {}))
    assert p.parse_delete(REAL_404)  # gone already is as good as deleted
    with pytest.raises(PermanentError):
        p.parse_delete(HttpResponse(403, {}))
    session = {"upload_url": "u1", "partials": [{"url": "u1"}, {"url": "u2"}, {"url": None}]}
    assert [r.url for r in p.abort_requests(session)] == ["u1", "u2"]
    assert p.abort(session).url == "u1"


# ----- segment planning -------------------------------------------------------------------


def test_segments_cover_the_file_in_whole_chunks() -> None:
    segments = plan_segments(10_000, 1000, 4)
    assert [(s.base, s.length) for s in segments] == [(0, 3000), (3000, 3000), (6000, 3000), (9000, 1000)]
    assert [(s.base, s.length) for s in plan_segments(2500, 1000, 8)] == [(0, 1000), (1000, 1000), (2000, 500)]
    many = plan_segments(1000 * 1000 + 7, 1000, 128)
    assert len(many) <= MAX_PARTIALS
    assert sum(s.length for s in many) == 1000 * 1000 + 7
    assert all(s.length % 1000 == 0 for s in many[:-1])
    assert all(a.base + a.length == b.base for a, b in itertools.pairwise(many))


# ----- the flow against scripted replies --------------------------------------------------


@dataclass
class Script:
    """A transport that answers with prepared replies, in order, and records the requests."""

    replies: list[HttpResponse | Exception]
    sent: list[HttpRequest] = field(default_factory=list)

    async def send(self, req: HttpRequest, on_sent: Callable[[int], None] | None = None) -> HttpResponse:
        self.sent.append(req)
        assert self.replies, f"unexpected request {req.method} {req.label}"
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if on_sent is not None and isinstance(req.body, FileSlice):
            on_sent(req.body.length)  # as the transport does once the body left
        return reply

    def methods(self) -> list[str]:
        return [r.method for r in self.sent]


def ok(offset: int, **extra: str) -> HttpResponse:
    return HttpResponse(204, {"upload-offset": str(offset), "tus-resumable": "1.0.0", **extra})


def head(offset: int, length: int) -> HttpResponse:
    return HttpResponse(200, {"upload-offset": str(offset), "upload-length": str(length)})


def created(url: str = UPLOAD, **extra: str) -> HttpResponse:
    return HttpResponse(201, {"location": url, **extra})


OPTIONS_OK = HttpResponse(204, {k: v for k, v in REAL_OPTIONS.items() if k != "tus-max-size"})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / FILENAME
    path.write_bytes(os.urandom(2500))
    return path


def make_flow(tmp_path: Path, source: Path, replies: list[HttpResponse | Exception], chunk: int = 1000,
              concurrency: int = 1, stream: bool = False) -> tuple[TusFlow, Script]:
    options = UploadOptions(source=str(source), destination="tus+" + ENDPOINT, concurrency=concurrency,
                            retries=3, state_dir=tmp_path / "state",
                            headers={"Authorization": "Bearer s3cr3t"})
    protocol = TusProtocol(ENDPOINT, source=str(source), headers=options.headers, chunk_size=chunk,
                           stream=stream)
    identity = FileIdentity.of(str(source))
    store = ManifestStore(tmp_path / "state", identity.path, protocol.destination())
    script = Script(list(replies))
    run = _Upload(options, identity, protocol, script, store, False)  # type: ignore[arg-type]
    run.policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)  # no sleeping in unit tests
    return TusFlow(run), script


def go(flow: TusFlow) -> str:
    return asyncio.run(flow.upload()).location


def patch_bodies(script: Script) -> list[tuple[int, int]]:
    return [(r.body.offset, r.body.length) for r in script.sent
            if r.method == "PATCH" and isinstance(r.body, FileSlice)]


def test_streaming_sends_the_rest_in_one_patch_and_continues_from_what_the_server_kept(
        tmp_path: Path, source: Path) -> None:
    # The connection breaks mid-body; the server kept 900 bytes (HEAD): the next PATCH
    # streams the remaining 1600, not the whole file again.
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, created(), TransientError("reset"),
                                                head(900, 2500), ok(2500)], stream=True)
    assert go(flow) == UPLOAD
    assert patch_bodies(script) == [(0, 2500), (900, 1600)]


def test_streaming_keeps_bounded_chunks_for_a_server_checking_checksums(tmp_path: Path, source: Path) -> None:
    # Upload-Checksum covers one body: a checksumming server gets chunk-sized PATCHes.
    flow, script = make_flow(tmp_path, source, [HttpResponse(204, SPEC_OPTIONS), created(), ok(1000), ok(2000),
                                                ok(2500)], stream=True)
    assert go(flow) == UPLOAD
    assert patch_bodies(script) == [(0, 1000), (1000, 1000), (2000, 500)]
    assert all("Upload-Checksum" in r.headers for r in script.sent if r.method == "PATCH")


def test_a_413_on_the_streamed_patch_switches_to_chunks(
        tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture) -> None:
    too_large = HttpResponse(413, {}, b"Request Entity Too Large")
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, created(), too_large, head(0, 2500), ok(1000),
                                                ok(2000), ok(2500)], stream=True)
    with caplog.at_level(logging.WARNING):
        assert go(flow) == UPLOAD
    assert patch_bodies(script) == [(0, 2500), (0, 1000), (1000, 1000), (2000, 500)]
    assert [r.getMessage() for r in caplog.records if "413" in r.getMessage()] != []


def test_a_413_on_a_chosen_chunk_size_names_the_option(tmp_path: Path, source: Path) -> None:
    flow, _ = make_flow(tmp_path, source, [OPTIONS_OK, created(), HttpResponse(413, {}, b"")])
    with pytest.raises(PermanentError, match="--part-size"):
        go(flow)
    assert flow.run.store.path.exists()  # the upload can go on with a smaller --part-size


def test_sequential_patches_follow_the_servers_offset(tmp_path: Path, source: Path) -> None:
    # The server keeps 900 of the first 1000 bytes: the next PATCH starts at 900, not 1000.
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, created(), ok(900), ok(1900), ok(2500)])
    assert go(flow) == UPLOAD
    patches = [r for r in script.sent if r.method == "PATCH"]
    assert [r.headers["Upload-Offset"] for r in patches] == ["0", "900", "1900"]
    assert [r.body for r in patches] == [FileSlice(str(source), 0, 1000), FileSlice(str(source), 900, 1000),
                                         FileSlice(str(source), 1900, 600)]
    assert all(r.headers["Authorization"] == "Bearer s3cr3t" for r in script.sent)
    assert flow.run.bytes_sent == 2600
    assert not flow.run.store.path.exists()  # done: the manifest is gone


def test_409_heads_and_continues_from_the_servers_offset(tmp_path: Path, source: Path) -> None:
    flow, script = make_flow(tmp_path, source,
                             [OPTIONS_OK, created(), ok(1000), REAL_409, head(1500, 2500), ok(2500)])
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    flow.sleep = fake_sleep
    go(flow)
    assert slept == []  # a conflict is not load: HEAD at once
    assert script.methods() == ["OPTIONS", "POST", "PATCH", "PATCH", "HEAD", "PATCH"]
    assert script.sent[-1].headers["Upload-Offset"] == "1500"
    assert script.sent[-1].body == FileSlice(str(source), 1500, 1000)


def test_423_backs_off_heads_and_retries(tmp_path: Path, source: Path) -> None:
    slept: list[float] = []
    flow, script = make_flow(tmp_path, source,
                             [OPTIONS_OK, created(), HttpResponse(423, {"retry-after": "2"}), head(0, 2500),
                              ok(1000), ok(2000), ok(2500)])

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    flow.sleep = fake_sleep
    go(flow)
    assert script.methods() == ["OPTIONS", "POST", "PATCH", "HEAD", "PATCH", "PATCH", "PATCH"]
    assert slept == [2.0]  # one back-off, as long as the server asked, before the HEAD
    assert flow.run.retries == 1


def test_502_on_head_is_retried_never_a_new_upload(tmp_path: Path, source: Path) -> None:
    flow, script = make_flow(tmp_path, source, [
        OPTIONS_OK, created(), HttpResponse(500, {}), HttpResponse(502, {}, b"Bad Gateway"), head(700, 2500),
        ok(1700), ok(2500)])
    go(flow)
    assert script.methods() == ["OPTIONS", "POST", "PATCH", "HEAD", "HEAD", "PATCH", "PATCH"]
    assert script.methods().count("POST") == 1
    assert script.sent[5].headers["Upload-Offset"] == "700"


def test_460_resends_the_same_chunk_with_its_checksum(tmp_path: Path, source: Path) -> None:
    options = HttpResponse(204, SPEC_OPTIONS)
    flow, script = make_flow(tmp_path, source, [
        options, created(), ok(1000), HttpResponse(460, {}, b"Checksum Mismatch\n"), head(1000, 2500),
        ok(2000), ok(2500)])
    go(flow)
    patches = [r for r in script.sent if r.method == "PATCH"]
    assert [r.headers["Upload-Offset"] for r in patches] == ["0", "1000", "1000", "2000"]
    data = source.read_bytes()
    expected = "sha1 " + base64.b64encode(hashlib.sha1(data[1000:2000]).digest()).decode()
    assert patches[1].headers["Upload-Checksum"] == patches[2].headers["Upload-Checksum"] == expected


def test_failures_without_progress_end_the_run(tmp_path: Path, source: Path) -> None:
    flow, _ = make_flow(tmp_path, source, [
        OPTIONS_OK, created(), HttpResponse(500, {}), head(0, 2500), HttpResponse(500, {}), head(0, 2500),
        HttpResponse(500, {})])
    with pytest.raises(TransientError):
        go(flow)
    assert flow.run.store.path.exists()  # the manifest survives for the next run
    manifest = flow.run.store.load()
    assert manifest is not None
    assert manifest.session["upload_url"] == UPLOAD
    assert "s3cr3t" not in flow.run.store.path.read_text()  # auth headers never reach the manifest


def test_small_file_is_one_creation_with_upload(tmp_path: Path, source: Path) -> None:
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, created(**{"upload-offset": "2500"})], chunk=4000)
    go(flow)
    assert script.methods() == ["OPTIONS", "POST"]
    assert script.sent[1].body == FileSlice(str(source), 0, 2500)
    assert script.sent[1].headers["Content-Type"] == "application/offset+octet-stream"


def test_empty_file_is_created_and_finished_without_patch(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    flow, script = make_flow(tmp_path, empty, [OPTIONS_OK, created(**{"upload-offset": "0"})])
    go(flow)
    assert script.methods() == ["OPTIONS", "POST"]
    assert script.sent[1].headers["Upload-Length"] == "0"
    # creation-with-upload of nothing: the S3 store finishes a 0-byte upload only on a body
    assert script.sent[1].headers["Content-Type"] == "application/offset+octet-stream"
    assert script.sent[1].body_length == 0
    core_only = HttpResponse(204, {"tus-version": "1.0.0", "tus-extension": "creation"})
    flow, script = make_flow(tmp_path, empty, [core_only, created()])
    go(flow)
    assert script.methods() == ["OPTIONS", "POST"]
    assert script.sent[1].body == b"" and "Content-Type" not in script.sent[1].headers


def test_too_large_fails_before_any_byte(tmp_path: Path, source: Path) -> None:
    flow, script = make_flow(tmp_path, source, [HttpResponse(204, {**REAL_OPTIONS, "tus-max-size": "2499"})])
    with pytest.raises(UsageError, match="Tus-Max-Size"):
        go(flow)
    assert script.methods() == ["OPTIONS"]


def _interrupted(tmp_path: Path, source: Path, expires: str = IN_A_DAY) -> None:
    """A first run that stopped after 1000 bytes (its manifest stays)."""
    flow, _ = make_flow(tmp_path, source, [OPTIONS_OK, created(**{"upload-expires": expires}), ok(1000),
                                           TransientError("reset"), head(1000, 2500), TransientError("reset"),
                                           head(1000, 2500), TransientError("reset")])
    with pytest.raises(TransientError):
        go(flow)


def test_resume_heads_the_stored_url_and_sends_only_the_rest(tmp_path: Path, source: Path) -> None:
    _interrupted(tmp_path, source)
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, head(1200, 2500), ok(2200), ok(2500)])
    go(flow)
    assert script.methods() == ["OPTIONS", "HEAD", "PATCH", "PATCH"]
    assert script.sent[1].url == UPLOAD
    assert (flow.run.bytes_resumed, flow.run.bytes_sent, flow.run.resumed) == (1200, 1300, True)


def test_resume_of_a_deleted_upload_logs_once_and_creates_a_new_one(
        tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture) -> None:
    _interrupted(tmp_path, source)
    other = ENDPOINT + "fresh"
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, REAL_404, created(other), ok(1000), ok(2000),
                                                ok(2500)])
    with caplog.at_level(logging.INFO):
        assert go(flow) == other
    assert script.methods() == ["OPTIONS", "HEAD", "POST", "PATCH", "PATCH", "PATCH"]
    lost = [r for r in caplog.records if "no longer has" in r.getMessage()]
    assert len(lost) == 1
    assert flow.run.bytes_resumed == 0


def test_expired_upload_in_the_manifest_is_recreated_without_asking(tmp_path: Path, source: Path) -> None:
    _interrupted(tmp_path, source, expires=formatdate(0, usegmt=True))
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, created(), ok(1000), ok(2000), ok(2500)])
    go(flow)
    assert script.methods() == ["OPTIONS", "POST", "PATCH", "PATCH", "PATCH"]


def test_a_lost_upload_is_replaced_once_never_in_a_loop(tmp_path: Path, source: Path) -> None:
    _interrupted(tmp_path, source)
    flow, script = make_flow(tmp_path, source, [OPTIONS_OK, REAL_410, created(), REAL_404])
    with pytest.raises(SessionLost):
        go(flow)
    assert script.methods().count("POST") == 1


@dataclass
class PartialsByOffset:
    """Partial creations may come from any task first: answer them by file offset, and
    everything else from the script, in order."""

    script: Script

    async def send(self, req: HttpRequest, on_sent: Callable[[int], None] | None = None) -> HttpResponse:
        if req.headers.get("Upload-Concat") != "partial":
            return await self.script.send(req, on_sent)
        self.script.sent.append(req)
        assert isinstance(req.body, FileSlice)  # one chunk each: creation-with-upload
        return created(ENDPOINT + f"p{req.body.offset // 1000 + 1}", **{"upload-offset": str(req.body.length)})


def test_concatenation_uploads_partials_then_the_final(tmp_path: Path, source: Path) -> None:
    final = ENDPOINT + "final"
    flow, script = make_flow(tmp_path, source, [HttpResponse(204, SPEC_OPTIONS), created(final), head(2500, 2500)],
                             concurrency=3)
    flow.run.transport = PartialsByOffset(script)  # type: ignore[assignment]
    assert go(flow) == final
    posts = [r for r in script.sent if r.method == "POST"]
    assert [r.headers.get("Upload-Concat") for r in posts[:3]] == ["partial"] * 3
    assert sorted(r.body.offset for r in posts[:3] if isinstance(r.body, FileSlice)) == [0, 1000, 2000]
    parts = " ".join(ENDPOINT + p for p in ("p1", "p2", "p3"))  # in file order
    assert posts[3].headers["Upload-Concat"] == "final;" + parts
    assert "Upload-Length" not in posts[3].headers
    assert decode_metadata(posts[3].headers["Upload-Metadata"])["filename"] == FILENAME
    data = source.read_bytes()
    for post in posts[:3]:
        assert isinstance(post.body, FileSlice)
        chunk = data[post.body.offset:post.body.offset + post.body.length]
        assert post.headers["Upload-Checksum"] == "sha1 " + base64.b64encode(hashlib.sha1(chunk).digest()).decode()


# ----- the sync fallback against scripted replies -----------------------------------------


@dataclass
class SyncScript:
    replies: list[HttpResponse | Exception]
    sent: list[tuple[HttpRequest, float | None]] = field(default_factory=list)

    def send(self, req: HttpRequest, deadline: float | None = None) -> HttpResponse:
        self.sent.append((req, deadline))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def run_sync(tmp_path: Path, source: Path, replies: list[HttpResponse | Exception]) -> tuple[SyncScript, str]:
    options = UploadOptions(source=str(source), destination="tus+" + ENDPOINT, state_dir=tmp_path / "state")
    protocol = TusProtocol(ENDPOINT, source=str(source), chunk_size=1000)
    identity = FileIdentity.of(str(source))
    store = ManifestStore(tmp_path / "state", identity.path, protocol.destination())
    script = SyncScript(list(replies))
    done = sync_fallback(protocol, identity, options, store, sleep=lambda _: None,
                         transport=script)  # type: ignore[arg-type]
    assert not store.path.exists()
    return script, done.location


def test_sync_fallback_without_creation_with_upload_is_post_then_one_patch(tmp_path: Path, source: Path) -> None:
    core = HttpResponse(204, {"tus-version": "1.0.0", "tus-extension": "creation"})
    script, url = run_sync(tmp_path, source, [core, created(), ok(2500)])
    assert [r.method for r, _ in script.sent] == ["OPTIONS", "POST", "PATCH"]
    patch, deadline = script.sent[2]
    assert patch.body == FileSlice(str(source), 0, 2500)
    assert deadline == 300.0  # the original system's rule: 10 s per MB, at least 5 min
    assert url == UPLOAD


def test_sync_fallback_with_creation_with_upload_is_one_post(tmp_path: Path, source: Path) -> None:
    script, _ = run_sync(tmp_path, source, [OPTIONS_OK, created(**{"upload-offset": "2500"})])
    assert [r.method for r, _ in script.sent] == ["OPTIONS", "POST"]
    assert script.sent[1][0].body == FileSlice(str(source), 0, 2500)


def test_sync_fallback_continues_the_interrupted_upload(tmp_path: Path, source: Path) -> None:
    _interrupted(tmp_path, source)
    script, url = run_sync(tmp_path, source, [OPTIONS_OK, head(1000, 2500), TransientError("cut"),
                                              head(1800, 2500), ok(2500)])
    assert [r.method for r, _ in script.sent] == ["OPTIONS", "HEAD", "PATCH", "HEAD", "PATCH"]
    assert script.sent[2][0].body == FileSlice(str(source), 1000, 1500)  # every remaining byte, once
    assert script.sent[4][0].body == FileSlice(str(source), 1800, 700)  # after a failure: HEAD, the rest
    assert url == UPLOAD


def test_sync_fallback_replaces_a_lost_upload(tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture) -> None:
    _interrupted(tmp_path, source)
    with caplog.at_level(logging.WARNING):
        script, url = run_sync(tmp_path, source, [OPTIONS_OK, REAL_410, created(ENDPOINT + "new", **{
            "upload-offset": "2500"})])
    assert [r.method for r, _ in script.sent] == ["OPTIONS", "HEAD", "POST"]
    assert url == ENDPOINT + "new"
    assert sum("no longer has" in r.getMessage() for r in caplog.records) == 1
