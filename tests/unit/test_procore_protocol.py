"""The Procore protocol module (no sockets): requests it builds, replies it reads, errors it
classifies. Reply shapes and rules come from docs/procore-contract.md; expected digests come
from hashlib on the bytes, never from the code under test."""

from __future__ import annotations

import asyncio
import email
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunker import MiB, Part, PartLimits, plan_parts
from resume import FileIdentity, ManifestStore
from uploader.config import PROCORE_SANDBOX_URL as SANDBOX_URL
from uploader.config import UploadOptions
from uploader.engine import _Upload
from uploader.errors import PermanentError, SessionLost, TransientError, UploadFailed, UrlExpired, UsageError
from uploader.procore_flow import ProcoreFlow, hash_segments
from uploader.retry import RetryPolicy
from uploader.targets.procore import (
    V11_LIMITS,
    V11_START_WINDOW,
    V21_LIMITS,
    FileDigests,
    ProcoreProtocol,
    ProcoreTarget,
    SegmentDigest,
    api_error,
    procore_protocol,
    storage_error,
)
from uploader.transport_sync import _FormReader
from uploader.wire import FileSlice, FormBody, HttpRequest, HttpResponse

TOKEN = "tok-SECRET-1234567890"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def proto(api: str = "v2.1", project: int | None = 10, clock: Callable[[], float] | None = None,
          source: str = "/data/plans.pdf") -> ProcoreProtocol:
    return ProcoreProtocol(ProcoreTarget(1, project), api=api, base_url="https://api.example.test/",  # type: ignore[arg-type]
                           token=TOKEN, source=source, clock=clock or Clock())


def resp(status: int, body: Any = b"", **headers: str) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, raw)


