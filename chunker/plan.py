"""Split a file size into parts that respect a target's limits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kb": 1000, "kib": KiB,
    "m": MiB, "mb": 1000**2, "mib": MiB,
    "g": GiB, "gb": 1000**3, "gib": GiB,
    "t": TiB, "tb": 1000**4, "tib": TiB,
}


def parse_size(text: str) -> int:
    """Parse '16MiB', '8M', '5 GiB', '1000' into bytes; raise ValueError otherwise."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 16MiB, 8M, 1048576)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit in {text!r} (use KiB, MiB, GiB)")
    return int(float(number) * _UNITS[unit])


@dataclass(frozen=True)
class PartLimits:
    """What a target accepts. Defaults are S3's documented multipart limits."""

    min_part: int = 5 * MiB
    max_part: int = 5 * GiB
    max_parts: int = 10_000
    max_object: int = 5 * TiB
    # Procore v2.1 rejects a part of exactly 5 MiB, so some targets need "more than".
    min_part_exclusive: bool = False


@dataclass(frozen=True)
class Part:
    number: int  # 1-based, as S3 numbers parts
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def choose_part_size(size: int, wanted: int, limits: PartLimits) -> int:
    """Grow the wanted part size until the plan fits in max_parts."""
    part_size = max(wanted, limits.min_part + (1 if limits.min_part_exclusive else 0))
    if size > 0 and math.ceil(size / part_size) > limits.max_parts:
        # Round up to a whole MiB so sizes stay readable in logs and manifests.
        needed = math.ceil(size / limits.max_parts)
        part_size = math.ceil(needed / MiB) * MiB
    if part_size > limits.max_part:
        raise ValueError(
            f"file of {size} bytes needs parts of {part_size} bytes, above the "
            f"target's limit of {limits.max_part}"
        )
    return part_size


def plan_parts(size: int, part_size: int, limits: PartLimits | None = None) -> list[Part]:
    """Cut [0, size) into consecutive parts; a 0-byte file has no parts."""
    limits = limits or PartLimits()
    if size < 0:
        raise ValueError("size must be >= 0")
    if size > limits.max_object:
        raise ValueError(f"file of {size} bytes exceeds the target's maximum of {limits.max_object}")
    part_size = choose_part_size(size, part_size, limits)
    return [
        Part(number=i + 1, offset=offset, length=min(part_size, size - offset))
        for i, offset in enumerate(range(0, size, part_size))
    ]
