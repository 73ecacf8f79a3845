"""Where manifests live: atomic writes, private permissions, one process at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
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


_LOCK_ATTEMPTS = 20
_BUSY_LOOKS, _BUSY_PAUSE = 3, 0.005  # a held lock is reported after 3 looks, 10 ms apart in all
_LOCK_NAME = re.compile(r"[0-9a-f]{32}\.lock")  # ours; other files in a user's --state-dir are not


def _is_current(fd: int, path: Path) -> bool:
    """Whether fd is open on the file now at path (not on one unlinked or replaced since)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
        return f"process {info.get('pid', '?')} (started {since})"
    except (OSError, ValueError, AttributeError):
        return "another process"


def _remove_if_unheld(path: Path) -> None:
    """Unlink a lock file no process holds, under its lock, as release() does."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # EAGAIN: held, in use
        if _is_current(fd, path):
            path.unlink()
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
    #
    # The lock file exists only while a process holds it: release() unlinks it while still
    # holding the flock, and acquire() keeps a lock only if the file it locked is still the
    # one at lock_path (otherwise it locked a file a releasing process had just unlinked,
    # which a third process may have replaced and locked: it retries on the new file).

    def acquire(self) -> None:
        """Take the exclusive lock or raise LockHeld naming the holder."""
        self.ensure_dir()
        self._acquire(self._open_lock())

    def _open_lock(self) -> int:
        return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def _acquire(self, fd: int) -> None:
        """Lock from fd, open on lock_path (or on a file that was there when it was opened)."""
        busy = 0
        for attempt in range(_LOCK_ATTEMPTS):
            if attempt:
                fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                try:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    # Not current: its holder is releasing it (unlinked already); take the new one.
                    # Current: held, or being removed as stale by another run's cleanup (for
                    # microseconds): only a lock still held after a few looks is reported.
                    if _is_current(fd, self.lock_path):
                        busy += 1
                        if busy >= _BUSY_LOOKS:
                            raise LockHeld(_read_holder(fd)) from None
                        time.sleep(_BUSY_PAUSE)
                finally:
                    os.close(fd)
                continue
            try:
                if not _is_current(fd, self.lock_path):
                    os.close(fd)  # locked a file that was unlinked meanwhile
                    continue
                os.ftruncate(fd, 0)
                info = {"pid": os.getpid(), "since": time.time(), "argv": sys.argv[:1]}
                os.pwrite(fd, json.dumps(info).encode(), 0)  # what LockHeld shows the others
                os.fchmod(fd, 0o600)
            except BaseException:
                self._lock_fd = fd
                self.release()
                raise
            self._lock_fd = fd
            self._remove_stale_files()
            return
        raise LockHeld("another process (its lock file kept being replaced)")

    def _remove_stale_files(self) -> None:
        """Temp files of this manifest (left by a process killed mid-write; we hold its lock),
        and lock files of any manifest that no process holds (left by killed processes, or
        by versions that kept them). Manifests are left alone."""
        for stale in self.dir.glob(f"{self.path.stem}.tmp*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            if _LOCK_NAME.fullmatch(name) and name != self.lock_path.name:
                with contextlib.suppress(OSError):
                    _remove_if_unheld(self.dir / name)

    def release(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                if _is_current(fd, self.lock_path):  # always, unless someone removed it by hand
                    self.lock_path.unlink()  # while still holding the flock: see acquire()
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # left behind: at least without a stale holder
            finally:
                os.close(fd)  # closing drops the flock

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
