"""The Procore emulator, driven by plain ``requests`` as a client following the contract.

The contract is summarised, with citations, in docs/procore-contract.md. Expected values
come from the docs or from SeaweedFS (object md5s are read back from storage), never from
the emulator's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.servers.procore_emulator import ProcoreEmulator
from tests.servers.seaweed import SeaweedFS

MIB = 1024 * 1024
TOKEN = "test-token"
COMPANY, PROJECT = 1, 10
V11 = f"/rest/v1.1/companies/{COMPANY}/uploads"
V21 = f"/rest/v2.1/companies/{COMPANY}/projects/{PROJECT}/uploads"
TIMEOUT = 60


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    with SeaweedFS(bucket="procore-emulator") as s3:
        yield s3


@pytest.fixture
def procore(seaweed: SeaweedFS) -> Iterator[ProcoreEmulator]:
    with ProcoreEmulator(seaweed, companies={COMPANY: (PROJECT,), 2: (20,)}) as emulator:
        yield emulator


def api_headers(token: str | None = TOKEN, company: int | None = COMPANY) -> dict[str, str]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if company is not None:
        headers["Procore-Company-Id"] = str(company)
    return headers


def declare(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "md5": hashlib.md5(data).hexdigest()}


def parts_of(*sizes: int) -> list[bytes]:
    return [os.urandom(size) for size in sizes]


def put_part(segment: dict[str, Any], data: bytes, **extra: str) -> requests.Response:
    """PUT one part the way the docs say: the url and every header as given, no token."""
    headers = {**segment["headers"], "Content-Type": "application/octet-stream", **extra}
    return requests.put(segment["url"], data=data, headers=headers, timeout=TIMEOUT)


def s3_error_code(response: requests.Response) -> str:
    text = response.text
    return text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else ""


def create_v11(procore: ProcoreEmulator, parts: list[bytes]) -> dict[str, Any]:
    body = {"response_filename": "video.mp4", "response_content_type": "video/mp4",
            "segments": [declare(p) for p in parts]}
    r = requests.post(procore.base_url + V11, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    return dict(r.json())


def create_v21(procore: ProcoreEmulator, parts: list[bytes]) -> dict[str, Any]:
    whole = b"".join(parts)
    body = {"file_name": "video.mp4", "file_size": len(whole), "content_type": "video/mp4",
            "sha256": hashlib.sha256(whole).hexdigest(), "md5": hashlib.md5(whole).hexdigest(),
            "segments": [declare(p) for p in parts]}
    r = requests.post(procore.base_url + V21, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


def v21_get(procore: ProcoreEmulator, upload_id: str) -> dict[str, Any]:
    r = requests.get(f"{procore.base_url}{V21}/{upload_id}", headers=api_headers(),
                     timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def v21_patch(procore: ProcoreEmulator, upload_id: str,
              etags: list[str | None]) -> requests.Response:
    return requests.patch(f"{procore.base_url}{V21}/{upload_id}", json={"part_etags": etags},
                          headers=api_headers(), timeout=TIMEOUT)


def v11_patch(procore: ProcoreEmulator, uuid: str, etags: list[str]) -> requests.Response:
    body = {"segments": [{"etag": e} for e in etags]}
    return requests.patch(f"{procore.base_url}{V11}/{uuid}", json=body, headers=api_headers(),
                          timeout=TIMEOUT)


# -- v1.1 segmented ---------------------------------------------------------------------------


def test_v11_segmented_happy_path(procore: ProcoreEmulator, seaweed: SeaweedFS) -> None:
    parts = parts_of(5 * MIB + 11, 5 * MIB + 7, 123_457)
    created = create_v11(procore, parts)
    assert created["status"] == "ready"
    segments = created["segments"]
    assert [s["size"] for s in segments] == [len(p) for p in parts]
    # uploads.md Step 2: the three headers, content-md5 in base64.
    assert set(segments[0]["headers"]) == {"x-amz-content-sha256", "content-length",
                                            "content-md5"}

    etags = []
    for segment, data in zip(segments, parts, strict=True):
        r = put_part(segment, data)
        assert r.status_code == 200, r.text
        etags.append(r.headers["ETag"])

    r = v11_patch(procore, created["uuid"], etags)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "complete"
    assert [s["etag"] for s in done["segments"]] == [e.strip('"') for e in etags]

    digest = seaweed.get_object_bytes_md5(procore.object_key(created["uuid"]))
    assert digest.md5 == hashlib.md5(b"".join(parts)).hexdigest()
    assert digest.size == sum(len(p) for p in parts)
    assert procore.object_md5(created["uuid"]) == digest.md5
    storage = [r for r in procore.requests if r.side == "storage"]
    assert len(storage) == 3 and not any(r.has_authorization for r in storage)
    assert all(r.has_authorization for r in procore.requests if r.side == "api")


def test_v11_wrong_etag_order_rejected_then_right_order_completes(
    procore: ProcoreEmulator,
) -> None:
    parts = parts_of(5 * MIB + 1, 4096)
    created = create_v11(procore, parts)
    etags = [put_part(s, p).headers["ETag"]
             for s, p in zip(created["segments"], parts, strict=True)]

    assert v11_patch(procore, created["uuid"], etags[::-1]).status_code == 422
    assert v11_patch(procore, created["uuid"], [etags[0], "0" * 32]).status_code == 422
    r = v11_patch(procore, created["uuid"], etags)
    assert r.status_code == 200 and r.json()["status"] == "complete"


def test_v11_segment_below_5mb_rejected_unless_last(procore: ProcoreEmulator) -> None:
    def create(sizes: list[int]) -> int:
        segments = [{"size": n, "sha256": "a" * 64} for n in sizes]
        r = requests.post(procore.base_url + V11, json={"segments": segments},
                          headers=api_headers(), timeout=TIMEOUT)
        return r.status_code

    assert create([5 * MIB - 1, 100]) == 422
    assert create([5 * MIB, 100]) == 201
    assert create([100]) == 201


def test_v11_start_window_expired_gives_403_from_storage(procore: ProcoreEmulator) -> None:
    procore.start_window_s = 1
    parts = parts_of(2048)
    created = create_v11(procore, parts)
    time.sleep(2.2)
    r = put_part(created["segments"][0], parts[0])
    assert r.status_code == 403
    assert s3_error_code(r) == "AccessDenied" and "expired" in r.text


# -- storage front ------------------------------------------------------------------------------


def test_storage_put_refuses_token_and_altered_headers(procore: ProcoreEmulator) -> None:
    parts = parts_of(5 * MIB + 3, 10)
    segment = create_v11(procore, parts)["segments"][0]
    data = parts[0]

    with_token = put_part(segment, data, Authorization=f"Bearer {TOKEN}")
    assert with_token.status_code == 400 and s3_error_code(with_token) == "InvalidArgument"

    no_sha = {k: v for k, v in segment["headers"].items() if k != "x-amz-content-sha256"}
    r = requests.put(segment["url"], data=data, headers=no_sha, timeout=TIMEOUT)
    assert r.status_code == 403 and s3_error_code(r) == "SignatureDoesNotMatch"

    # Content-MD5 is signed into the URL: SeaweedFS itself refuses the request without it.
    no_md5 = {k: v for k, v in segment["headers"].items() if k != "content-md5"}
    r = requests.put(segment["url"], data=data, headers=no_md5, timeout=TIMEOUT)
    assert r.status_code == 403 and s3_error_code(r) == "SignatureDoesNotMatch"

    corrupted = bytes([data[0] ^ 1]) + data[1:]
    r = put_part(segment, corrupted)
    assert r.status_code == 400 and s3_error_code(r) == "XAmzContentSHA256Mismatch"

    assert put_part(segment, data).status_code == 200


# -- v2.1 unified -------------------------------------------------------------------------------


def test_v21_partial_patch_url_renewal_and_polling(
    procore: ProcoreEmulator, seaweed: SeaweedFS
) -> None:
    parts = parts_of(5 * MIB + 1, 5 * MIB + 2, 77_777)
    procore.url_expiry_s = 1
    created = create_v21(procore, parts)
    assert created["total_parts"] == 3 and created["status"] == "ready"
    assert created["segments"][0]["url_expires_at"] <= time.time() + 2

    time.sleep(2.2)
    expired = put_part(created["segments"][0], parts[0])
    assert expired.status_code == 403 and "expired" in expired.text

    procore.url_expiry_s = 600
    fresh = v21_get(procore, created["upload_id"])["segments"]
    assert [s["part_number"] for s in fresh] == [1, 2, 3]
    first = put_part(fresh[0], parts[0])
    assert first.status_code == 200

    r = v21_patch(procore, created["upload_id"], [first.headers["ETag"], None, None])
    assert r.status_code == 200 and r.json()["data"]["status"] == "receiving"

    status = v21_get(procore, created["upload_id"])
    assert status["status"] == "receiving"
    assert [s["part_number"] for s in status["segments"]] == [2, 3]
    etags = [first.headers["ETag"]]
    for segment in status["segments"]:
        r = put_part(segment, parts[segment["part_number"] - 1])
        assert r.status_code == 200, r.text
        etags.append(r.headers["ETag"])

    r = v21_patch(procore, created["upload_id"], list(etags))
    assert r.status_code == 200 and r.json()["data"]["status"] == "complete"
    polled = [v21_get(procore, created["upload_id"])["status"] for _ in range(2)]
    assert polled == ["complete", "available"]

    digest = seaweed.get_object_bytes_md5(procore.object_key(created["upload_id"]))
    assert digest.md5 == hashlib.md5(b"".join(parts)).hexdigest()


@pytest.mark.parametrize(
    ("sizes", "status"),
    [
        ([5 * MIB, 1024], 422),  # exactly 5 MiB, not the last part: refused
        ([5 * MIB + 1, 1024], 201),
        ([100 * MIB + 1], 422),
        ([100 * MIB, 1024], 201),
        ([1024], 201),  # a lone small part is the last part
    ],
)
def test_v21_part_size_limits(procore: ProcoreEmulator, sizes: list[int], status: int) -> None:
    body = {"file_name": "f.bin", "file_size": sum(sizes), "content_type": "video/mp4",
            "sha256": "b" * 64, "segments": [{"size": n, "sha256": "a" * 64} for n in sizes]}
    r = requests.post(procore.base_url + V21, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == status, r.text


def test_v21_more_than_10000_parts_rejected(procore: ProcoreEmulator) -> None:
    segments = [{"size": 6 * MIB, "sha256": "a" * 64}] * 10_001
    body = {"file_name": "f.bin", "file_size": 6 * MIB * 10_001, "content_type": "video/mp4",
            "sha256": "b" * 64, "segments": segments}
    r = requests.post(procore.base_url + V21, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 422 and "10000" in r.text


def test_v21_patch_checks_the_object_against_declared_checksums(
    procore: ProcoreEmulator, seaweed: SeaweedFS
) -> None:
    declared = os.urandom(4096)
    body = {"file_name": "f.bin", "file_size": len(declared), "content_type": "video/mp4",
            "sha256": hashlib.sha256(declared).hexdigest()}
    created = requests.post(procore.base_url + V21, json=body, headers=api_headers(),
                            timeout=TIMEOUT).json()["data"]
    # Write other bytes straight to SeaweedFS, past the storage front's checks.
    upload = procore.upload(created["upload_id"])
    other = os.urandom(4096)
    etag = seaweed.s3.upload_part(Bucket=seaweed.bucket, Key=upload.key,
                                  UploadId=upload.s3_upload_id, PartNumber=1,
                                  Body=other)["ETag"]

    r = v21_patch(procore, created["upload_id"], [etag])
    assert r.status_code == 422 and "checksum" in r.text
    assert v21_get(procore, created["upload_id"])["status"] == "failed"
    assert seaweed.head_object(upload.key) is None
    assert v21_patch(procore, created["upload_id"], [etag]).status_code == 422


def test_expired_upload_is_gone_from_api_and_storage(
    procore: ProcoreEmulator, seaweed: SeaweedFS
) -> None:
    parts = parts_of(5 * MIB + 1, 10)
    created = create_v21(procore, parts)
    key = procore.object_key(created["upload_id"])
    procore.expire_upload(created["upload_id"])

    r = put_part(created["segments"][0], parts[0])
    assert r.status_code == 404 and s3_error_code(r) == "NoSuchUpload"
    r = requests.get(f"{procore.base_url}{V21}/{created['upload_id']}", headers=api_headers(),
                     timeout=TIMEOUT)
    assert r.status_code == 404
    assert v21_patch(procore, created["upload_id"], ["0" * 32, None]).status_code == 404
    assert not seaweed.list_multipart_uploads(prefix=key)


# -- single-shot POST form ------------------------------------------------------------------------


def test_v11_single_shot_post_form(procore: ProcoreEmulator, seaweed: SeaweedFS) -> None:
    body = {"response_filename": "example.pdf", "response_content_type": "application/pdf"}
    r = requests.post(procore.base_url + V11, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    created = r.json()
    fields = created["fields"]
    assert {"key", "Content-Type", "Content-Disposition", "policy", "x-amz-credential",
            "x-amz-algorithm", "x-amz-date", "x-amz-signature"} <= set(fields)
    data = os.urandom(300_001)

    def post(form: dict[str, str], **headers: str) -> requests.Response:
        files = [*form.items(), ("file", ("example.pdf", data, "application/pdf"))]
        return requests.post(created["url"], files=files, headers=headers, timeout=TIMEOUT)

    tampered = post({**fields, "Content-Type": "text/plain"})
    assert tampered.status_code == 403 and "Policy" in tampered.text
    extra = post({**fields, "acl": "public-read"})
    assert extra.status_code == 403 and "Extra input fields" in extra.text
    with_token = post(fields, Authorization=f"Bearer {TOKEN}")
    assert with_token.status_code == 400
    assert seaweed.head_object(fields["key"]) is None

    assert post(fields).status_code == 204
    head = seaweed.head_object(fields["key"])
    assert head is not None and head["ContentType"] == "application/pdf"
    assert head["ContentDisposition"] == 'inline; filename="example.pdf"'
    assert seaweed.get_object_bytes_md5(fields["key"]).md5 == hashlib.md5(data).hexdigest()


def test_v11_single_shot_policy_expires(procore: ProcoreEmulator) -> None:
    procore.start_window_s = 1
    r = requests.post(procore.base_url + V11, json={"response_filename": "a.txt"},
                      headers=api_headers(), timeout=TIMEOUT)
    created = r.json()
    time.sleep(2.2)
    files = [*created["fields"].items(), ("file", ("a.txt", b"hello", "text/plain"))]
    r = requests.post(created["url"], files=files, timeout=TIMEOUT)
    assert r.status_code == 403 and "expired" in r.text


# -- auth, company scope, throttling ---------------------------------------------------------------


def test_missing_or_bad_token_gives_401(procore: ProcoreEmulator) -> None:
    procore.add_token("stale")
    procore.expire_token("stale")
    for headers in (api_headers(token=None), api_headers(token="nope"),
                    api_headers(token="stale"), {"Authorization": TOKEN,
                                                 "Procore-Company-Id": "1"}):
        r = requests.post(procore.base_url + V11, json={}, headers=headers, timeout=TIMEOUT)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "invalid_token"
        assert "invalid_token" in r.headers["WWW-Authenticate"]
    assert procore.count(side="api", status=401) == 4


def test_company_and_project_scope(procore: ProcoreEmulator) -> None:
    def status(path: str, company: int | None) -> int:
        r = requests.post(procore.base_url + path, json={"response_filename": "a"},
                          headers=api_headers(company=company), timeout=TIMEOUT)
        return r.status_code

    assert status(V11, None) == 400  # mpz.md: Procore-Company-Id is required
    assert status("/rest/v1.1/companies/99/uploads", 99) == 403
    assert status(V11, 2) == 403  # header and path name different companies
    assert status("/rest/v1.1/projects/20/uploads", 2) == 201
    assert status("/rest/v1.1/projects/10/uploads", 2) == 404


def test_upload_belongs_to_its_creator(procore: ProcoreEmulator) -> None:
    procore.add_token("other-user", user_id=2)
    created = create_v21(procore, parts_of(1000))
    r = requests.get(f"{procore.base_url}{V21}/{created['upload_id']}",
                     headers=api_headers(token="other-user"), timeout=TIMEOUT)
    assert r.status_code == 403


def test_rate_limit_429_with_reset_then_success(procore: ProcoreEmulator) -> None:
    procore.rate_limit_next(2, reset_in_s=30)
    body = {"response_filename": "a.txt"}
    for _ in range(2):
        before = time.time()
        r = requests.post(procore.base_url + V11, json=body, headers=api_headers(),
                          timeout=TIMEOUT)
        assert r.status_code == 429
        assert "surpassed the max number of requests" in r.text
        assert before + 29 <= int(r.headers["X-Rate-Limit-Reset"]) <= time.time() + 31
        assert r.headers["X-Rate-Limit-Remaining"] == "0"
        assert "Retry-After" not in r.headers
    r = requests.post(procore.base_url + V11, json=body, headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 201
    assert int(r.headers["X-Rate-Limit-Remaining"]) < int(r.headers["X-Rate-Limit-Limit"])


def test_503_with_retry_after(procore: ProcoreEmulator) -> None:
    procore.unavailable_next(1, retry_after_s=7)
    r = requests.get(f"{procore.base_url}{V21}/nothing", headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    r = requests.get(f"{procore.base_url}{V21}/nothing", headers=api_headers(), timeout=TIMEOUT)
    assert r.status_code == 404
