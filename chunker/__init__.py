"""Pure, network-free pieces: plan parts, read a part, hash a part."""

from chunker.digest import PartDigest, digest_bytes, digest_part, digest_range
from chunker.plan import GiB, MiB, Part, PartLimits, parse_size, plan_parts
from chunker.reader import read_part

__all__ = [
    "GiB",
    "MiB",
    "Part",
    "PartDigest",
    "PartLimits",
    "digest_bytes",
    "digest_part",
    "digest_range",
    "parse_size",
    "plan_parts",
    "read_part",
]
