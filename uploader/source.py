"""Checks on the local file before anything is sent, with messages a user can act on."""

from __future__ import annotations

import os
import stat

from resume import FileIdentity
from uploader.errors import UsageError


def open_source(path: str) -> FileIdentity:
    """The file's identity, or a UsageError saying what is wrong with it."""
    if path == "-" and not os.path.lexists(path):
        raise UsageError("reading from standard input is not supported: a resumable upload must be able to "
                         "read the file again; save the data to a file and upload that")
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


def secs(seconds: float) -> str:
    """Whole seconds as the original system printed them ("502s"), but a sub-10 s value the
    user chose (--sync-deadline 0.5, --stall-timeout 2.5) is not rounded to something else."""
    return f"{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.3g}s"


def size_arg(nbytes: int) -> str:
    """A size as --part-size takes it back (16MiB, 5000000): "MB" in our logs is binary, as the
    original system printed it, but "5MB" typed in is decimal."""
    return f"{nbytes // (1024 * 1024)}MiB" if nbytes % (1024 * 1024) == 0 else str(nbytes)


def mb(nbytes: float) -> str:
    """Sizes as the original system printed them: binary megabytes, 2 decimals."""
    return f"{nbytes / (1024 * 1024):.2f} MB"