def s3_xml(code: str, message: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


def digests_for(parts: list[Part]) -> FileDigests:
    return FileDigests(tuple(SegmentDigest(f"{p.number:064x}", f"{p.number:032x}") for p in parts),
                       "f" * 64, "e" * 32)


def v21_segment(number: int, size: int, expires: float = NOW + 3600) -> dict[str, Any]:
    return {"part_number": number, "url": f"https://storage.test/b/k?partNumber={number}&X-Amz-Signature=s{number}",
            "url_expires_at": int(expires),
            "headers": {"Content-Length": str(size), "x-amz-content-sha256": f"{number:064x}"}}


def created_v21(parts: list[Part], expires: float = NOW + 3600) -> HttpResponse:
    return resp(201, {"data": {"upload_id": "01UPLOAD", "status": "ready",
                               "segments": [v21_segment(p.number, p.length, expires) for p in parts]}})


def created_v11(parts: list[Part]) -> HttpResponse:
    return resp(201, {"uuid": "01UUID", "status": "ready", "segments": [
        {"size": p.length, "url": f"https://storage.test/b/k?partNumber={p.number}",
         "headers": {"content-length": str(p.length), "content-md5": "bWQ1", "x-amz-content-sha256": "ab"}}
        for p in parts]})


PARTS = [Part(1, 0, 6 * MiB), Part(2, 6 * MiB, 6 * MiB), Part(3, 12 * MiB, 100)]
SIZES = {p.number: p.length for p in PARTS}


# -- destination, options, token ---------------------------------------------------------


def test_destination_parsing() -> None:
    assert ProcoreTarget.parse("procore://42") == ProcoreTarget(42, None)
    assert ProcoreTarget.parse("procore://42/projects/7/") == ProcoreTarget(42, 7)
    for bad in ("procore://", "procore://abc", "procore://1/projects", "procore://1/folders/2",
                "procore://1/projects/x", "procore://1?x=1", "s3://1"):
        with pytest.raises(UsageError):
            ProcoreTarget.parse(bad)


def opts(dest: str = "procore://1/projects/10", **kw: Any) -> UploadOptions:
    return UploadOptions(source="/data/f.bin", destination=dest, **kw)


def test_api_defaults_to_v21_with_a_project_and_v11_without() -> None:
    env = {"PROCORE_ACCESS_TOKEN": TOKEN}
    assert procore_protocol(opts(), "/f", env).api == "v2.1"
    assert procore_protocol(opts("procore://1"), "/f", env).api == "v1.1"
    assert procore_protocol(opts(procore_api="v1.1"), "/f", env).api == "v1.1"
    with pytest.raises(UsageError, match="only in a project"):
        procore_protocol(opts("procore://1", procore_api="v2.1"), "/f", env)


def test_base_url_production_sandbox_and_no_cleartext_token() -> None:
    env = {"PROCORE_ACCESS_TOKEN": TOKEN}
    assert procore_protocol(opts(), "/f", env).base_url == "https://api.procore.com"
    assert procore_protocol(opts(procore_base_url=SANDBOX_URL), "/f", env).base_url == "https://sandbox.procore.com"
    assert procore_protocol(opts(procore_base_url="http://127.0.0.1:8080"), "/f", env).base_url.startswith("http://")
    with pytest.raises(UsageError, match="unencrypted"):
        procore_protocol(opts(procore_base_url="http://api.example.com"), "/f", env)


def test_missing_token_names_both_fixes() -> None:
    with pytest.raises(UsageError) as info:
        procore_protocol(opts(), "/f", {})
    assert "PROCORE_ACCESS_TOKEN" in str(info.value) and "--token-file" in str(info.value)
    assert info.value.exit_code == 2


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    p = procore_protocol(opts(token_file=str(path)), "/f", {})
    assert p.status({"upload_id": "u"}).headers["Authorization"] == f"Bearer {TOKEN}"
    path.write_text("")
    with pytest.raises(UsageError, match="empty"):
        procore_protocol(opts(token_file=str(path)), "/f", {})
    path.write_text("two words")
    with pytest.raises(UsageError, match="spaces"):
        procore_protocol(opts(token_file=str(path)), "/f", {})
    with pytest.raises(UsageError, match="cannot read"):
        procore_protocol(opts(token_file=str(tmp_path / "missing")), "/f", {})


def test_manifest_name_includes_api_and_host() -> None:
    assert proto().destination() != proto("v1.1").destination()
    assert "api.example.test" in proto().destination()


# -- part planning ---------------------------------------------------------------------------


def test_v21_parts_are_more_than_5mib_and_at_most_100mb() -> None:
    parts = plan_parts(50 * MiB, 5 * MiB, V21_LIMITS)
    assert all(p.length > 5 * MiB for p in parts[:-1])
    assert plan_parts(50 * MiB, 5 * MiB, V11_LIMITS)[0].length == 5 * MiB  # v1.1: "at least 5 MB"
    big = plan_parts(900 * 1024 * MiB, 16 * MiB, V21_LIMITS)
    assert len(big) <= 10_000 and max(p.length for p in big) <= 100_000_000
    with pytest.raises(ValueError):
        plan_parts(10_000 * 100_000_000, 16 * MiB, V21_LIMITS)


# -- creation ----------------------------------------------------------------------------------


def test_v21_create_declares_every_digest_and_carries_auth() -> None:
    req = proto().create_upload("plans.pdf", "application/pdf", PARTS, digests_for(PARTS))
    body = json.loads(req.body)  # type: ignore[arg-type]
    assert req.method == "POST" and req.url == "https://api.example.test/rest/v2.1/companies/1/projects/10/uploads"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}" and req.headers["Procore-Company-Id"] == "1"
    assert body["file_size"] == sum(p.length for p in PARTS) and body["sha256"] == "f" * 64 and body["md5"] == "e" * 32
    assert [s["size"] for s in body["segments"]] == [p.length for p in PARTS]
    assert body["segments"][1] == {"size": 6 * MiB, "sha256": f"{2:064x}", "md5": f"{2:032x}"}


def test_v11_create_paths_and_body() -> None:
    req = proto("v1.1", None).create_upload("a.bin", "application/octet-stream", PARTS, digests_for(PARTS))
    assert req.url.endswith("/rest/v1.1/companies/1/uploads")
    assert proto("v1.1", 10).create_upload("a", "b", PARTS, digests_for(PARTS)).url.endswith(
        "/rest/v1.1/projects/10/uploads")
    body = json.loads(req.body)  # type: ignore[arg-type]
    assert body["response_filename"] == "a.bin" and len(body["segments"]) == 3 and "file_size" not in body


def test_v21_session_holds_id_but_no_token_and_no_urls() -> None:
    p = proto()
    session = p.parse_created(created_v21(PARTS), PARTS)
    assert session["upload_id"] == "01UPLOAD" and session["api"] == "v2.1"
    text = json.dumps(session)
    assert TOKEN not in text and "X-Amz-Signature" not in text


