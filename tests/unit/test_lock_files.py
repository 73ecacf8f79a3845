"""Lock files exist only while held, and removing them never lets two processes hold the lock.

Real files, real fds, real processes: flock and unlink races are what is under test."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resume import FileIdentity, LockHeld, Manifest, ManifestStore, PartRecord

REPO = Path(__file__).resolve().parents[2]

HOLDER = (
    "import sys; from resume import ManifestStore\n"
    "s = ManifestStore(sys.argv[1], sys.argv[2], sys.argv[3]); s.acquire()\n"
    "print('held', flush=True); sys.stdin.readline(); s.release()\n"
)


def _holder(state: Path, src: Path, dest: str) -> subprocess.Popen[str]:
    """A child process holding the lock of (src, dest) until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), str(src), dest], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _ino(path_or_fd: Path | int) -> int:
    return os.fstat(path_or_fd).st_ino if isinstance(path_or_fd, int) else os.stat(path_or_fd).st_ino


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.write_bytes(b"x")
    return path


def test_release_removes_the_lock_file(tmp_path: Path, src: Path) -> None:
    store = ManifestStore(tmp_path / "state", str(src), "s3://b/k")
    store.acquire()
    assert store.lock_path.exists()
    store.release()
    assert not store.lock_path.exists()
    store.release()  # twice: harmless
    for n in range(5):  # runs that did nothing, to several destinations: nothing left
        other = ManifestStore(tmp_path / "state", str(src), f"s3://b/k{n}")
        other.acquire()
        other.release()
    assert list((tmp_path / "state").iterdir()) == []


def test_lock_taken_on_a_file_unlinked_meanwhile_is_not_kept(tmp_path: Path, src: Path) -> None:
    """The classic race: B opens the lock file, A releases (unlinks it), C creates a new one and
    locks it, then B's flock on the old file succeeds. B must see the change and lose to C."""
    state = tmp_path / "state"
    a, b, c = (ManifestStore(state, str(src), "s3://b/k") for _ in range(3))
    a.acquire()
    b_fd = os.open(b.lock_path, os.O_RDWR)  # B got as far as open() before A released
    pin = os.dup(b_fd)  # keeps the old inode (and its number) from being reused
    old = _ino(pin)
    a.release()
    c.acquire()
    with pytest.raises(LockHeld, match=f"process {os.getpid()} "):
        b._acquire(b_fd)  # locks the old inode, sees a new file at the path, retries: held by C
    assert b._lock_fd is None and c._lock_fd is not None
    assert _ino(c.lock_path) == _ino(c._lock_fd) != old
    os.close(pin)
    c.release()
    assert not c.lock_path.exists()


def test_lock_taken_on_a_file_unlinked_meanwhile_retries_on_a_new_file(tmp_path: Path, src: Path) -> None:
    state = tmp_path / "state"
    a, b = ManifestStore(state, str(src), "s3://b/k"), ManifestStore(state, str(src), "s3://b/k")
    a.acquire()
    b_fd = os.open(b.lock_path, os.O_RDWR)
    pin = os.dup(b_fd)  # keeps the old inode (and its number) from being reused
    old = _ino(pin)
    a.release()
    b._acquire(b_fd)  # nobody else: B ends up holding a fresh lock file at the path
    assert b._lock_fd is not None and _ino(b.lock_path) == _ino(b._lock_fd) != old
    with pytest.raises(LockHeld):
        ManifestStore(state, str(src), "s3://b/k").acquire()
    os.close(pin)
    b.release()
    assert not b.lock_path.exists()


def test_a_releasing_holder_is_not_reported_as_holding(tmp_path: Path, src: Path) -> None:
    """A has unlinked its file and not yet closed it (the middle of release()): B, who opened the
    old file, gets EAGAIN on it but must not report A; it takes a new file instead."""
    state = tmp_path / "state"
    a, b = ManifestStore(state, str(src), "s3://b/k"), ManifestStore(state, str(src), "s3://b/k")
    a.acquire()
    b_fd = os.open(b.lock_path, os.O_RDWR)
    a.lock_path.unlink()  # release(), first half
    b._acquire(b_fd)
    assert b._lock_fd is not None and _ino(b.lock_path) == _ino(b._lock_fd)
    assert a._lock_fd is not None
    os.close(a._lock_fd)  # release(), second half
    a._lock_fd = None
    b.release()
    assert not b.lock_path.exists()


