"""Merge what the manifest remembers with what the server reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from resume.manifest import PartRecord


@dataclass(frozen=True)
class ServerPart:
    number: int
    size: int
    etag: str


def _norm(etag: str) -> str:
    return etag.strip().strip('"').lower()


def reconcile(
    parts: list[PartRecord],
    server: Mapping[int, ServerPart],
    local_etag: Callable[[PartRecord], str | None],
) -> list[PartRecord]:
    """Mark parts done exactly when the server holds them intact; return the ones to send.

    The server is the truth: a part the manifest thinks done but the server lacks
    is sent again. A part the server has but the manifest never recorded (the
    process died between the server's reply and the manifest write) is kept only
    if its ETag equals the digest of our local bytes (`local_etag`), so a stale or
    foreign part is never trusted.
    """
    todo: list[PartRecord] = []
    for part in parts:
        held = server.get(part.number)
        if held is None or held.size != part.length:
            part.etag = None
        elif part.etag is not None and _norm(part.etag) == _norm(held.etag):
            part.etag = held.etag
        else:
            expected = local_etag(part)
            part.etag = held.etag if expected and _norm(expected) == _norm(held.etag) else None
        if part.etag is None:
            todo.append(part)
    return todo