def test_v11_session_keeps_urls_because_v11_cannot_fetch_them_again() -> None:
    session = proto("v1.1").parse_created(created_v11(PARTS), PARTS)
    assert session["upload_id"] == "01UUID" and len(session["urls"]) == 3
    assert TOKEN not in json.dumps(session)


def test_reply_not_matching_the_plan_is_refused() -> None:
    bad = created_v21(PARTS[:2])
    with pytest.raises(PermanentError):
        proto().parse_created(bad, PARTS)
    wrong_size = resp(201, {"data": {"upload_id": "u", "segments": [v21_segment(p.number, 1) for p in PARTS]}})
    with pytest.raises(PermanentError, match="does not match"):
        proto().parse_created(wrong_size, PARTS)


# -- storage PUTs ------------------------------------------------------------------------------


def test_part_put_sends_exactly_the_given_url_and_headers_without_auth() -> None:
    p = proto()
    p.parse_created(created_v21(PARTS), PARTS)
    req = p.put_part(PARTS[1])
    seg = v21_segment(2, 6 * MiB)
    assert req.method == "PUT" and req.url == seg["url"]
    assert dict(req.headers) == seg["headers"]
    assert "Authorization" not in req.headers and "Procore-Company-Id" not in req.headers
    assert req.body == FileSlice("/data/plans.pdf", 6 * MiB, 6 * MiB)


def test_v11_put_adds_octet_stream_and_sends_content_length_once() -> None:
    p = proto("v1.1")
    p.parse_created(created_v11(PARTS), PARTS)
    req = p.put_part(PARTS[0])
    lengths = [k for k in req.headers if k.lower() == "content-length"]
    assert lengths == ["Content-Length"] and req.headers["Content-Length"] == str(6 * MiB)
    assert req.headers["Content-Type"] == "application/octet-stream"
    assert req.headers["content-md5"] == "bWQ1" and "Authorization" not in req.headers


def test_put_reply_etag() -> None:
    assert proto().parse_put(resp(200, ETag='"abc"'), PARTS[0]) == "abc"
    with pytest.raises(TransientError):
        proto().parse_put(resp(200), PARTS[0])


# -- error classification ----------------------------------------------------------------------


def test_storage_403_expired_is_url_expired_other_403_is_storage_not_procore() -> None:
    expired = storage_error(resp(403, s3_xml("AccessDenied", "Request has expired")), "part 2 PUT")
    assert isinstance(expired, UrlExpired)
    refused = storage_error(resp(403, s3_xml("SignatureDoesNotMatch", "nope")), "part 2 PUT")
    assert isinstance(refused, PermanentError) and not isinstance(refused, TransientError)
    assert "storage" in str(refused) and "not Procore's API" in str(refused)


@pytest.mark.parametrize("code", ["BadDigest", "XAmzContentSHA256Mismatch", "InternalError"])
def test_corrupted_or_failed_part_is_sent_again(code: str) -> None:
    assert isinstance(storage_error(resp(400 if code != "InternalError" else 500, s3_xml(code, "x")), "p"),
                      TransientError)


def test_storage_lost_upload() -> None:
    assert isinstance(storage_error(resp(404, s3_xml("NoSuchUpload", "gone")), "p"), SessionLost)


def test_401_says_the_token_expired_and_how_to_fix_it() -> None:
    body = {"error": "invalid_token", "error_description": "The access token is invalid"}
    err = api_error(resp(401, body), "Procore GET upload", ProcoreTarget(1, 10))
    assert isinstance(err, PermanentError) and err.status == 401
    text = str(err)
    assert "The access token is invalid" in text and "PROCORE_ACCESS_TOKEN" in text and "resume" in text
    assert "\n" not in text


def test_api_403_names_the_company_and_the_app_install() -> None:
    err = api_error(resp(403, {"message": "App is not connected to this company"}), "Procore create upload",
                    ProcoreTarget(999, 10))
    assert "company 999" in str(err) and "installed" in str(err) and "App is not connected" in str(err)


def test_404_on_create_names_the_project() -> None:
    err = api_error(resp(404, {"message": "Project not found"}), "Procore create upload", ProcoreTarget(1, 77))
    assert "project 77" in str(err)


