"""S3 multipart (AWS and S3-compatible stores), SigV4-signed with botocore. No I/O."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from chunker import Part, PartDigest, PartLimits
from chunker.plan import GiB
from resume import ServerPart
from uploader.config import CHECKSUMS, HEADER_NAME, ChecksumMode
from uploader.errors import ChecksumUnsupported, PermanentError, SessionLost, TransientError, UsageError
from uploader.retry import RETRYABLE_STATUS, parse_retry_after
from uploader.targets.base import Completed, PartListing
from uploader.wire import FileSlice, HttpRequest, HttpResponse

log = logging.getLogger(__name__)
UNSIGNED = "UNSIGNED-PAYLOAD"
# S3 error codes that mean "the bytes or the clock went wrong in transit": send again.
TRANSIENT_CODES = {"BadDigest", "RequestTimeout", "IncompleteBody", "SlowDown", "InternalError"}
KEY_LIMIT = 1024  # S3: an object key is at most 1,024 bytes of UTF-8
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# How stores that do not know the x-amz-checksum headers refuse them (from their users'
# reports): Cloudflare R2 501 NotImplemented "Header 'x-amz-checksum-algorithm' with value
# 'CRC32C' not implemented"; Backblaze B2 400 InvalidArgument "Unsupported header
# 'x-amz-checksum-crc32' received for this API call."
_CHECKSUM_REFUSALS = frozenset({"InvalidRequest", "InvalidArgument", "NotImplemented"})


class Credentials(Protocol):
    access_key: str
    secret_key: str
    token: str | None


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str, source: str | None = None) -> S3Location:
        """A key ending in '/' names a folder: the source file's base name is appended, as
        `aws s3 cp FILE s3://BUCKET/DIR/` does (s3://BUCKET alone too). Without a source such a key
        is refused."""
        # Not urlsplit: everything after "s3://BUCKET/" is the key, word for word, as the
        # AWS CLI reads it ('#' and '?' are legal in keys, not a fragment or a query).
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "s3" or not sep:
            raise UsageError(f"not an s3:// URL: {url}")
        bucket, _, key = rest.partition("/")
        if "@" in bucket:  # never echo what looks like user:password
            raise UsageError("an s3:// URL carries no user:password; S3 takes credentials from "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile")
        if not bucket:
            raise UsageError(f"{url}: no bucket; use s3://BUCKET/KEY")
        if (not key or key.endswith("/")) and source:  # s3://BUCKET/ and s3://BUCKET too, as aws-cli
            key += os.path.basename(source)
        if not key or key.endswith("/"):
            raise UsageError(f"{url}: no object key; use s3://BUCKET/KEY or s3://BUCKET/PREFIX/ "
                             f"(e.g. s3://{bucket}/file.bin)")
        if not _BUCKET_RE.match(bucket):
            raise UsageError(f"{url}: {bucket!r} is not a valid bucket name")
        if len(key.encode()) > KEY_LIMIT:
            raise UsageError(f"the object key is {len(key.encode()):,} bytes; S3 keys are at most "
                             f"{KEY_LIMIT:,} bytes (UTF-8): choose a shorter one")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class _Signer(S3SigV4Auth):
    """SigV4 with the payload hash decided by us: UNSIGNED-PAYLOAD for file bodies (their
    x-amz-checksum-crc32 or Content-MD5 still protects them), the real sha256 for small XML bodies."""

    def payload(self, request: AWSRequest) -> str:
        preset = request.context.get("payload_hash")
        if isinstance(preset, str):
            return preset
        body = request.body or b""
        return sha256(body if isinstance(body, bytes) else str(body).encode()).hexdigest()


def _xml_text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == name:
            return el.text
    return None


def _xml_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == name]


def error_code_and_message(body: bytes) -> tuple[str, str]:
    """The <Code> and <Message> of an S3-style XML error body ("" where absent)."""
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        return "", ""
    if root is None:
        return "", ""
    return _xml_text(root, "Code") or "", _xml_text(root, "Message") or ""


def refuses_checksum(resp: HttpResponse) -> bool:
    """Did the server refuse the request because it does not support an x-amz-checksum header?"""
    if resp.status not in (400, 501):
        return False
    code, message = error_code_and_message(resp.body)
    return code in _CHECKSUM_REFUSALS and "checksum" in message.lower()


def _checksum_header(checksum: str, digest: PartDigest) -> dict[str, str]:
    if checksum == "crc32":
        return {"x-amz-checksum-crc32": digest.crc32_b64}
    return {"Content-MD5": digest.md5_b64}


def _complete_item(number: int, etag: str, crc32: str | None) -> str:
    crc = f"<ChecksumCRC32>{crc32}</ChecksumCRC32>" if crc32 is not None else ""
    return f"<Part><PartNumber>{number}</PartNumber><ETag>\"{etag}\"</ETag>{crc}</Part>"


METADATA_LIMIT = 2048  # S3: user metadata, keys and values in UTF-8 bytes, at most 2 KB


def object_headers(content_type: str | None, metadata: Mapping[str, str]) -> dict[str, str]:
    """Content-Type and x-amz-meta-* for the object, refused (exit 2, nothing sent) where S3
    would refuse or mangle them: they travel as HTTP headers, so ASCII only."""
    headers = {"Content-Type": content_type} if content_type else {}
    for key, value in metadata.items():
        if not HEADER_NAME.fullmatch(key) or not all(" " <= ch <= "~" for ch in value):
            raise UsageError(f"--metadata {key}={value}: S3 metadata must be ASCII (a header-name key, a "
                             "printable value); encode other text first, e.g. as base64")
        name = f"x-amz-meta-{key.lower()}"
        if name in headers:  # S3 keeps metadata names in lower case: one would replace the other
            raise UsageError(f"--metadata {key}: S3 stores metadata names in lower case, so it is given twice")
        headers[name] = value
    size = sum(len(k) + len(v) for k, v in metadata.items())
    if size > METADATA_LIMIT:
        raise UsageError(f"--metadata is {size} bytes; S3 allows {METADATA_LIMIT} bytes of user metadata")
    return headers


def s3_error(resp: HttpResponse, label: str) -> Exception:
    """Turn a non-2xx (or a 200 carrying <Error>) into our error classes."""
    code, message = error_code_and_message(resp.body)
    detail = f"{label}: HTTP {resp.status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if code == "NoSuchUpload":
        return SessionLost(detail)
    if resp.status in RETRYABLE_STATUS or code in TRANSIENT_CODES:
        return TransientError(detail, status=resp.status, retry_after=parse_retry_after(resp.header("retry-after")))
    if resp.status == 403:
        detail += " (check the access key, secret key and the bucket's permissions)"
    elif code == "NoSuchBucket":
        detail += " (check the bucket's name, and the endpoint if it lives on another store)"
    return PermanentError(detail, status=resp.status, code=code or None)


class S3Protocol:
    kind: str = "s3"
    limits: PartLimits = PartLimits()
    # An unencrypted part's ETag is the md5 of its bytes: what reconcile compares on resume.
    etag_digests: tuple[str, ...] = ("md5",)
    single_shot_max: int = 5 * GiB
    list_page_size: int = 1000  # S3's maximum; smaller only to exercise paging in tests

    def __init__(
        self,
        location: S3Location,
        *,
        endpoint_url: str | None,
        region: str,
        credentials: Any,
        source: str,
        checksum: ChecksumMode = "crc32",
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.location = location
        self.source = source
        self.object_headers = object_headers(content_type, metadata or {})  # Create and PutObject
        self.region = region
        self._credentials = credentials  # botocore Credentials: refreshable, never stored
        self.object_url = self._object_url(endpoint_url)
        self._use(checksum)

    def _use(self, checksum: str) -> None:
        if checksum not in CHECKSUMS:
            raise ValueError(f"unknown S3 checksum {checksum!r}")
        self.checksum = checksum
        # Only the digest the server verifies is computed per part: md5 costs 3x crc32's CPU.
        self.part_digests: tuple[str, ...] = (checksum,)

    def use_session(self, session: Mapping[str, Any]) -> None:
        """Continue an upload with the checksum it was created with: one created with CRC32
        must complete with CRC32 (manifests from before the option: Content-MD5)."""
        created = str(session.get("checksum", "md5"))
        if created != self.checksum:
            log.info("The interrupted upload was created with checksum %s and continues with it "
                      "(--checksum %s applies to new uploads)", created, self.checksum)
        self._use(created)

    def _refused(self, resp: HttpResponse, label: str) -> ChecksumUnsupported:
        """Switch to Content-MD5 after a store refused x-amz-checksum-*; the caller sends again."""
        code, message = error_code_and_message(resp.body)
        self._use("md5")
        host = urlsplit(self.object_url).netloc
        return ChecksumUnsupported(
            f"{host} does not support x-amz-checksum-crc32 ({label}: HTTP {resp.status} {code}: {message}); "
            "using Content-MD5 (--checksum md5)", status=resp.status, code=code or None)

    def _object_url(self, endpoint_url: str | None) -> str:
        key = quote(self.location.key, safe="/~")
        if endpoint_url:
            # S3-compatible stores: path-style, which every one of them speaks.
            return f"{endpoint_url.rstrip('/')}/{self.location.bucket}/{key}"
        if "." in self.location.bucket:
            return f"https://s3.{self.region}.amazonaws.com/{self.location.bucket}/{key}"
        return f"https://{self.location.bucket}.s3.{self.region}.amazonaws.com/{key}"

    def destination(self) -> str:
        return str(self.location)

    # -- signing --------------------------------------------------------------

    def _signed(
        self,
        method: str,
        query: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | FileSlice | None = None,
        label: str,
    ) -> HttpRequest:
        url = self.object_url + (f"?{query}" if query else "")
        req = AWSRequest(method=method, url=url, headers=dict(headers or {}),
                         data=body if isinstance(body, bytes) else b"")
        if isinstance(body, FileSlice):
            req.context["payload_hash"] = UNSIGNED
        creds = self._credentials.get_frozen_credentials() if hasattr(
            self._credentials, "get_frozen_credentials") else self._credentials
        _Signer(creds, "s3", self.region).add_auth(req)
        signed = {k: str(v) for k, v in req.headers.items()}
        return HttpRequest(method, url, signed, body, label)

    # -- multipart --------------------------------------------------------------

    def create(self, size: int, part_size: int) -> HttpRequest:
        # With an algorithm, S3 verifies each part's x-amz-checksum-crc32 and wants the part
        # checksums again in Complete; without one, parts carry Content-MD5.
        headers = {"x-amz-checksum-algorithm": "CRC32"} if self.checksum == "crc32" else {}
        return self._signed("POST", "uploads=", headers={**self.object_headers, **headers},
                            label="CreateMultipartUpload")

    def parse_create(self, resp: HttpResponse) -> dict[str, Any]:
        """The session to keep in the manifest. Raises ChecksumUnsupported (after switching
        to Content-MD5) when the store refused the algorithm: create again."""
        if self.checksum == "crc32" and refuses_checksum(resp):
            raise self._refused(resp, "CreateMultipartUpload")
        root = self._xml_ok(resp, "CreateMultipartUpload")
        upload_id = _xml_text(root, "UploadId")
        if not upload_id:
            raise TransientError("CreateMultipartUpload: reply has no UploadId")
        return {"upload_id": upload_id, "checksum": self.checksum}

    def list_parts(self, session: Mapping[str, Any], marker: str | None) -> HttpRequest:
        # Query keys in sorted order: SigV4's canonical query string wants them so.
        marker_q = f"part-number-marker={marker}&" if marker else ""
        query = f"max-parts={self.list_page_size}&{marker_q}uploadId={quote(session['upload_id'], safe='')}"
        return self._signed("GET", query, label="ListParts")

    def parse_list_parts(self, resp: HttpResponse) -> PartListing:
        root = self._xml_ok(resp, "ListParts")
        parts = [
            ServerPart(
                number=int(_xml_text(p, "PartNumber") or 0),
                size=int(_xml_text(p, "Size") or -1),
                etag=(_xml_text(p, "ETag") or "").strip('"'),
                crc32=_xml_text(p, "ChecksumCRC32"),
            )
            for p in _xml_all(root, "Part")
        ]
        truncated = (_xml_text(root, "IsTruncated") or "false").lower() == "true"
        marker = _xml_text(root, "NextPartNumberMarker") if truncated else None
        if truncated and not marker and parts:
            marker = str(max(p.number for p in parts))
        return PartListing(parts, marker or None)

    def upload_part(self, session: Mapping[str, Any], part: Part, digest: PartDigest) -> HttpRequest:
        query = f"partNumber={part.number}&uploadId={quote(session['upload_id'], safe='')}"
        return self._signed(
            "PUT", query,
            headers={**_checksum_header(str(session.get("checksum", "md5")), digest),
                     "Content-Length": str(part.length)},
            body=FileSlice(self.source, part.offset, part.length),
            label=f"UploadPart {part.number}",
        )

    def parse_upload_part(self, resp: HttpResponse, part: Part) -> str:
        if not resp.ok:
            raise s3_error(resp, f"UploadPart {part.number}")
        etag = resp.header("etag")
        if not etag:
            raise TransientError(f"UploadPart {part.number}: reply has no ETag")
        return etag.strip('"')

    def complete(self, session: Mapping[str, Any], etags: Sequence[tuple[int, str]]) -> HttpRequest:
        return self.complete_with_checksums(session, [(n, e, None) for n, e in etags])

    def complete_with_checksums(self, session: Mapping[str, Any],
                                parts: Sequence[tuple[int, str, str | None]]) -> HttpRequest:
        """parts: (number, ETag, base64 CRC-32). An upload created with CRC32 must list every
        part's ChecksumCRC32 (SeaweedFS answers InvalidRequest without them, BadDigest if wrong)."""
        with_crc = session.get("checksum") == "crc32"
        if with_crc and any(c is None for _, _, c in parts):
            raise ValueError("an upload created with CRC32 needs every part's CRC-32 to complete")
        items = "".join(_complete_item(n, e, c if with_crc else None) for n, e, c in parts)
        body = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{items}</CompleteMultipartUpload>'
        query = f"uploadId={quote(session['upload_id'], safe='')}"
        return self._signed("POST", query, headers={"Content-Type": "application/xml"},
                            body=body.encode(), label="CompleteMultipartUpload")

    def parse_complete(self, resp: HttpResponse, session: Mapping[str, Any]) -> Completed:
        # S3 may answer 200 and still fail: the error is then in the body.
        root = self._xml_ok(resp, "CompleteMultipartUpload")
        etag = (_xml_text(root, "ETag") or resp.header("etag") or "").strip('"') or None
        return Completed(etag, self.destination(), session.get("upload_id"))

    def abort(self, session: Mapping[str, Any]) -> HttpRequest:
        query = f"uploadId={quote(session['upload_id'], safe='')}"
        return self._signed("DELETE", query, label="AbortMultipartUpload")

    def single_shot(self, size: int, digest: PartDigest | None) -> HttpRequest:
        headers = {**self.object_headers, "Content-Length": str(size)}
        if digest is not None:
            headers.update(_checksum_header(self.checksum, digest))
        body: bytes | FileSlice = FileSlice(self.source, 0, size) if size else b""
        return self._signed("PUT", "", headers=headers, body=body, label="PutObject")

    def parse_single_shot(self, resp: HttpResponse) -> Completed:
        if self.checksum == "crc32" and refuses_checksum(resp):
            raise self._refused(resp, "PutObject")
        if not resp.ok:
            raise s3_error(resp, "PutObject")
        return Completed((resp.header("etag") or "").strip('"') or None, self.destination())

    def head(self) -> HttpRequest:
        return self._signed("HEAD", "", label="HeadObject")

    def completed_by_earlier_run(self, resp: HttpResponse, size: int, etags: Sequence[str]) -> Completed | None:
        """Did CompleteMultipartUpload succeed before the process died? The object's ETag
        for an unencrypted multipart upload is md5(concatenated part md5s)-N."""
        joined = b"".join(bytes.fromhex(e.strip('"')) for e in etags)
        expected = f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(etags)}"
        etag = (resp.header("etag") or "").strip('"')
        if resp.ok and etag == expected and resp.header("content-length") == str(size):
            return Completed(etag, self.destination())
        return None

    def local_etag(self, digest: PartDigest) -> str | None:
        # A non-encrypted S3 part's ETag is the hex md5 of its bytes.
        return digest.md5_hex if digest.md5 is not None else None

    def _xml_ok(self, resp: HttpResponse, label: str) -> ET.Element:
        if not resp.ok:
            raise s3_error(resp, label)
        try:
            root = ET.fromstring(resp.body)
        except ET.ParseError as exc:
            raise TransientError(f"{label}: unreadable reply ({exc})") from None
        if root.tag.rsplit("}", 1)[-1] == "Error":
            raise s3_error(HttpResponse(500 if resp.status == 200 else resp.status, resp.headers, resp.body), label)
        return root
