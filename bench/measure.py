"""Run one client process and measure it: wall seconds, CPU seconds (user + sys) and peak RSS.

The numbers come from the kernel's rusage of the child (``os.wait4``), so they cover the client
process and its threads, not the servers. Timestamps are monotonic."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30


class RunFailed(RuntimeError):
    """A measured client exited non-zero or timed out; carries the tail of its stderr."""


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + sys seconds of the client process (all threads)
    rss_mib: float  # peak resident set of the client process
    extra: Mapping[str, float] = field(default_factory=dict)  # scenario-specific (e.g. first byte)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# Linux carries a process's peak RSS across fork and exec (exec_mmap keeps the old mm's
# high-water mark), so a child forked straight from this ~80 MB harness would report at least
# 80 MB. GNU time is a ~2 MB process: the client it forks starts from that floor instead.
GNU_TIME = "/usr/bin/time"
_TIME_FORMAT = "%e %U %S %M"


def launcher_floor_note() -> str:
    if os.access(GNU_TIME, os.X_OK):
        return "client peak RSS measured through GNU time (floor ~2 MiB from the launcher)"
    return "GNU time missing: peak RSS includes the harness's RSS at fork time (install Debian's `time`)"


def spawn(cmd: Sequence[str], env: Mapping[str, str], cwd: str | None, err: Any,
          stats: Path | None) -> subprocess.Popen[bytes]:
    argv = list(cmd)
    if stats is not None:
        argv = [GNU_TIME, "-q", "-f", _TIME_FORMAT, "-o", str(stats), *argv]
    return subprocess.Popen(argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _read_stats(stats: Path | None, usage: Any) -> tuple[float, float]:
    """(cpu seconds, peak RSS MiB) of the client: from GNU time's report, else from wait4."""
    if stats is not None:
        fields = stats.read_text().split()[-4:]
        return float(fields[1]) + float(fields[2]), int(fields[3]) / 1024
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_once(cmd: Sequence[str], env: Mapping[str, str], timeout: float = 900.0,
             cwd: str | None = None) -> Sample:
    """Start cmd, wait for it and return its Sample; RunFailed on failure or timeout."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp, open(Path(tmp) / "stderr", "w+b") as err:
        stats = Path(tmp) / "time" if os.access(GNU_TIME, os.X_OK) else None
        started = time.monotonic()
        proc = spawn(cmd, env, cwd, err, stats)
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-3000:].decode(errors="replace")
            raise RunFailed(f"exit {proc.returncode} after {wall:.1f}s: {' '.join(cmd)}\n{tail}")
        cpu, rss = _read_stats(stats, usage)
    return Sample(wall, cpu, rss)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Medians (and the raw samples) of one tool in one scenario."""
    out: dict[str, Any] = {
        "n": len(samples),
        "wall": median([s.wall for s in samples]),
        "cpu": median([s.cpu for s in samples]),
        "rss_mib": median([s.rss_mib for s in samples]),
        "rss_max_mib": max((s.rss_mib for s in samples), default=float("nan")),
        "samples": [asdict(s) for s in samples],
    }
    keys = {k for s in samples for k in s.extra}
    for key in sorted(keys):
        out[key] = median([s.extra[key] for s in samples if key in s.extra])
    return out


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


def _version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unavailable"


def machine() -> dict[str, Any]:
    """What the results were measured on."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_gib": round(_mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "curl": _version(["curl", "--version"]),
        "node": _version(["node", "--version"]),
    }
