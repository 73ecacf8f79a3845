"""Checks on the local file before anything is sent, with messages a user can act on."""

from __future__ import annotations

import os
import stat

from resume import FileIdentity
from uploader.errors import UsageError


def open_source(path: str) -> FileIdentity:
    """The file's identity, or a UsageError saying what is wrong with it."""
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such file")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path} is a directory; chunkhaul uploads one file at a time")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file (a device, FIFO or socket has no fixed size to upload)")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror}); check its permissions") from None
    return FileIdentity.of(path)


def mb(nbytes: float) -> str:
    """Sizes as the original system printed them: binary megabytes, 2 decimals."""
    return f"{nbytes / (1024 * 1024):.2f} MB"