def _contend(state: str, src: str, rounds: int, out: multiprocessing.Queue[tuple[int, int]]) -> None:
    """Take and release the lock `rounds` times; inside, claim a marker file with O_EXCL:
    failing to means another process is inside too. In between, take another lock, whose
    cleanup pass races the others for the first lock's file."""
    marker = os.path.join(state, "inside")
    held = overlaps = 0
    while held < rounds:
        store = ManifestStore(Path(state), src, "s3://b/k")
        try:
            store.acquire()
        except LockHeld:
            continue
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            overlaps += 1
        else:
            os.close(fd)
            time.sleep(0.0002)
            os.unlink(marker)
        store.release()
        held += 1
        other = ManifestStore(Path(state), src, f"s3://b/other{os.getpid()}")
        other.acquire()  # its cleanup removes the lock file of s3://b/k when no one holds it
        other.release()
    out.put((os.getpid(), overlaps))


def test_processes_racing_acquire_and_release_never_overlap(tmp_path: Path, src: Path) -> None:
    state = tmp_path / "state"
    ManifestStore(state, str(src), "s3://b/k").ensure_dir()
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[tuple[int, int]] = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(state), str(src), 300, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert [overlaps for _, overlaps in results] == [0] * len(procs)
    assert list(state.iterdir()) == []


def test_held_lock_names_the_other_process(tmp_path: Path, src: Path) -> None:
    state = tmp_path / "state"
    child = _holder(state, src, "s3://b/k")
    try:
        store = ManifestStore(state, str(src), "s3://b/k")
        with pytest.raises(LockHeld, match=rf"^process {child.pid} \(started \d\d:\d\d:\d\d\)$"):
            store.acquire()
        assert store._lock_fd is None
        assert store.lock_path.exists()  # the child's, still held
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    assert not store.lock_path.exists()  # the child's release removed it
    store.acquire()
    store.release()


def test_stale_lock_files_are_removed_and_held_ones_kept(tmp_path: Path, src: Path) -> None:
    state = tmp_path / "state"
    alive = _holder(state, src, "s3://b/alive")  # a run in progress: its lock file stays
    held = ManifestStore(state, str(src), "s3://b/alive").lock_path
    killed = _holder(state, src, "s3://b/killed")  # a run killed -9: its lock file is stale
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    stale_killed = ManifestStore(state, str(src), "s3://b/killed")
    stale_old = ManifestStore(state, str(src), "s3://b/old")
    stale_old.lock_path.write_text('{"pid": 1, "since": 0}')  # kept by an earlier version
    stale_old.save(_manifest_for(stale_old, src))
    not_ours = state / "notes.lock"
    not_ours.write_text("a user's file")
    try:
        assert stale_killed.lock_path.exists() and stale_old.lock_path.exists()
        store = ManifestStore(state, str(src), "s3://b/k")
        store.acquire()
        assert not stale_killed.lock_path.exists() and not stale_old.lock_path.exists()
        assert held.exists() and not_ours.exists()
        assert stale_old.path.exists()  # manifests are never touched
        with pytest.raises(LockHeld, match=f"process {alive.pid} "):
            ManifestStore(state, str(src), "s3://b/alive").acquire()
        store.release()
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        assert alive.wait(timeout=30) == 0
    assert sorted(p.name for p in state.iterdir()) == sorted([stale_old.path.name, "notes.lock"])


def _manifest_for(store: ManifestStore, src: Path) -> Manifest:
    return Manifest(file=FileIdentity.of(str(src)), destination="s3://b/old", target="s3", part_size=5,
                    parts=[PartRecord(1, 0, 1)], session={"upload_id": "u"})
