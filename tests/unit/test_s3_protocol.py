"""The S3 protocol module against recorded S3 responses (shapes from the S3 API reference)."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace

import pytest

from chunker import Part, digest_bytes
from uploader.errors import PermanentError, SessionLost, TransientError, UsageError
from uploader.targets.s3 import S3Location, S3Protocol
from uploader.wire import FileSlice, HttpResponse

CREDS = SimpleNamespace(access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                        token=None)
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def proto(endpoint: str | None = "http://127.0.0.1:9000") -> S3Protocol:
    return S3Protocol(S3Location.parse("s3://bkt/dir/a b+c.bin"), endpoint_url=endpoint,
                      region="us-east-1", credentials=CREDS, source="/tmp/src")


def test_location_parsing() -> None:
    assert S3Location.parse("s3://bkt/a/b") == S3Location("bkt", "a/b")
    for bad in ("s3://bkt", "s3://bkt/", "s3:///key", "s3://B_ad/key"):
        with pytest.raises(UsageError):
            S3Location.parse(bad)


def test_urls_path_style_for_endpoints_and_virtual_host_for_aws() -> None:
    assert proto().object_url == "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc.bin"
    assert proto(None).object_url == "https://bkt.s3.us-east-1.amazonaws.com/dir/a%20b%2Bc.bin"


def test_upload_part_is_signed_with_md5_and_unsigned_payload() -> None:
    data = b"x" * 1000
    req = proto().upload_part({"upload_id": "u/1"}, Part(3, 5000, 1000), digest_bytes(data, ("md5",)))
    assert req.method == "PUT"
    assert req.url.endswith("?partNumber=3&uploadId=u%2F1")
    assert req.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert req.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert req.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "content-md5" in req.headers["Authorization"]
    assert req.body == FileSlice("/tmp/src", 5000, 1000)


def test_complete_signs_real_body_hash_and_lists_parts_in_order() -> None:
    req = proto().complete({"upload_id": "u"}, [(1, "e1"), (2, "e2")])
    assert isinstance(req.body, bytes)
    assert req.headers["X-Amz-Content-SHA256"] == hashlib.sha256(req.body).hexdigest()
    assert req.body.index(b"<PartNumber>1<") < req.body.index(b"<PartNumber>2<")
    assert b'<ETag>"e2"</ETag>' in req.body


def test_parse_create_and_list_parts_pagination() -> None:
    p = proto()
    body = f"<InitiateMultipartUploadResult {NS}><UploadId>abc</UploadId></InitiateMultipartUploadResult>"
    assert p.parse_create(HttpResponse(200, {}, body.encode())) == {"upload_id": "abc"}
    listing = (
        f"<ListPartsResult {NS}><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>"
        '<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><Size>10</Size></Part>'
        '<Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>10</Size></Part></ListPartsResult>'
    )
    parsed = p.parse_list_parts(HttpResponse(200, {}, listing.encode()))
    assert [(x.number, x.size, x.etag) for x in parsed.parts] == [(1, 10, "e1"), (2, 10, "e2")]
    assert parsed.next_marker == "2"
    assert "part-number-marker=2" in p.list_parts({"upload_id": "u"}, "2").url


def _err(status: int, code: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, headers or {}, f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode())


def test_error_classification() -> None:
    p = proto()
    part = Part(1, 0, 1)
    with pytest.raises(SessionLost):
        p.parse_upload_part(_err(404, "NoSuchUpload"), part)
    with pytest.raises(TransientError) as slow:
        p.parse_upload_part(_err(503, "SlowDown", {"retry-after": "7"}), part)
    assert slow.value.retry_after == 7
    with pytest.raises(TransientError):
        p.parse_upload_part(_err(400, "BadDigest"), part)
    with pytest.raises(PermanentError) as denied:
        p.parse_upload_part(_err(403, "SignatureDoesNotMatch"), part)
    assert denied.value.status == 403 and denied.value.code == "SignatureDoesNotMatch"
    assert "SignatureDoesNotMatch" in str(denied.value)


def test_complete_with_200_error_body_is_retried() -> None:
    with pytest.raises(TransientError, match="InternalError"):
        proto().parse_complete(_err(200, "InternalError"), {"upload_id": "u"})


def test_key_is_taken_word_for_word() -> None:
    """'#' and '?' are legal in S3 keys: never a fragment or a query (the AWS CLI agrees)."""
    assert S3Location.parse("s3://bkt/t/report#2.pdf").key == "t/report#2.pdf"
    assert S3Location.parse("s3://bkt/t/q?x=1#frag.bin").key == "t/q?x=1#frag.bin"
    loc = S3Location.parse("s3://bkt/a?b")
    proto_ = S3Protocol(loc, endpoint_url="http://h", region="us-east-1", credentials=CREDS, source="/f")
    assert proto_.object_url == "http://h/bkt/a%3Fb"
