"""Transport-neutral HTTP descriptions: targets build these, transports execute them."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileSlice:
    """A request body read afresh from disk on every attempt (never a half-read stream)."""

    path: str
    offset: int
    length: int


def _form_safe(text: str) -> str:
    """A form part name or filename inside quotes: no quote, backslash, CR/LF or non-ASCII
    (they would break the part header or be read differently by each server)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in text)


@dataclass(frozen=True)
class FormBody:
    """A multipart/form-data body (RFC 7578): text fields in order, then one file part
    streamed from disk, so its length is known up front and memory stays flat. S3 POST
    policy forms need exactly this shape: every field unchanged, the file last."""

    fields: Sequence[tuple[str, str]]
    file_field: str
    file: FileSlice
    filename: str
    file_type: str = "application/octet-stream"
    boundary: str = field(default_factory=lambda: "chunkhaul-" + secrets.token_hex(16))

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def head(self) -> bytes:
        """Every text field, then the file part's header (the file's bytes follow)."""
        out = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_form_safe(name)}"\r\n\r\n'
            f"{value}\r\n".encode()
            for name, value in self.fields
        ]
        out.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_form_safe(self.file_field)}"; '
            f'filename="{_form_safe(self.filename)}"\r\nContent-Type: {self.file_type}\r\n\r\n'.encode()
        )
        return b"".join(out)

    def tail(self) -> bytes:
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def length(self) -> int:
        return len(self.head()) + self.file.length + len(self.tail())


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | FileSlice | FormBody | None = None
    # Names the request in logs and errors, e.g. "UploadPart 7".
    label: str = ""
    # False: a 3xx comes back as the response (plain HTTP names it in an error) instead of the
    # client library re-sending the body, or dropping it for a GET, somewhere else.
    follow_redirects: bool = True

    @property
    def may_follow(self) -> bool:
        """Redirects are followed for GET and HEAD only: a PUT re-sent elsewhere would carry a
        body read once already (and a signature for another host), a POST would turn into a GET."""
        return self.follow_redirects and self.method in ("GET", "HEAD")

    @property
    def body_length(self) -> int:
        if self.body is None:
            return 0
        if isinstance(self.body, FileSlice):
            return self.body.length
        if isinstance(self.body, FormBody):
            return self.body.length
        return len(self.body)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def lower_headers(items: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in items.items()}