def test_429_waits_until_x_rate_limit_reset_with_an_injected_clock() -> None:
    clock = Clock()
    err = api_error(resp(429, b"slow down", X_Rate_Limit_Reset=str(int(NOW) + 3)), "Procore create upload",
                    ProcoreTarget(1, 10), clock)
    assert isinstance(err, TransientError) and err.retry_after == pytest.approx(3.0)
    # The engine's policy waits at least that long (its backoff alone would be under 0.5 s).
    assert RetryPolicy().delay(1, err) >= 3.0
    clock.now = NOW + 2.5
    later = api_error(resp(429, X_Rate_Limit_Reset=str(int(NOW) + 3)), "x", ProcoreTarget(1, 10), clock)
    assert isinstance(later, TransientError) and later.retry_after == pytest.approx(0.5)


def test_429_honours_the_later_of_reset_and_retry_after_and_503_retry_after() -> None:
    both = api_error(resp(429, X_Rate_Limit_Reset=str(int(NOW) + 3), Retry_After="10"), "x",
                     ProcoreTarget(1, 10), Clock())
    assert isinstance(both, TransientError) and both.retry_after == 10
    busy = api_error(resp(503, b"Service Unavailable", Retry_After="7"), "x", ProcoreTarget(1, 10), Clock())
    assert isinstance(busy, TransientError) and busy.retry_after == 7
    # X-Rate-Limit-Reset is on every reply (hourly window); only a 429 means "wait for it".
    fine = api_error(resp(500, X_Rate_Limit_Reset=str(int(NOW) + 3000)), "x", ProcoreTarget(1, 10), Clock())
    assert isinstance(fine, TransientError) and fine.retry_after is None


def test_no_error_message_carries_the_token() -> None:
    p = proto()
    for status in (400, 401, 403, 404, 422, 429, 503):
        for req in (p.status({"upload_id": "u"}), p.create_upload("a", "b", PARTS, digests_for(PARTS))):
            assert TOKEN not in req.label
            assert TOKEN not in str(api_error(resp(status, {"message": "m"}), req.label, p.target))


# -- v2.1 renewal, progress, completion -----------------------------------------------------------


def test_v21_get_renews_urls_of_pending_parts() -> None:
    clock = Clock()
    p = proto(clock=clock)
    p.parse_created(created_v21(PARTS, expires=NOW + 10), PARTS)
    assert not p.expiring(2, margin=3) and p.part_url(2).generation == 1
    clock.now = NOW + 8
    assert p.expiring(2, margin=3)
    get = p.status({"upload_id": "01UPLOAD"})
    assert get.method == "GET" and get.url.endswith("/projects/10/uploads/01UPLOAD")
    reply = resp(200, {"data": {"status": "receiving", "segments": [v21_segment(2, 6 * MiB, NOW + 20),
                                                                    v21_segment(3, 100, NOW + 20)]}})
    status = p.parse_status(reply, SIZES)
    assert status.pending == {2, 3} and status.renewed == 2 and status.status == "receiving"
    assert p.part_url(2).generation == 2 and p.part_url(1).generation == 1 and not p.expiring(2, margin=3)


def test_v21_get_without_part_numbers_maps_to_unreported_parts() -> None:
    p = proto()
    p.parse_created(created_v21(PARTS), PARTS)
    unnumbered = {k: v for k, v in v21_segment(3, 100).items() if k != "part_number"}
    status = p.parse_status(resp(200, {"data": {"status": "receiving", "segments": [unnumbered]}}), SIZES,
                            reported=[1, 2])
    assert status.pending == {3} and p.part_url(3).generation == 2
    with pytest.raises(SessionLost):
        p.parse_status(resp(200, {"data": {"status": "receiving", "segments": [unnumbered]}}), SIZES)


def test_v21_get_404_means_the_upload_is_gone() -> None:
    with pytest.raises(SessionLost):
        proto().parse_status(resp(404, {"message": "Upload not found"}), SIZES)


def test_v21_partial_patch_has_nulls_and_final_patch_has_all_etags() -> None:
    p = proto()
    partial = json.loads(p.progress({"upload_id": "u"}, ["a", None, "c"]).body)  # type: ignore[arg-type]
    assert partial == {"part_etags": ["a", None, "c"]}
    final = p.finish({"upload_id": "u"}, ["a", "b", "c"])
    assert final.method == "PATCH" and json.loads(final.body) == {"part_etags": ["a", "b", "c"]}  # type: ignore[arg-type]
    assert p.parse_patch(resp(200, {"data": {"upload_id": "u", "status": "complete"}})) == "complete"


