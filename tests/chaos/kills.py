"""Kill suite: one large upload SIGKILLed at M chosen moments, each kill followed by a resume.

    python -m tests.chaos.kills --kills 50 --seed 1 [--size 512MiB] [--part-size 8MiB] [--concurrency 4]

Each kill aims at a phase and records where it actually landed, from the proxy's request log
(requests started / answered by the server at the moment of the kill), the state directory
(a manifest temp file left behind) and the server (ListParts, orphaned uploads):

- create:         the first connection's requests are delayed (Throttle latency, upstream), the
                  kill falls while CreateMultipartUpload is on its way;
- parts:          the kill falls after a random fraction of the parts, with parts in flight;
- complete:       every connection has latency both ways, the kill falls while
                  CompleteMultipartUpload is on its way to the server or its answer is on the way back;
- manifest-write: inotify on the state dir, the kill follows the k-th manifest temp file's creation
                  (the atomic write is temp + fsync + rename: did the kill land before the rename?);
- fallback:       a chunked upload killed during its parts, then `--fallback only` on a throttled link
                  killed during the single PutObject, then the resume.

After each kill, the resume (no faults) must exit 0 with a byte-identical object, and re-send at
most (concurrency + 1) × part size beyond what ListParts showed once the killed client's
connections had closed: re-sent = --json bytes_sent - (file size - bytes on the server).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resume import Manifest, ManifestError
from tests.chaos.harness import (
    MiB,
    RequestTracker,
    Snapshot,
    abort_others,
    delete_object,
    human,
    machine,
    object_md5,
    parts_on_server,
    popen,
    run_bounded,
    seaweed_servers,
    settle,
    table,
    wait_until,
)
from tests.conftest import md5_file, write_random_file
from tests.integration.cli import s3_env
from tests.servers.fault_proxy import Direction, FaultProxy, Throttle
from tests.servers.seaweed import SeaweedFS

PHASES = ("create", "parts", "complete", "manifest-write", "fallback")
WEIGHTS = (0.15, 0.35, 0.2, 0.2, 0.1)
IN_CREATE = 0x100


# -- inotify (Linux): the kill lands on a file's creation, not on a poll --------------------


class DirWatch:
    """IN_CREATE events of one directory, read with select()."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(path).encode(), IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify unavailable")
        self._pending: list[str] = []

    def next_created(self, timeout: float) -> str | None:
        if not self._pending:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            self._pending = _names(os.read(self.fd, 64 * 1024))
        return self._pending.pop(0) if self._pending else None

    def close(self) -> None:
        os.close(self.fd)


def _names(buf: bytes) -> list[str]:
    names, pos = [], 0
    while pos + 16 <= len(buf):
        _, _, _, length = struct.unpack_from("iIII", buf, pos)
        names.append(buf[pos + 16 : pos + 16 + length].rstrip(b"\0").decode())
        pos += 16 + length
    return names


# -- the rig --------------------------------------------------------------------------------


