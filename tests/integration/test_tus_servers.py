"""The tus test servers speak tus 1.0.0: proven with plain `requests` calls from the spec.

Three servers: @tus/server with its file store, @tus/server with its S3 store in front of
SeaweedFS, and our spec-following server (the only one with checksum + concatenation).
Expected values come from the tus 1.0.0 protocol text or from the pinned real server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.servers.seaweed import SeaweedFS
from tests.servers.tus_servers import StoreKind, TusNodeServer, upload_id
from tests.servers.tus_spec_server import TusSpecServer

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"
MAX_SIZE = 32 * 1024 * 1024
TIMEOUT = 15
REAL_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
}
FILENAME = "Überprüfung – Straße 5 (日本).pdf"

Server = TusNodeServer | TusSpecServer


# ----- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    with SeaweedFS(bucket="tus-store") as s3:
        yield s3


@pytest.fixture(scope="module")
def file_tus() -> Iterator[TusNodeServer]:
    with TusNodeServer("file", max_size=MAX_SIZE) as tus:
        yield tus


@pytest.fixture(scope="module")
def s3_tus(seaweed: SeaweedFS) -> Iterator[TusNodeServer]:
    with TusNodeServer("s3", s3=seaweed, max_size=MAX_SIZE) as tus:
        yield tus


@pytest.fixture
def spec_tus() -> Iterator[TusSpecServer]:
    # Per test: fault knobs and counters start clean, and it starts in milliseconds.
    with TusSpecServer(max_size=MAX_SIZE) as tus:
        yield tus


@pytest.fixture(params=["file", "s3", "spec"])
def any_tus(request: pytest.FixtureRequest) -> Server:
    fixture = {"file": "file_tus", "s3": "s3_tus", "spec": "spec_tus"}[request.param]
    server: Server = request.getfixturevalue(fixture)
    return server


@pytest.fixture(params=["file", "s3"])
def node_tus(request: pytest.FixtureRequest) -> TusNodeServer:
    server: TusNodeServer = request.getfixturevalue(f"{request.param}_tus")
    return server


# ----- plain tus requests -----------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(base_url: str, length: int, **headers: str) -> str:
    response = requests.post(
        base_url, headers={**TUS, "Upload-Length": str(length), **headers}, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def patch(url: str, offset: int, body: bytes, **headers: str) -> requests.Response:
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE, **headers}
    return requests.patch(url, headers=headers, data=body, timeout=TIMEOUT)


def head(url: str) -> requests.Response:
    return requests.head(url, headers=TUS, timeout=TIMEOUT)


def stored_md5(server: Server, url: str) -> str:
    if isinstance(server, TusSpecServer):
        return hashlib.md5(server.stored_bytes(url)).hexdigest()
    return server.stored_md5(url)


# ----- every server -----------------------------------------------------------------------


def test_upload_in_two_chunks_stores_the_exact_bytes(any_tus: Server) -> None:
    data = os.urandom(300_000)
    url = create(any_tus.url, len(data))
    assert head(url).headers["Upload-Offset"] == "0"

    first = patch(url, 0, data[:123_457])
    assert first.status_code == 204
    assert first.headers["Upload-Offset"] == "123457"
    head_mid = head(url)
    assert head_mid.status_code == 200
    assert head_mid.headers["Upload-Offset"] == "123457"
    assert head_mid.headers["Upload-Length"] == str(len(data))
    assert head_mid.headers["Cache-Control"] == "no-store"

    second = patch(url, 123_457, data[123_457:])
    assert second.status_code == 204
    assert second.headers["Upload-Offset"] == str(len(data))
    assert head(url).headers["Upload-Offset"] == str(len(data))
    assert stored_md5(any_tus, url) == hashlib.md5(data).hexdigest()


def test_non_ascii_metadata_comes_back_exactly(any_tus: Server) -> None:
    metadata = f"filename {b64(FILENAME)},filetype {b64('application/pdf')},is_confidential"
    url = create(any_tus.url, 10, **{"Upload-Metadata": metadata})
    echoed = head(url).headers["Upload-Metadata"]
    assert echoed == metadata
    pairs = dict(pair.split(" ") for pair in echoed.split(",") if " " in pair)
    assert base64.b64decode(pairs["filename"]).decode() == FILENAME


def test_wrong_offset_is_409_and_changes_nothing(any_tus: Server) -> None:
    url = create(any_tus.url, 20)
    assert patch(url, 0, b"0123456789").status_code == 204
    conflict = patch(url, 4, b"abcdef")
    assert conflict.status_code == 409
    assert head(url).headers["Upload-Offset"] == "10"


def test_termination_then_404(any_tus: Server) -> None:
    url = create(any_tus.url, 10)
    assert patch(url, 0, b"hello").status_code == 204
    deleted = requests.delete(url, headers=TUS, timeout=TIMEOUT)
    assert deleted.status_code == 204
    gone = head(url)
    assert gone.status_code == 404
    assert "Upload-Offset" not in gone.headers  # spec: no offset for a missing upload
    assert patch(url, 5, b"world").status_code == 404


def test_max_size_is_advertised_and_enforced(any_tus: Server) -> None:
    options = requests.options(any_tus.url, timeout=TIMEOUT)
    assert options.status_code in (200, 204)
    assert options.headers["Tus-Version"] == "1.0.0"
    assert options.headers["Tus-Max-Size"] == str(MAX_SIZE)
    too_big = requests.post(
        any_tus.url, headers={**TUS, "Upload-Length": str(MAX_SIZE + 1)}, timeout=TIMEOUT
    )
    assert too_big.status_code == 413
    assert "Location" not in too_big.headers


def test_creation_with_upload_and_deferred_length(any_tus: Server) -> None:
    created = requests.post(
        any_tus.url,
        headers={**TUS, "Upload-Length": "11", "Content-Type": OFFSET_TYPE},
        data=b"hello",
        timeout=TIMEOUT,
    )
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == "5"

    deferred = requests.post(
        any_tus.url, headers={**TUS, "Upload-Defer-Length": "1"}, timeout=TIMEOUT
    )
    url = deferred.headers["Location"]
    assert head(url).headers["Upload-Defer-Length"] == "1"
    assert patch(url, 0, b"abcd", **{"Upload-Length": "4"}).status_code == 204
    done = head(url)
    assert (done.headers["Upload-Length"], done.headers["Upload-Offset"]) == ("4", "4")
    assert "Upload-Defer-Length" not in done.headers


def test_missing_tus_resumable_is_412(any_tus: Server) -> None:
    response = requests.post(any_tus.url, headers={"Upload-Length": "1"}, timeout=TIMEOUT)
    assert response.status_code == 412


# ----- the real @tus/server stores --------------------------------------------------------


def test_real_stores_advertise_no_checksum_or_concatenation(node_tus: TusNodeServer) -> None:
    options = requests.options(node_tus.url, timeout=TIMEOUT)
    assert options.status_code == 204
    assert set(options.headers["Tus-Extension"].split(",")) == REAL_EXTENSIONS
    partial = requests.post(
        node_tus.url, headers={**TUS, "Upload-Length": "5", "Upload-Concat": "partial"}
    )
    assert partial.status_code == 501


def test_real_server_rejects_patch_without_offset_content_type(node_tus: TusNodeServer) -> None:
    # The spec suggests 415; @tus/server answers 403 (missing) and 400 (wrong type).
    url = create(node_tus.url, 10)
    headers = {**TUS, "Upload-Offset": "0"}
    missing = requests.patch(url, headers=headers, data=b"abc", timeout=TIMEOUT)
    assert missing.status_code == 403
    wrong = requests.patch(
        url, headers={**headers, "Content-Type": "application/octet-stream"}, data=b"abc"
    )
    assert wrong.status_code == 400
    assert head(url).headers["Upload-Offset"] == "0"


def test_file_store_keeps_data_and_info_side_by_side(file_tus: TusNodeServer) -> None:
    url = create(file_tus.url, 5, **{"Upload-Metadata": f"filename {b64(FILENAME)}"})
    assert patch(url, 0, b"hello").status_code == 204
    path = file_tus.stored_path(url)
    assert path == file_tus.directory / upload_id(url)
    assert path.read_bytes() == b"hello"
    info = file_tus.info(url)  # <id>.json; note: its "offset" stays 0, the file size counts
    assert info["size"] == 5
    assert info["metadata"] == {"filename": FILENAME}


def test_s3_store_buffers_chunks_below_the_part_size(
    s3_tus: TusNodeServer, seaweed: SeaweedFS
) -> None:
    # S3 needs >= 5 MiB non-final parts; the store parks smaller tails in "<id>.part".
    data = os.urandom(7 * 1024 * 1024)
    url = create(s3_tus.url, len(data))
    key = s3_tus.object_key(url)
    small = 3 * 1024 * 1024
    assert patch(url, 0, data[:small]).status_code == 204
    assert head(url).headers["Upload-Offset"] == str(small)
    assert seaweed.head_object(f"{key}.part") is not None
    (multipart,) = seaweed.list_multipart_uploads(prefix=key)
    assert seaweed.list_parts(key, multipart["UploadId"]) == []

    assert patch(url, small, data[small:]).status_code == 204
    assert seaweed.head_object(f"{key}.part") is None
    assert seaweed.get_object_bytes_md5(key).md5 == hashlib.md5(data).hexdigest()
    assert s3_tus.info(url)["size"] == len(data)
    assert seaweed.list_multipart_uploads(prefix=key) == []


@pytest.mark.parametrize("store", ["file", "s3"])
def test_expired_upload_answers_410(request: pytest.FixtureRequest, store: StoreKind) -> None:
    s3 = request.getfixturevalue("seaweed") if store == "s3" else None
    with TusNodeServer(store, s3=s3, expiration_ms=800) as tus:
        created = requests.post(tus.url, headers={**TUS, "Upload-Length": "10"}, timeout=TIMEOUT)
        assert "Upload-Expires" in created.headers  # spec: known at creation -> on the POST
        url = created.headers["Location"]
        assert "Upload-Expires" in patch(url, 0, b"abc").headers
        time.sleep(1.0)
        assert head(url).status_code == 410
        assert patch(url, 3, b"def").status_code == 410


def test_stalled_patch_keeps_received_bytes_for_the_next_head(file_tus: TusNodeServer) -> None:
    # A HEAD on a locked upload makes @tus/server end the stalled PATCH (after its 3 s
    # lockDrainTimeout) and keep what arrived: the offset a resuming client must use.
    url = create(file_tus.url, 100_000)
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        request_head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\nContent-Length: 100000\r\n\r\n"
        )
        sock.sendall(request_head.encode() + b"a" * 30_000)
        time.sleep(0.3)
        assert head(url).headers["Upload-Offset"] == "30000"
    assert patch(url, 30_000, b"b" * 70_000).status_code == 204
    assert file_tus.stored_bytes(url) == b"a" * 30_000 + b"b" * 70_000


# ----- the spec server: checksum, concatenation, knobs ------------------------------------


def test_spec_server_advertises_every_extension(spec_tus: TusSpecServer) -> None:
    options = requests.options(spec_tus.url, timeout=TIMEOUT)
    assert set(options.headers["Tus-Extension"].split(",")) == REAL_EXTENSIONS | {
        "checksum",
        "concatenation",
    }
    algorithms = set(options.headers["Tus-Checksum-Algorithm"].split(","))
    assert algorithms == {"sha1", "md5", "sha256", "crc32"}


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        ("sha1", lambda b: hashlib.sha1(b).digest()),
        ("md5", lambda b: hashlib.md5(b).digest()),
        ("sha256", lambda b: hashlib.sha256(b).digest()),
        ("crc32", lambda b: zlib.crc32(b).to_bytes(4, "big")),
    ],
)
def test_checksum_match_and_mismatch(
    spec_tus: TusSpecServer, algorithm: str, digest: Any
) -> None:
    url = create(spec_tus.url, 22)
    good = base64.b64encode(digest(b"hello world")).decode()
    ok = patch(url, 0, b"hello world", **{"Upload-Checksum": f"{algorithm} {good}"})
    assert ok.status_code == 204
    bad = patch(url, 11, b"HELLO WORLD", **{"Upload-Checksum": f"{algorithm} {good}"})
    assert bad.status_code == 460
    assert head(url).headers["Upload-Offset"] == "11"
    assert spec_tus.stored_bytes(url) == b"hello world"


def test_sha1_example_from_the_spec_and_unknown_algorithm(spec_tus: TusSpecServer) -> None:
    url = create(spec_tus.url, 11)
    unknown = patch(url, 0, b"hello world", **{"Upload-Checksum": "whirlpool AAAA"})
    assert unknown.status_code == 400
    spec_example = {"Upload-Checksum": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="}
    assert patch(url, 0, b"hello world", **spec_example).status_code == 204


def test_concatenation_of_partial_uploads(spec_tus: TusSpecServer) -> None:
    partial = {"Upload-Concat": "partial"}
    first, second = create(spec_tus.url, 5, **partial), create(spec_tus.url, 6, **partial)
    assert patch(first, 0, b"hello").status_code == 204
    assert head(first).headers["Upload-Concat"] == "partial"

    early = requests.post(spec_tus.url, headers={**TUS, "Upload-Concat": f"final;{first} {second}"})
    assert early.status_code == 400  # concatenation-unfinished is not advertised

    assert patch(second, 0, b" world").status_code == 204
    relative = urlsplit(second).path  # the spec allows relative partial URLs
    concat = f"final;{first} {relative}"
    final = requests.post(
        spec_tus.url, headers={**TUS, "Upload-Concat": concat, "Upload-Metadata": "k dg=="}
    )
    assert final.status_code == 201
    url = final.headers["Location"]
    described = head(url)
    assert described.headers["Upload-Concat"] == concat
    assert described.headers["Upload-Length"] == "11"
    assert described.headers["Upload-Offset"] == "11"
    assert spec_tus.stored_bytes(url) == b"hello world"
    assert patch(url, 11, b"!").status_code == 403


def test_spec_server_fault_knobs(spec_tus: TusSpecServer) -> None:
    url = create(spec_tus.url, 10)
    spec_tus.fail_patch(nth=2, status=500, keep_bytes=2)
    assert patch(url, 0, b"abc").status_code == 204  # 1st PATCH from now passes
    assert patch(url, 3, b"defg").status_code == 500  # 2nd fails, after keeping 2 bytes
    spec_tus.lock_once()
    assert patch(url, 5, b"fg").status_code == 423
    spec_tus.fail_head_once(502)
    assert head(url).status_code == 502
    assert head(url).headers["Upload-Offset"] == "5"  # a failed PATCH may still write
    assert spec_tus.stored_bytes(url) == b"abcde"
    assert (spec_tus.counts["PATCH"], spec_tus.counts["HEAD"]) == (3, 2)

    spec_tus.expire_upload(url)
    assert head(url).status_code == 410
    other = create(spec_tus.url, 1)
    spec_tus.delete_upload(other)
    assert head(other).status_code == 404


def test_spec_server_keeps_bytes_of_an_interrupted_patch(spec_tus: TusSpecServer) -> None:
    url = create(spec_tus.url, 1000)
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        request_head = (
            f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: {OFFSET_TYPE}\r\nContent-Length: 1000\r\n\r\n"
        )
        sock.sendall(request_head.encode() + b"x" * 400)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while spec_tus.offset(url) != 400 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert head(url).headers["Upload-Offset"] == "400"
