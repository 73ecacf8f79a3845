"""Where manifests live: atomic writes, private permissions, one process at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

from resume.manifest import Manifest, ManifestError


class LockHeld(Exception):
    """Another process is uploading the same file to the same destination."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "chunkhaul"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ManifestStore:
    """One manifest (and lock) per (source file, destination) in a 0700 directory."""

    def __init__(self, state_dir: Path, source_path: str, destination: str) -> None:
        self.dir = Path(state_dir)
        # The default directory is ours to keep 0700; a directory the user named is theirs.
        self._owned = self.dir == default_state_dir()
        self._save_lock = threading.Lock()
        key = hashlib.sha256(f"{os.path.realpath(source_path)}\n{destination}".encode()).hexdigest()
        self.path = self.dir / f"{key[:32]}.json"
        self.lock_path = self.dir / f"{key[:32]}.lock"
        self._lock_fd: int | None = None

    def ensure_dir(self) -> None:
        """Create the state dir 0700. An existing directory is the user's: left as it is
        (the manifests in it are 0600 whatever its mode)."""
        if self.dir.is_dir():
            mode = self.dir.stat().st_mode
            if mode & 0o022 and not (self._owned and os.access(self.dir, os.W_OK)):
                raise PermissionError(
                    errno.EPERM, f"{self.dir} is writable by other users (mode {stat.S_IMODE(mode):o}); "
                    "chmod 700 it or choose another --state-dir")
            if mode & 0o077 and self._owned:
                os.chmod(self.dir, 0o700)  # our own default directory: keep it private
            return
        # Every directory we create (XDG's ~/.local/state too) is 0700; mkdir's mode is
        # filtered by the umask and parents=True ignores it, so create and chmod one by one.
        missing = [d for d in (self.dir, *self.dir.parents) if not d.exists()]
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
                os.chmod(directory, 0o700)

    # -- lock ---------------------------------------------------------------

    def acquire(self) -> None:
        """Take the exclusive lock or raise LockHeld naming the holder."""
        self.ensure_dir()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._read_holder()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(holder) from None
            raise
        self._remove_stale_temps()  # left by a process killed mid-write; we hold the lock now
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "since": time.time(), "argv": sys.argv[:1]}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fchmod(fd, 0o600)
        self._lock_fd = fd

    def _remove_stale_temps(self) -> None:
        for stale in self.dir.glob(f"{self.path.stem}.tmp*"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def _read_holder(self) -> str:
        try:
            info = json.loads(self.lock_path.read_text() or "{}")
            since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
            return f"process {info.get('pid', '?')} (started {since})"
        except (OSError, ValueError):
            return "another process"

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    # -- manifest -----------------------------------------------------------

    def load(self) -> Manifest | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return Manifest.loads(raw)

    def save(self, manifest: Manifest) -> None:
        """Write atomically: a crash leaves either the old or the new manifest, never half."""
        with self._save_lock:  # a cancelled save may still be running in its worker thread
            self._save(manifest)

    def _save(self, manifest: Manifest) -> None:
        self.ensure_dir()
        manifest.updated_at = time.time()
        tmp = self.path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            data = manifest.dumps()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.dir)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def load_or_none(self) -> tuple[Manifest | None, str | None]:
        """The manifest, or None with the reason it could not be used."""
        try:
            return self.load(), None
        except ManifestError as exc:
            return None, str(exc)