def test_v11_complete_lists_etags_in_segment_order() -> None:
    req = proto("v1.1", None).finish({"upload_id": "U"}, ["a", "b"])
    assert req.url.endswith("/rest/v1.1/companies/1/uploads/U")
    assert json.loads(req.body) == {"segments": [{"etag": "a"}, {"etag": "b"}]}  # type: ignore[arg-type]


def test_v11_resume_reuses_urls_inside_the_start_window_only() -> None:
    clock = Clock()
    session = proto("v1.1", clock=clock).parse_created(created_v11(PARTS), PARTS)
    fresh = proto("v1.1", clock=clock)
    fresh.adopt(session, SIZES)
    assert fresh.put_part(PARTS[2]).url == "https://storage.test/b/k?partNumber=3"
    clock.now = NOW + V11_START_WINDOW + 1
    with pytest.raises(SessionLost, match="an hour"):
        proto("v1.1", clock=clock).adopt(session, SIZES)


# -- the single shot: v1.1 create, then the S3 POST form ---------------------------------------------


def test_single_shot_form_has_every_field_unchanged_then_the_file(tmp_path: Path) -> None:
    src = tmp_path / "plans.pdf"
    data = os.urandom(100_000)
    src.write_bytes(data)
    p = proto(source=str(src))
    prep = p.prepare_single_shot(len(data))
    assert prep.url.endswith("/rest/v1.1/projects/10/uploads") and "segments" not in json.loads(prep.body)  # type: ignore[arg-type]
    fields = {"key": "companies/1/X", "Content-Type": "application/pdf", "policy": "cG9s",
              "x-amz-signature": "abc", "x-amz-credential": "AK/2026/us-east-1/s3/aws4_request"}
    p.parse_prepare_single_shot(resp(201, {"uuid": "01FORM", "url": "https://storage.test/bucket", "fields": fields}))
    req = p.single_shot(len(data), None)
    assert "Authorization" not in req.headers and isinstance(req.body, FormBody)
    raw = _FormReader(req.body).read()
    assert len(raw) == req.body.length == int(req.headers["Content-Length"])
    message = email.message_from_bytes(f"Content-Type: {req.headers['Content-Type']}\r\n\r\n".encode() + raw)
    parts = message.get_payload()
    assert isinstance(parts, list)
    names = [part.get_param("name", header="content-disposition") for part in parts]
    assert names == [*fields, "file"]
    assert [part.get_payload() for part in parts[:-1]] == list(fields.values())
    assert parts[-1].get_payload(decode=True) == data
    assert p.parse_single_shot(resp(204)).upload_id == "01FORM"
    with pytest.raises(PermanentError):
        p.parse_single_shot(resp(403, s3_xml("AccessDenied", "Invalid according to Policy: Extra input fields")))


