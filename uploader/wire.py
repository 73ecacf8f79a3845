"""Transport-neutral HTTP descriptions: targets build these, transports execute them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileSlice:
    """A request body read afresh from disk on every attempt (never a half-read stream)."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | FileSlice | None = None
    # Names the request in logs and errors, e.g. "UploadPart 7".
    label: str = ""

    @property
    def body_length(self) -> int:
        if self.body is None:
            return 0
        if isinstance(self.body, FileSlice):
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