@dataclass
class KillRig:
    server: SeaweedFS
    proxy: FaultProxy
    tracker: RequestTracker
    src: Path
    md5: str
    part_size: int
    concurrency: int
    work: Path

    @property
    def size(self) -> int:
        return self.src.stat().st_size

    @property
    def parts(self) -> int:
        return -(-self.size // self.part_size)

    @property
    def bound(self) -> int:
        return (self.concurrency + 1) * self.part_size

    def args(self, key: str, state: Path, *extra: str) -> list[str]:
        return ["upload", str(self.src), f"s3://{self.server.bucket}/{key}", "--endpoint-url", self.proxy.url(),
                "--state-dir", str(state), "--part-size", str(self.part_size),
                "--concurrency", str(self.concurrency), "--sync-delay", "0.2", *extra]

    def env(self) -> dict[str, str]:
        return s3_env(self.server, self.work)


@dataclass
class Kill:
    index: int
    target: str
    landed: str = "missed (the upload ended first)"
    detail: str = ""
    parts_at_kill: int = 0
    bytes_at_kill: int = 0
    tmp_left: bool = False
    torn_manifest: bool = False
    orphans: int = 0
    resume_code: int | None = None
    bytes_sent: int | None = None
    resent: int | None = None
    within_bound: bool | None = None
    identical: bool = False
    resume_error: str = ""
    seconds: float = 0.0


# -- landing a kill -------------------------------------------------------------------------


def _sigkill(rig: KillRig, proc: subprocess.Popen[str]) -> Snapshot:
    snap = rig.tracker.snapshot()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return snap


def _landed(snap: Snapshot) -> str:
    if snap.in_flight("put"):
        return "sync fallback (PutObject in flight)"
    if snap.in_flight("complete"):
        return "complete (request on its way, server not done)"
    if snap.answered["complete"]:
        return "complete (server done, answer on its way back)"
    if snap.in_flight("create"):
        return "create (request in flight)"
    if not snap.answered["create"]:
        return "create (before the request)"
    if snap.in_flight("part"):
        return "parts"
    return "between requests"


def kill_in_create(rig: KillRig, rng: random.Random, key: str, state: Path) -> tuple[str, str]:
    latency = rng.uniform(0.3, 0.9)
    rig.proxy.set_rules([Throttle(latency_ms=latency * 1000, direction=Direction.UP, first=1)])
    proc = popen(rig.args(key, state), rig.env())
    if not wait_until(lambda: rig.tracker.first_start("create") is not None, proc, 60):
        return _missed(proc)
    time.sleep(rng.uniform(0, latency + 0.05))
    snap = _sigkill(rig, proc)
    return _landed(snap), f"upstream latency {latency * 1000:.0f} ms"


def kill_in_parts(rig: KillRig, rng: random.Random, key: str, state: Path,
                  low: float = 0.02, high: float = 0.95) -> tuple[str, str]:
    rig.proxy.set_rules([])
    fraction = rng.uniform(low, high)
    proc = popen(rig.args(key, state), rig.env())

    def due() -> bool:
        snap = rig.tracker.snapshot()
        return snap.answered["part"] >= fraction * rig.parts and snap.in_flight("part") > 0

    if not wait_until(due, proc, 600):
        return _missed(proc)
    snap = _sigkill(rig, proc)
    return _landed(snap), f"after {snap.answered['part']} of {rig.parts} parts answered (aimed at {fraction:.0%})"


def kill_in_complete(rig: KillRig, rng: random.Random, key: str, state: Path) -> tuple[str, str]:
    latency = rng.uniform(0.1, 0.25)
    rig.proxy.set_rules([Throttle(latency_ms=latency * 1000, direction=Direction.BOTH)])
    proc = popen(rig.args(key, state), rig.env())
    if not wait_until(lambda: rig.tracker.first_start("complete") is not None, proc, 600, step=0.002):
        return _missed(proc)
    time.sleep(rng.uniform(0, 1.8 * latency))  # the reply is back after 2 x latency + server time
    snap = _sigkill(rig, proc)
    return _landed(snap), f"latency {latency * 1000:.0f} ms each way"


def kill_in_manifest_write(rig: KillRig, rng: random.Random, key: str, state: Path) -> tuple[str, str]:
    """Kill on the nth manifest temp file. Every upload writes at least two (after create, and
    the forced one after the last part); more while parts stream in (at most one a second), so
    a high nth can miss on a fast link: then once more with nth 1 or 2."""
    rig.proxy.set_rules([])
    landed = _kill_on_nth_write(rig, key, state, rng.randint(1, 5))
    if landed is None:
        rig.tracker.clear()
        rig.server.abort_all_multipart_uploads(key)
        delete_object(rig.server, key)
        landed = _kill_on_nth_write(rig, key, state, rng.randint(1, 2))
    return landed or _missed(None)


def _kill_on_nth_write(rig: KillRig, key: str, state: Path, nth: int) -> tuple[str, str] | None:
    watch = DirWatch(state)
    try:
        proc = popen(rig.args(key, state), rig.env())
        seen = 0
        while proc.poll() is None:
            name = watch.next_created(0.05)
            if name and ".tmp" in name:
                seen += 1
                if seen == nth:
                    os.kill(proc.pid, signal.SIGKILL)  # first: every microsecond counts here
                    snap = rig.tracker.snapshot()
                    proc.communicate()
                    left = any(state.glob("*.tmp*"))
                    where = "before the rename (temp file left)" if left else "after the rename"
                    return f"manifest write, {where}", f"write #{nth}; requests: {_landed(snap)}"
        proc.communicate()
        for path in state.iterdir():  # the upload finished: start the next try from nothing
            path.unlink()
        return None
    finally:
        watch.close()


def kill_in_fallback(rig: KillRig, rng: random.Random, key: str, state: Path) -> tuple[str, str]:
    first, _ = kill_in_parts(rig, rng, key, state, 0.1, 0.8)
    settle(rig.proxy)
    rate = rng.uniform(32, 64) * MiB
    rig.proxy.set_rules([Throttle(bytes_per_sec=rate, direction=Direction.UP)])
    rig.tracker.clear()
    proc = popen(rig.args(key, state, "--fallback", "only"), rig.env())
    if not wait_until(lambda: rig.tracker.first_start("put") is not None, proc, 60):
        return _missed(proc)
    time.sleep(rng.uniform(0.3, 0.8 * rig.size / rate))
    snap = _sigkill(rig, proc)
    partial = rig.server.head_object(key) is not None
    return _landed(snap), (f"chunked run killed in {first}; then --fallback only at {rate / MiB:.0f} MiB/s"
                           + ("; A PARTIAL OBJECT EXISTS" if partial else "; no object after the killed PUT"))


def _missed(proc: subprocess.Popen[str] | None) -> tuple[str, str]:
    if proc is None:
        return "missed (the upload ended first)", ""
    proc.kill()
    _, err = proc.communicate()
    return "missed (the upload ended first)", err.strip()[-200:]


AIMS = {"create": kill_in_create, "parts": kill_in_parts, "complete": kill_in_complete,
        "manifest-write": kill_in_manifest_write, "fallback": kill_in_fallback}


# -- after the kill -------------------------------------------------------------------------


def _state_after_kill(rig: KillRig, key: str, state: Path, kill: Kill) -> None:
    """What survived: the manifest (whole?), temp files, and what the server holds."""
    settle(rig.proxy)
    kill.tmp_left = any(state.glob("*.tmp*"))
    upload_id = None
    for path in state.glob("*.json"):
        try:
            upload_id = Manifest.loads(path.read_bytes()).session.get("upload_id")
        except ManifestError:
            kill.torn_manifest = True
    if upload_id is None and rig.server.head_object(key) is not None:
        kill.landed = "after the upload finished (manifest removed)"  # the re-run is a new upload
    held = parts_on_server(rig.server, key, upload_id) if upload_id else {}
    if held is None:  # the server no longer knows the upload: completed (or lost)
        kill.bytes_at_kill = rig.size if rig.server.head_object(key) else 0
        kill.parts_at_kill = rig.parts if kill.bytes_at_kill else 0
    else:
        kill.parts_at_kill, kill.bytes_at_kill = len(held), sum(held.values())
    kill.orphans = abort_others(rig.server, key, keep=upload_id)


def _resume(rig: KillRig, key: str, state: Path, kill: Kill) -> None:
    rig.proxy.set_rules([])
    rig.tracker.clear()
    run = run_bounded([*rig.args(key, state), "--json"], rig.env())
    kill.resume_code = run.code
    if run.code == 0:
        kill.bytes_sent = int(run.summary["bytes_sent"])
        kill.resent = kill.bytes_sent - (rig.size - kill.bytes_at_kill)
        kill.within_bound = kill.resent <= rig.bound
    else:
        kill.resume_error = run.stderr.strip()[-400:]
    kill.identical = object_md5(rig.server, key) == rig.md5 and not any(state.glob("*.json"))
    abort_others(rig.server, key)
    delete_object(rig.server, key)


def run_one(rig: KillRig, rng: random.Random, index: int, target: str) -> Kill:
    key, state = rig.server.unique_key(f"kill{index}"), rig.work / f"state{index}"
    state.mkdir(mode=0o700)
    kill = Kill(index, target)
    started = time.monotonic()
    rig.tracker.clear()
    kill.landed, kill.detail = AIMS[target](rig, rng, key, state)
    _state_after_kill(rig, key, state, kill)
    _resume(rig, key, state, kill)
    kill.seconds = round(time.monotonic() - started, 1)
    return kill


# -- figures --------------------------------------------------------------------------------


@dataclass
class KillFigures:
    seed: int
    size: int
    part_size: int
    concurrency: int
    kills: list[Kill] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def bound(self) -> int:
        return (self.concurrency + 1) * self.part_size

    def landed(self) -> Counter[str]:
        return Counter(k.landed for k in self.kills)

    def over_bound(self) -> list[Kill]:
        return [k for k in self.kills if k.within_bound is False]

    def failures(self) -> list[str]:
        out = [f"kill {k.index} ({k.landed}): resume exit {k.resume_code}: {k.resume_error}"
               for k in self.kills if k.resume_code != 0]
        out += [f"kill {k.index} ({k.landed}): object not identical or manifest left"
                for k in self.kills if k.resume_code == 0 and not k.identical]
        out += [f"kill {k.index} ({k.landed}): torn manifest" for k in self.kills if k.torn_manifest]
        out += [f"kill {k.index} ({k.landed}): re-sent {human(k.resent or 0)} > bound {human(self.bound)}"
                for k in self.over_bound()]
        return out

    def render(self) -> str:
        resent = [k.resent for k in self.kills if k.resent is not None]
        within = [k.resent for k in self.kills if k.within_bound and k.resent is not None]
        rows: list[tuple[str, object]] = [
            ("seed", self.seed),
            ("file / part size / concurrency", f"{human(self.size)} / {human(self.part_size)} / {self.concurrency}"),
            ("kills (SIGKILL)", len(self.kills)),
            *[(f"  landed: {name}", n) for name, n in sorted(self.landed().items())],
            ("resumes that completed (exit 0)", sum(k.resume_code == 0 for k in self.kills)),
            ("final objects byte-identical (md5)", sum(k.identical for k in self.kills)),
            ("torn manifests after a kill (must be 0)", sum(k.torn_manifest for k in self.kills)),
            ("manifest temp files left by a kill", sum(k.tmp_left for k in self.kills)),
            ("orphaned multipart uploads after a kill", sum(k.orphans for k in self.kills)),
            ("re-send bound: (concurrency + 1) x part size", human(self.bound)),
            ("max re-sent bytes per resume", human(max(resent, default=0))),
            ("max re-sent within the bound", human(max(within, default=0))),
            ("resumes over the bound", len(self.over_bound())),
            ("wall time", f"{self.wall_seconds:.0f} s"),
            ("machine", machine()),
        ]
        lines = [f"chunkhaul kill suite: python -m tests.chaos.kills --kills {len(self.kills)} --seed {self.seed}",
                 table(rows, width=60)]
        return "\n".join(lines + [f"  ! {f}" for f in self.failures()])

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "size": self.size, "part_size": self.part_size, "concurrency": self.concurrency,
                "bound": self.bound, "wall_seconds": round(self.wall_seconds, 1), "landed": dict(self.landed()),
                "kills": [asdict(k) for k in self.kills], "failures": self.failures(), "machine": machine()}


