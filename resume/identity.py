"""Which file we are uploading, and whether it is still the same file."""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from typing import Any


class SourceChanged(Exception):
    """The local file is not the one the manifest was written for."""


@dataclass(frozen=True)
class FileIdentity:
    path: str  # absolute, symlinks resolved: the file actually read
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        real = os.path.realpath(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        return cls(real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def differences(self, other: FileIdentity) -> list[str]:
        """Names of the fields that differ, for a message the user can act on."""
        mine, theirs = asdict(self), asdict(other)
        return [k for k in ("path", "size", "mtime_ns", "inode", "device") if mine[k] != theirs[k]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileIdentity:
        return cls(
            path=str(data["path"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            inode=int(data["inode"]),
            device=int(data["device"]),
        )
