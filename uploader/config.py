"""One validated, immutable options object shared by the CLI and the library."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from chunker import GiB, MiB, parse_size
from chunker.plan import KiB
from uploader.errors import UsageError

# Chosen from bench/ measurements against SeaweedFS on loopback (see README).
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 128

# Procore's documented hosts and where its token is read from (never an option value).
PROCORE_PRODUCTION_URL = "https://api.procore.com"
PROCORE_SANDBOX_URL = "https://sandbox.procore.com"
PROCORE_TOKEN_ENV = "PROCORE_ACCESS_TOKEN"

FallbackMode = Literal["auto", "never", "only"]
# type/subtype[; parameters], printable ASCII (it goes into a header): RFC 9110 media-type, loosely.
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token: what a header name may hold
# AWS names regions like us-east-1; S3-compatible stores use their own words (auto, fr-par,
# garage), never a space: one would only come back as a SignatureDoesNotMatch blaming the keys.
REGION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[\x20-\x7e]*)?")
# S3 part checksum: crc32 costs a third of md5's CPU (bench/PROFILE.md: 0.61 vs 1.84 CPU-s/GiB);
# md5 (Content-MD5) is for S3-compatible stores that do not know the x-amz-checksum headers.
ChecksumMode = Literal["crc32", "md5"]
CHECKSUMS: tuple[ChecksumMode, ...] = ("crc32", "md5")
ProgressCallback = Callable[[int, int], None]  # (bytes committed, bytes total)


def _size(value: int | str | None, name: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(f"--{name}: {exc}") from None


def _check_ca_bundle(path: str) -> None:
    if not os.path.isfile(path):
        raise UsageError(f"--ca-bundle {path}: no such file")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise UsageError(f"--ca-bundle {path}: not a PEM file of CA certificates ({exc})") from None
    except OSError as exc:
        raise UsageError(f"--ca-bundle {path}: cannot read ({exc.strerror})") from None


TUS_SCHEMES = ("tus", "tus+http", "tus+https")
HTTP_SCHEMES = ("http", "https")  # plain single-shot PUT/POST (targets/http.py)


@dataclass(frozen=True)
class UploadOptions:
    source: str
    destination: str
    protocol: str | None = None  # s3 | tus | procore | http; None: from the URL scheme
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    part_size: int | str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    state_dir: str | Path | None = None
    ca_bundle: str | None = None
    restart: bool = False
    fallback: FallbackMode = "auto"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry auth
    metadata: Mapping[str, str] = field(default_factory=dict)  # tus Upload-Metadata; S3 x-amz-meta-*
    content_type: str | None = None  # None: guessed from the file name, as aws-cli does
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0
    retries: int = 5
    force_close: bool = False
    checksum: ChecksumMode = "crc32"  # S3 only; a resumed upload keeps the one it was created with
    progress: ProgressCallback | None = None
    # Fallback timing; injectable so tests run in seconds.
    sync_attempts: int = 3
    sync_delay: float = 5.0
    sync_deadline: float | None = None
    # Procore: "v2.1" | "v1.1" (None: v2.1 where the destination names a project), the API
    # host (None: production), and where to read the access token (None: PROCORE_ACCESS_TOKEN).
    # The token itself is never an option: options end up in logs and reprs.
    procore_api: str | None = None
    procore_base_url: str | None = None
    token_file: str | None = None
    method: str | None = None  # http only: PUT (None) or POST

    @property
    def target(self) -> str:
        """s3, tus, tus+http(s), procore, ...: --protocol, else the destination's scheme."""
        return self.protocol or self.destination.split("://", 1)[0].lower()

    def __post_init__(self) -> None:
        object.__setattr__(self, "part_size", _size(self.part_size, "part-size"))
        ps = self.part_size
        # S3 (and Procore's S3 storage) refuse parts under 5 MiB; tus has no minimum, but a
        # PATCH smaller than one 256 KiB read piece buys nothing.
        low, low_text = (256 * KiB, "256KiB") if self.target in TUS_SCHEMES else (5 * MiB, "5MiB")
        if ps is not None and isinstance(ps, int) and not (low <= ps <= 5 * GiB):
            raise UsageError(f"--part-size must be between {low_text} and 5GiB, got {ps} bytes")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {self.concurrency}")
        if self.fallback not in ("auto", "never", "only"):
            raise UsageError(f"--fallback must be auto, never or only, got {self.fallback!r}")
        if self.checksum not in CHECKSUMS:
            raise UsageError(f"--checksum must be crc32 or md5, got {self.checksum!r}")
        if self.content_type is not None and not _MEDIA_TYPE.fullmatch(self.content_type):
            raise UsageError(f"--content-type {self.content_type!r} is not a media type; use TYPE/SUBTYPE, "
                             "e.g. video/mp4 or 'text/plain; charset=utf-8'")
        if self.retries < 1:
            raise UsageError(f"--retries must be at least 1, got {self.retries}")
        for flag, seconds in (("--connect-timeout", self.connect_timeout), ("--stall-timeout", self.stall_timeout)):
            if not 0 < seconds < float("inf"):  # also refuses nan, which compares false
                raise UsageError(f"{flag} must be a positive number of seconds, got {seconds}")
        if self.sync_delay < 0:
            raise UsageError(f"--sync-delay must be 0 or more seconds, got {self.sync_delay}")
        if self.sync_deadline is not None and not 0 < self.sync_deadline < float("inf"):
            raise UsageError(f"--sync-deadline must be a positive number of seconds, got {self.sync_deadline}")
        if self.region and not REGION_NAME.fullmatch(self.region):  # "" counts as not given
            raise UsageError(f"--region {self.region!r} is not a region name; use one like us-east-1")
        self._check_headers()
        if self.procore_api not in (None, "v2.1", "v1.1"):
            raise UsageError(f"--procore-api must be v2.1 or v1.1, got {self.procore_api!r}")
        self._check_applies()
        if self.ca_bundle is not None:
            _check_ca_bundle(self.ca_bundle)

    def _check_headers(self) -> None:
        """A header that would be refused by aiohttp mid-upload (or by the server) fails here."""
        seen: set[str] = set()
        for name, value in self.headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise UsageError(f"--header {name!r}: not a header name (letters, digits and !#$%&'*+.^_`|~- "
                                 "only, no spaces)")
            if any((ch < " " and ch != "\t") or ch == "\x7f" for ch in value):
                raise UsageError(f"--header {name}: the value holds a control character (a line break?); "
                                 "give it on one line")
            if name.lower() in seen:
                raise UsageError(f"--header {name} is given twice; give it once")
            seen.add(name.lower())

    def _check_applies(self) -> None:
        """Refuse an option the chosen target would silently ignore (an empty value, like the
        defaults, counts as not given), and tus or http credentials given twice."""
        target = self.target
        kind = "tus" if target in TUS_SCHEMES else "http" if target in HTTP_SCHEMES else target
        if kind not in ("s3", "tus", "procore", "http"):
            return  # build_protocol names the unknown destination
        sandbox = self.procore_base_url == PROCORE_SANDBOX_URL
        given: tuple[tuple[str, object, str], ...] = (
            ("--endpoint-url", self.endpoint_url, "s3"),  # aws.py: endpoint, region, profile
            ("--region", self.region, "s3"),
            ("--profile", self.profile, "s3"),
            (f"--checksum {self.checksum}", self.checksum != "crc32", "s3"),  # tus: the server picks
            ("--header", self.headers, "tus and http"),  # targets/tus.py: on every request; http: on its one
            ("--method", self.method, "http"),  # targets/http.py: PUT or POST
            ("--part-size", self.part_size, "s3 and tus and procore"),  # http: one request, no parts
            ("--metadata", self.metadata, "s3 and tus"),  # S3: x-amz-meta-*; tus: Upload-Metadata
            ("--procore-api", self.procore_api, "procore"),  # targets/procore.py procore_protocol
            ("--sandbox" if sandbox else "--procore-base-url", self.procore_base_url, "procore"),
            ("--token-file", self.token_file, "procore"),
        )
        for flag, value, owner in given:
            if value and kind not in owner.split(" and "):
                raise UsageError(f"{flag} applies to {owner} uploads only (this destination is {target}); drop it")
        if kind in ("tus", "http") and any(name.strip().lower() == "authorization" for name in self.headers):
            try:
                parts = urlsplit(self.destination)
            except ValueError:
                return  # parse_tus_url reports the bad URL
            if parts.username or parts.password:  # what aiohttp and requests turn into Basic auth
                raise UsageError("--header Authorization and user:password@ in the URL both give credentials; "
                                 "give them one way")

    @property
    def media_type(self) -> str | None:
        """--content-type, else what the file's name says (mimetypes, as aws-cli guesses it);
        None when the name says nothing (each target has its own default)."""
        if self.content_type:
            return self.content_type
        import mimetypes  # ~3 ms with its table: only when a target asks

        return mimetypes.guess_type(self.file_name)[0]

    @property
    def attributes(self) -> str:
        """A digest of the content type and metadata the object is created with: kept in the
        manifest (not the values: they are the user's data) to tell when a resume ignores a change."""
        import json

        import xxhash

        fields = json.dumps([self.media_type, sorted(self.metadata.items())])
        return xxhash.xxh3_64_hexdigest(fields.encode())

    @property
    def file_name(self) -> str:
        """The name the user gave the file: a symlink shows and uploads under its own name
        (as `aws s3 cp` does), though the bytes are read from its target."""
        return os.path.basename(self.source)

    @property
    def part_size_bytes(self) -> int:
        return self.part_size if isinstance(self.part_size, int) else DEFAULT_PART_SIZE

    @property
    def state_path(self) -> Path:
        from resume import default_state_dir

        return Path(self.state_dir) if self.state_dir else default_state_dir()

    @classmethod
    def build(cls, source: str, destination: str, **kwargs: Any) -> UploadOptions:
        """Keyword-argument form used by the library entry points."""
        try:
            return cls(source=source, destination=destination, **kwargs)
        except TypeError as exc:
            raise UsageError(str(exc)) from None