def plan_targets(rng: random.Random, kills: int) -> list[str]:
    """Every phase once (when there are enough kills), the rest drawn by weight."""
    first = list(PHASES[:kills])
    rng.shuffle(first)
    return first + rng.choices(PHASES, WEIGHTS, k=max(0, kills - len(PHASES)))


def run_kills(server: SeaweedFS, kills: int, seed: int, work: Path, size: int = 512 * MiB,
              part_size: int = 8 * MiB, concurrency: int = 4, progress: bool = False) -> KillFigures:
    rng = random.Random(seed)
    figures = KillFigures(seed, size, part_size, concurrency)
    started = time.monotonic()
    src = write_random_file(work / "big.bin", size, seed=seed)
    with FaultProxy("127.0.0.1", server.s3_port, http=True, seed=seed) as proxy:
        rig = KillRig(server, proxy, RequestTracker(proxy), src, md5_file(src), part_size, concurrency, work)
        for index, target in enumerate(plan_targets(rng, kills)):
            kill = run_one(rig, rng, index, target)
            figures.kills.append(kill)
            if progress:
                print(_progress_line(kill), file=sys.stderr, flush=True)
    figures.wall_seconds = time.monotonic() - started
    return figures


def _progress_line(k: Kill) -> str:
    resent = "-" if k.resent is None else human(k.resent)
    return (f"[{k.index:3d}] aim {k.target:14s} landed {k.landed:48s} on server {k.parts_at_kill:3d} parts; "
            f"resume exit {k.resume_code} re-sent {resent:>11s} identical={k.identical} {k.seconds:5.1f}s"
            f"  ({k.detail})")


def main(argv: list[str] | None = None) -> int:
    from chunker import parse_size

    parser = argparse.ArgumentParser(prog="python -m tests.chaos.kills", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--part-size", default="8MiB")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"kills: seed {seed}, {args.kills} kills", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="chunkhaul-kills-") as work, seaweed_servers(tls=False) as (server, _):
        figures = run_kills(server, args.kills, seed, Path(work), parse_size(args.size), parse_size(args.part_size),
                            args.concurrency, progress=True)
    print(figures.render())
    if args.out:
        Path(args.out).write_text(json.dumps(figures.to_json(), indent=1))
    return 0 if not figures.failures() else 1


if __name__ == "__main__":
    sys.exit(main())
