"""The S3 protocol module against recorded S3 responses (shapes from the S3 API reference)."""

from __future__ import annotations

import base64
import hashlib
import logging
from types import SimpleNamespace

import pytest

from chunker import Part, digest_bytes
from uploader.config import ChecksumMode
from uploader.errors import ChecksumUnsupported, PermanentError, SessionLost, TransientError, UsageError
from uploader.targets.s3 import S3Location, S3Protocol
from uploader.wire import FileSlice, HttpResponse

CREDS = SimpleNamespace(access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                        token=None)
NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
# The CRC-32 check value (the CRC catalogue's "check" for CRC-32/ISO-HDLC, zlib's CRC):
# CRC-32(b"123456789") = 0xCBF43926, so S3's base64 of its 4 big-endian bytes is "y/Q5Jg==".
CHECK_INPUT, CHECK_CRC32_B64 = b"123456789", "y/Q5Jg=="
CHECK_MD5_HEX = "25f9e794323b453885f5181f1b624d0b"  # md5("123456789"), from coreutils md5sum
# Recorded refusals of x-amz-checksum headers by stores that do not support them:
# Cloudflare R2 (cortexproject/cortex#5829, cloudflare-docs#4508) and Backblaze B2
# (stonith404/pingvin-share#798, iterate-ch/cyberduck#16107).
R2_REFUSAL = HttpResponse(501, {}, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code>"
                          b"<Message>Header 'x-amz-checksum-algorithm' with value 'CRC32C' not implemented"
                          b"</Message></Error>")
B2_REFUSAL = HttpResponse(400, {}, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n    <Code>InvalidArgument"
                          b"</Code>\n    <Message>Unsupported header 'x-amz-checksum-crc32' received for this API "
                          b"call.</Message>\n</Error>")


def proto(endpoint: str | None = "http://127.0.0.1:9000", checksum: ChecksumMode = "crc32") -> S3Protocol:
    return S3Protocol(S3Location.parse("s3://bkt/dir/a b+c.bin"), endpoint_url=endpoint,
                      region="us-east-1", credentials=CREDS, source="/tmp/src", checksum=checksum)


def signed_headers(authorization: str) -> list[str]:
    """SigV4's SignedHeaders list from an Authorization header."""
    return authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")


def test_location_parsing() -> None:
    assert S3Location.parse("s3://bkt/a/b") == S3Location("bkt", "a/b")
    for bad in ("s3://bkt", "s3://bkt/", "s3:///key", "s3://B_ad/key"):
        with pytest.raises(UsageError):
            S3Location.parse(bad)


def test_prefix_key_takes_the_file_name_as_aws_cli_does() -> None:
    """`aws s3 cp FILE s3://BUCKET/PREFIX/` stores PREFIX/<base name of FILE> (aws-cli's
    s3 cp documentation), and so does s3://BUCKET alone (aws-cli, s5cmd: BUCKET/<base name>);
    only without a file name to append is a key required."""
    assert S3Location.parse("s3://bkt/dir/", "/data/in/big.bin") == S3Location("bkt", "dir/big.bin")
    assert S3Location.parse("s3://bkt/a/b/", "rel/x y.iso").key == "a/b/x y.iso"
    assert S3Location.parse("s3://bkt/", "big.bin").key == "big.bin"
    assert S3Location.parse("s3://bkt/dir/name", "/data/big.bin").key == "dir/name"
    assert S3Location.parse("s3://bkt", "/data/big.bin") == S3Location("bkt", "big.bin")
    with pytest.raises(UsageError, match="no object key"):
        S3Location.parse("s3://bkt")


def test_urls_path_style_for_endpoints_and_virtual_host_for_aws() -> None:
    assert proto().object_url == "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc.bin"
    assert proto(None).object_url == "https://bkt.s3.us-east-1.amazonaws.com/dir/a%20b%2Bc.bin"