def test_form_reader_streams_in_small_reads(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(os.urandom(70_010))
    form = FormBody([("a", "1")], "file", FileSlice(str(src), 5, 70_000), 'we"ird\r\nname.bin')
    reader = _FormReader(form)
    chunks = []
    while chunk := reader.read(8192):
        chunks.append(chunk)
    reader.close()
    whole = b"".join(chunks)
    assert whole == form.head() + src.read_bytes()[5:70_005] + form.tail() and len(whole) == form.length
    assert b'filename="we_ird__name.bin"' in form.head()
    src.write_bytes(b"short")  # the file shrank: an error, not a silently short body
    with pytest.raises(OSError, match="shrank"):
        _FormReader(form).read()


def test_nothing_to_abort_on_procore() -> None:
    assert proto().abort_requests({"upload_id": "u"}) == []
    with pytest.raises(UploadFailed, match="no API to delete"):
        proto().abort({"upload_id": "u"})


# -- hashing before creation --------------------------------------------------------------------


def test_hash_segments_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    src = tmp_path / "f"
    src.write_bytes(data)
    parts = plan_parts(len(data), 1 * MiB, PartLimits(min_part=1))
    digests, xxh3 = hash_segments(str(src), parts, whole=True)
    for part, seg in zip(parts, digests.segments, strict=True):
        chunk = data[part.offset:part.end]
        assert seg.sha256 == hashlib.sha256(chunk).hexdigest() and seg.md5 == hashlib.md5(chunk).hexdigest()
    assert digests.sha256 == hashlib.sha256(data).hexdigest() and digests.md5 == hashlib.md5(data).hexdigest()
    assert len(xxh3) == len(parts)
    assert FileDigests.from_json(json.loads(json.dumps(digests.to_json()))) == digests
    assert hash_segments(str(src), parts, whole=False)[0].sha256 is None


# -- the flow, on a scripted transport: renewal spends no retry budget -----------------------------


class ScriptedProcore:
    """Answers like the contract says; the first PUT of part 1 meets an expired URL."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[HttpRequest] = []
        self.expire_first_put = True
        self.sizes: dict[int, int] = {}
        self.refuse_patch = False  # answer PATCH with 401, as for a token that ran out

    async def send(self, req: HttpRequest, on_sent: Callable[[int], None] | None = None) -> HttpResponse:
        self.sent.append(req)
        if req.method == "POST":
            segs = json.loads(req.body)["segments"]  # type: ignore[arg-type]
            self.sizes = {i + 1: s["size"] for i, s in enumerate(segs)}
            return resp(201, {"data": {"upload_id": "01FLOW", "status": "ready", "segments": [
                v21_segment(n, size) for n, size in self.sizes.items()]}})
        if req.method == "PUT":
            if self.expire_first_put and "partNumber=1&" in req.url:
                self.expire_first_put = False
                return resp(403, s3_xml("AccessDenied", "Request has expired"))
            assert "Authorization" not in req.headers
            return resp(200, ETag=f'"etag-{req.url.split("partNumber=")[1].split("&")[0]}"')
        if req.method == "GET":
            done = any(r.method == "PATCH" for r in self.sent)
            segments = [] if done else [v21_segment(n, s) for n, s in self.sizes.items()]
            return resp(200, {"data": {"status": "available" if done else "ready", "segments": segments}})
        if self.refuse_patch:
            return resp(401, {"error": "invalid_token", "error_description": "The access token is invalid"})
        return resp(200, {"data": {"upload_id": "01FLOW", "status": "complete"}})


def flow_on(server: ScriptedProcore, tmp_path: Path) -> tuple[ProcoreFlow, ManifestStore]:
    src = tmp_path / "f.bin"
    if not src.exists():
        src.write_bytes(os.urandom(13 * MiB))
    options = UploadOptions(source=str(src), destination="procore://1/projects/10", part_size="6MiB",
                            state_dir=str(tmp_path / "state"), concurrency=2)
    p = proto(source=str(src))
    store = ManifestStore(tmp_path / "state", str(src), p.destination())
    run = _Upload(options, FileIdentity.of(str(src)), p, server, store, show_bar=False)  # type: ignore[arg-type]
    return ProcoreFlow(run), store


def test_expired_url_is_renewed_and_the_part_resent_without_spending_retries(tmp_path: Path) -> None:
    server = ScriptedProcore(Clock())
    flow, store = flow_on(server, tmp_path)
    run = flow.run
    done = asyncio.run(flow.upload())
    assert done.upload_id == "01FLOW"
    assert run.retries == 0 and flow.renewals == 1
    puts = [r for r in server.sent if r.method == "PUT"]
    assert len(puts) == 4  # 3 parts + the one resend after renewal
    patch = next(r for r in server.sent if r.method == "PATCH")
    assert json.loads(patch.body) == {"part_etags": ["etag-1", "etag-2", "etag-3"]}  # type: ignore[arg-type]
    assert not store.path.exists()
    for req in server.sent:  # the token goes to the API only
        assert ("Authorization" in req.headers) == (req.method != "PUT")



def test_resume_with_every_part_sent_completes_with_one_patch_and_no_put(tmp_path: Path) -> None:
    server = ScriptedProcore(Clock())
    server.expire_first_put, server.refuse_patch = False, True
    first, store = flow_on(server, tmp_path)
    with pytest.raises(PermanentError, match="401"):
        asyncio.run(first.upload())
    kept = json.loads(store.path.read_text())
    assert [p["etag"] for p in kept["parts"]] == ["etag-1", "etag-2", "etag-3"]
    assert TOKEN not in store.path.read_text()

    server.refuse_patch, server.sent = False, []
    second, _ = flow_on(server, tmp_path)
    done = asyncio.run(second.upload())
    assert done.upload_id == "01FLOW" and second.run.resumed
    methods = [r.method for r in server.sent]
    assert methods.count("PATCH") == 1 and "PUT" not in methods and "POST" not in methods
    assert not store.path.exists()
