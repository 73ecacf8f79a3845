"""Merge what the manifest remembers with what the server reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from resume.manifest import PartRecord


@dataclass(frozen=True)
class ServerPart:
    number: int
    size: int
    etag: str
    crc32: str | None = None  # ChecksumCRC32, where the server lists it (AWS does; SeaweedFS not)


def _norm(etag: str) -> str:
    return etag.strip().strip('"').lower()


def reconcile(
    parts: list[PartRecord],
    server: Mapping[int, Sequence[ServerPart]],
    local_etag: Callable[[PartRecord], str | None],
) -> list[PartRecord]:
    """Mark parts done exactly when the server holds them intact; return the ones to send.

    The server is the truth: a part the manifest thinks done but the server lacks
    is sent again. A part the server has but the manifest never recorded (the
    process died between the server's reply and the manifest write) is kept only
    if its ETag equals the digest of our local bytes (`local_etag`), so a stale or
    foreign part is never trusted. A server may list a part number more than once
    (SeaweedFS keeps every re-upload); any matching copy will do. A kept part takes the
    server's CRC-32 when the manifest has none (a Complete may need to repeat it).
    """
    todo: list[PartRecord] = []
    for part in parts:
        held = {_norm(p.etag): p for p in server.get(part.number, ()) if p.size == part.length}
        match: ServerPart | None = None
        if part.etag is not None and _norm(part.etag) in held:
            match = held[_norm(part.etag)]
        elif held:
            expected = local_etag(part)
            match = held.get(_norm(expected)) if expected else None
        part.etag = match.etag if match else None
        if match is None:
            todo.append(part)
        elif part.crc32 is None:
            part.crc32 = match.crc32
    return todo