@pytest.mark.parametrize(
    ("checksum", "header", "value"),
    [("crc32", "x-amz-checksum-crc32", CHECK_CRC32_B64),
     ("md5", "Content-MD5", base64.b64encode(bytes.fromhex(CHECK_MD5_HEX)).decode())],
)
def test_upload_part_is_signed_with_its_checksum_and_unsigned_payload(checksum: ChecksumMode, header: str,
                                                                     value: str) -> None:
    p = proto(checksum=checksum)
    assert p.part_digests == (checksum,)  # the other digest is not computed per part
    req = p.upload_part({"upload_id": "u/1", "checksum": checksum}, Part(3, 5000, 9),
                        digest_bytes(CHECK_INPUT, p.part_digests))
    assert req.method == "PUT"
    assert req.url.endswith("?partNumber=3&uploadId=u%2F1")
    assert req.headers[header] == value
    other = {"x-amz-checksum-crc32", "Content-MD5"} - {header}
    assert not other & set(req.headers)
    assert req.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert req.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert header.lower() in signed_headers(req.headers["Authorization"])
    assert req.body == FileSlice("/tmp/src", 5000, 9)


def test_a_session_from_before_the_option_goes_on_with_content_md5() -> None:
    """Manifests written before the option have no "checksum": their uploads were created
    without an algorithm and their parts carry Content-MD5."""
    req = proto(checksum="md5").upload_part({"upload_id": "u"}, Part(1, 0, 9), digest_bytes(CHECK_INPUT, ("md5",)))
    assert req.headers["Content-MD5"] == base64.b64encode(bytes.fromhex(CHECK_MD5_HEX)).decode()


@pytest.mark.parametrize("checksum", ["crc32", "md5"])
def test_create_asks_for_crc32_only_in_crc32_mode(checksum: ChecksumMode) -> None:
    p = proto(checksum=checksum)
    req = p.create(100, 10)
    assert req.method == "POST" and req.url.endswith("?uploads=")
    if checksum == "crc32":
        assert req.headers["x-amz-checksum-algorithm"] == "CRC32"
        assert "x-amz-checksum-algorithm" in signed_headers(req.headers["Authorization"])
    else:
        assert "x-amz-checksum-algorithm" not in {k.lower() for k in req.headers}
    body = f"<InitiateMultipartUploadResult {NS}><UploadId>abc</UploadId></InitiateMultipartUploadResult>"
    assert p.parse_create(HttpResponse(200, {}, body.encode())) == {"upload_id": "abc", "checksum": checksum}


def test_complete_signs_real_body_hash_and_lists_parts_in_order() -> None:
    """md5 mode: today's body, word for word (the CompleteMultipartUpload request syntax)."""
    req = proto().complete({"upload_id": "u", "checksum": "md5"}, [(1, "e1"), (2, "e2")])
    assert isinstance(req.body, bytes)
    assert req.headers["X-Amz-Content-SHA256"] == hashlib.sha256(req.body).hexdigest()
    assert req.body == (f'<CompleteMultipartUpload {NS}><Part><PartNumber>1</PartNumber><ETag>"e1"</ETag></Part>'
                        '<Part><PartNumber>2</PartNumber><ETag>"e2"</ETag></Part></CompleteMultipartUpload>').encode()


def test_complete_of_a_crc32_upload_lists_every_part_checksum() -> None:
    session = {"upload_id": "u", "checksum": "crc32"}
    req = proto(checksum="md5").complete_with_checksums(session, [(1, "e1", CHECK_CRC32_B64), (2, "e2", "AAAAAA==")])
    assert req.body == (f'<CompleteMultipartUpload {NS}>'
                        f'<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><ChecksumCRC32>{CHECK_CRC32_B64}'
                        '</ChecksumCRC32></Part><Part><PartNumber>2</PartNumber><ETag>"e2"</ETag>'
                        '<ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part></CompleteMultipartUpload>').encode()
    with pytest.raises(ValueError, match="CRC-32"):  # S3 would refuse it (SeaweedFS: InvalidRequest)
        proto().complete_with_checksums(session, [(1, "e1", CHECK_CRC32_B64), (2, "e2", None)])
    md5_session = {"upload_id": "u", "checksum": "md5"}
    plain = proto().complete_with_checksums(md5_session, [(1, "e1", CHECK_CRC32_B64)])
    assert isinstance(plain.body, bytes) and b"Checksum" not in plain.body


