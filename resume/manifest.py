"""The resume manifest: what we planned, what the server confirmed. No secrets, ever."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from resume.identity import FileIdentity

SCHEMA_VERSION = 1


class ManifestError(Exception):
    """A manifest that cannot be used (corrupt, unknown schema, another file)."""


@dataclass
class PartRecord:
    number: int
    offset: int
    length: int
    xxh3_128: str | None = None  # set when the part was hashed for sending
    etag: str | None = None  # set once the server confirmed the part
    # base64 CRC-32 of the part, kept for a Complete that must repeat it (S3 uploads created
    # with x-amz-checksum-algorithm: CRC32), even when another process sent the part.
    crc32: str | None = None

    @property
    def done(self) -> bool:
        return self.etag is not None


def _part_json(p: PartRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"n": p.number, "off": p.offset, "len": p.length, "xxh3": p.xxh3_128, "etag": p.etag}
    if p.crc32 is not None:  # absent, not null, where unused: 10,000-part manifests stay small
        out["crc32"] = p.crc32
    return out


@dataclass
class Manifest:
    file: FileIdentity
    destination: str  # credentials already redacted
    target: str
    part_size: int
    parts: list[PartRecord]
    # Target-specific session state (upload id, tus URL, ...). Never credentials.
    session: dict[str, Any] = field(default_factory=dict)
    # A digest of what the object is created with besides its bytes (content type, metadata):
    # a resume cannot change them, so a changed command is told so. "" in older manifests.
    attributes: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def bytes_done(self) -> int:
        return sum(p.length for p in self.parts if p.done)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "tool": "chunkhaul",
            "file": self.file.to_json(),
            "destination": self.destination,
            "target": self.target,
            "part_size": self.part_size,
            "session": self.session,
            "attributes": self.attributes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "parts": [_part_json(p) for p in self.parts],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("tool") != "chunkhaul":
            raise ManifestError("not a chunkhaul manifest")
        if data.get("schema") != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema {data.get('schema')!r} is not supported "
                f"(this chunkhaul writes schema {SCHEMA_VERSION})"
            )
        try:
            return cls(
                file=FileIdentity.from_json(data["file"]),
                destination=str(data["destination"]),
                target=str(data["target"]),
                part_size=int(data["part_size"]),
                session=dict(data.get("session") or {}),
                attributes=str(data.get("attributes", "")),
                created_at=float(data.get("created_at", 0)),
                updated_at=float(data.get("updated_at", 0)),
                parts=[
                    PartRecord(int(p["n"]), int(p["off"]), int(p["len"]), p.get("xxh3"), p.get("etag"),
                               p.get("crc32"))  # .get: manifests written before it existed load too
                    for p in data["parts"]
                ],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is missing or has a bad field ({exc})") from exc