@pytest.mark.parametrize(
    ("checksum", "header", "value"),
    [("crc32", "x-amz-checksum-crc32", CHECK_CRC32_B64),
     ("md5", "Content-MD5", base64.b64encode(bytes.fromhex(CHECK_MD5_HEX)).decode())],
)
def test_single_shot_put_object_carries_the_whole_file_checksum(checksum: ChecksumMode, header: str,
                                                                 value: str) -> None:
    p = proto(checksum=checksum)
    req = p.single_shot(9, digest_bytes(CHECK_INPUT, p.part_digests))
    assert (req.method, req.headers[header], req.headers["Content-Length"]) == ("PUT", value, "9")
    assert header.lower() in signed_headers(req.headers["Authorization"])


@pytest.mark.parametrize(("refusal", "label"), [(R2_REFUSAL, "NotImplemented"), (B2_REFUSAL, "InvalidArgument")])
def test_create_refused_by_a_store_without_checksums_switches_to_md5(refusal: HttpResponse, label: str) -> None:
    p = proto()
    with pytest.raises(ChecksumUnsupported) as refused:
        p.parse_create(refusal)
    assert str(refused.value).startswith("127.0.0.1:9000 does not support x-amz-checksum-crc32 (")
    assert str(refused.value).endswith("; using Content-MD5 (--checksum md5)")
    assert label in str(refused.value)
    assert p.part_digests == ("md5",)
    assert "x-amz-checksum-algorithm" not in {k.lower() for k in p.create(100, 10).headers}
    body = f"<InitiateMultipartUploadResult {NS}><UploadId>abc</UploadId></InitiateMultipartUploadResult>"
    assert p.parse_create(HttpResponse(200, {}, body.encode())) == {"upload_id": "abc", "checksum": "md5"}
    with pytest.raises(PermanentError) as again:  # in md5 mode a refusal is final: never a loop
        p.parse_create(refusal)
    assert not isinstance(again.value, ChecksumUnsupported)


def test_put_object_refused_for_its_checksum_switches_to_md5() -> None:
    p = proto()
    with pytest.raises(ChecksumUnsupported):
        p.parse_single_shot(B2_REFUSAL)
    req = p.single_shot(9, digest_bytes(CHECK_INPUT, p.part_digests))
    assert "Content-MD5" in req.headers and "x-amz-checksum-crc32" not in req.headers


@pytest.mark.parametrize("reply", [
    HttpResponse(400, {}, b"<Error><Code>InvalidRequest</Code><Message>Invalid Request</Message></Error>"),
    HttpResponse(403, {}, b"<Error><Code>AccessDenied</Code><Message>checksum? no: denied</Message></Error>"),
    HttpResponse(400, {}, b"<Error><Code>BadDigest</Code><Message>The CRC32 checksum did not match</Message></Error>"),
])
def test_other_create_errors_are_not_taken_for_a_checksum_refusal(reply: HttpResponse) -> None:
    p = proto()
    with pytest.raises((PermanentError, TransientError)) as err:
        p.parse_create(reply)
    assert not isinstance(err.value, ChecksumUnsupported)
    assert p.part_digests == ("crc32",)


def test_resumed_upload_keeps_the_checksum_it_was_created_with(caplog: pytest.LogCaptureFixture) -> None:
    p = proto(checksum="md5")
    with caplog.at_level(logging.DEBUG, logger="uploader.targets.s3"):
        p.use_session({"upload_id": "u", "checksum": "crc32"})
    assert p.part_digests == ("crc32",)
    assert [r.getMessage() for r in caplog.records] == [
        "The interrupted upload was created with checksum crc32 and continues with it "
        "(--checksum md5 applies to new uploads)"]
    p.use_session({"upload_id": "u"})  # a manifest from before the option
    assert p.part_digests == ("md5",)


def test_parse_create_and_list_parts_pagination() -> None:
    p = proto()
    listing = (
        f"<ListPartsResult {NS}><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>"
        '<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><Size>10</Size></Part>'
        '<Part><ChecksumCRC32>y/Q5Jg==</ChecksumCRC32><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>10</Size>'
        "</Part></ListPartsResult>"
    )
    parsed = p.parse_list_parts(HttpResponse(200, {}, listing.encode()))
    assert [(x.number, x.size, x.etag, x.crc32) for x in parsed.parts] == [(1, 10, "e1", None),
                                                                           (2, 10, "e2", "y/Q5Jg==")]
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
