"""The benchmark scenarios. Each starts its own server(s), runs the tools in turn
(A B C A B C ...), and returns a ScenarioResult: medians per tool plus the raw samples."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import MiB, RunFailed, Sample, loadavg, run_once, summarize
from bench.relay import Relay
from bench.tools import VENV, Job, S3Target, Tool, chunkhaul_s3, chunkhaul_tus, s3_peers, tus_peers

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import write_random_file  # noqa: E402
from tests.servers.fault_proxy import Direction, FaultProxy, Throttle  # noqa: E402
from tests.servers.seaweed import SeaweedFS  # noqa: E402
from tests.servers.tus_servers import TusNodeServer  # noqa: E402

CHUNKHAUL = "chunkhaul"
SETTLE_SECONDS = 1.0  # after os.sync(), before each timed run


@dataclass
class ScenarioResult:
    name: str
    title: str
    size_mib: int
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str = ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    work_dir: Path
    rounds: int
    tools: frozenset[str] | None = None  # None: all
    timeout: float = 900.0
    log: Callable[[str], None] = print

    def wanted(self, tools: Sequence[Tool]) -> list[Tool]:
        if self.tools is None:
            return list(tools)
        return [t for t in tools if any(t.name.lower().startswith(w) for w in self.tools)]


# -- shared helpers --------------------------------------------------------------------------

def data_file(settings: Settings, size_mib: int) -> Path:
    """A random file of size_mib MiB, generated once (fixed seed) and reused across runs."""
    path = settings.data_dir / f"random-{size_mib}MiB.bin"
    if not path.exists() or path.stat().st_size != size_mib * MiB:
        settings.log(f"  generating {path} ({size_mib} MiB)")
        tmp = path.with_suffix(".tmp")
        write_random_file(tmp, size_mib * MiB, seed=size_mib)
        tmp.rename(path)
    return path


def warm(path: Path) -> None:
    """Read the file once so every tool starts from the page cache, not the first one only."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass


def s3_target(server: SeaweedFS, endpoint: str | None = None) -> S3Target:
    return S3Target(endpoint or server.endpoint, server.bucket, server.access_key, server.secret_key, server.region)


@contextlib.contextmanager
def scratch(settings: Settings, label: str) -> Iterator[Path]:
    path = settings.work_dir / label
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@contextlib.contextmanager
def timed(result: ScenarioResult, settings: Settings) -> Iterator[None]:
    settings.log(f"\n== {result.title}")
    result.load["before"] = loadavg()
    started = time.monotonic()
    try:
        yield
    finally:
        result.seconds = time.monotonic() - started
        result.load["after"] = loadavg()
        settings.log(f"   load before {result.load['before'][0]:.2f}, after {result.load['after'][0]:.2f}; "
                     f"{result.seconds:.0f}s")


def rotated(tools: Sequence[Tool], rnd: int) -> list[Tool]:
    """Round r starts r tools further on (A B C, B C A, C A B): no tool always runs first, right
    after the previous round's last and slowest tool."""
    shift = rnd % len(tools) if tools else 0
    return [*tools[shift:], *tools[:shift]]


def settle() -> None:
    """Before each timed run: write back the dirty pages the previous run left (1 GiB per upload
    into SeaweedFS's volumes) and give the server a moment for its deletes, so no tool pays for
    the one before it."""
    os.sync()
    time.sleep(SETTLE_SECONDS)


def alternate(settings: Settings, tools: Sequence[Tool], run: Callable[[Tool, int], Sample | None],
              result: ScenarioResult) -> None:
    """rounds x tools, each round in a rotated order (A B C, B C A, ...), each run after
    settle(); a failing tool is reported, not fatal."""
    samples: dict[str, list[Sample]] = {t.name: [] for t in tools}
    failures: dict[str, str] = {}
    for rnd, tool in ((r, t) for r in range(settings.rounds) for t in rotated(tools, r)):
        if tool.name in failures:
            continue
        settle()
        try:
            sample = run(tool, rnd)
        except RunFailed as exc:
            failures[tool.name] = str(exc).splitlines()[0][:300]
            settings.log(f"   {tool.name}: FAILED {exc}")
            continue
        if sample is not None:
            samples[tool.name].append(sample)
            settings.log(f"   r{rnd} {tool.name:<16} {sample.wall:7.2f}s  cpu {sample.cpu:6.2f}s  "
                         f"rss {sample.rss_mib:6.1f} MiB  load {loadavg()[0]:.2f}")
    for name, runs in samples.items():
        if runs:
            result.rows[name] = summarize(runs)
        if name in failures:
            result.rows.setdefault(name, {})["failed"] = failures[name]


# -- S3: 1 GiB and the capped link --------------------------------------------------------

def _s3_run(settings: Settings, server: SeaweedFS, target: S3Target, src: Path,
            prefix: str) -> Callable[[Tool, int], Sample]:
    def run(tool: Tool, rnd: int) -> Sample:
        key = f"{prefix}/{slug(tool.name)}-{rnd}"
        with scratch(settings, f"{prefix}-{slug(tool.name)}-{rnd}") as tmp:
            job = Job(src, key, tmp, s3=target)
            sample = run_once(tool.command(job), tool.environment(job), settings.timeout)
        head = server.head_object(key)
        size = head["ContentLength"] if head else None
        if size != src.stat().st_size:
            raise RunFailed(f"{tool.name}: the stored object has {size} bytes, expected {src.stat().st_size}")
        server.s3.delete_object(Bucket=server.bucket, Key=key)
        return sample
    return run


def s3_tools(settings: Settings) -> list[Tool]:
    return settings.wanted([Tool(CHUNKHAUL, chunkhaul_s3()), *s3_peers()])


def scenario_s3(settings: Settings, size_mib: int) -> ScenarioResult:
    result = ScenarioResult("s3", f"{size_mib} MiB to SeaweedFS (loopback)", size_mib)
    src = data_file(settings, size_mib)
    with timed(result, settings), SeaweedFS(base_dir=settings.work_dir) as server:
        warm(src)
        alternate(settings, s3_tools(settings), _s3_run(settings, server, s3_target(server), src, "s3"), result)
    return result


def scenario_capped(settings: Settings, size_mib: int, rate_mib: float, latency_ms: float) -> ScenarioResult:
    title = (f"{size_mib} MiB over a long thin link ({rate_mib:g} MiB/s per connection, "
             f"+{latency_ms:g} ms each way)")
    result = ScenarioResult("capped", title, size_mib)
    result.notes.append(f"cap_mib_s={rate_mib}")
    src = data_file(settings, size_mib)
    rule = Throttle(bytes_per_sec=rate_mib * MiB, latency_ms=latency_ms, direction=Direction.BOTH)
    with timed(result, settings), SeaweedFS(base_dir=settings.work_dir) as server, \
            FaultProxy("127.0.0.1", server.s3_port, [rule]) as proxy:
        warm(src)
        target = s3_target(server, proxy.url("http"))
        alternate(settings, s3_tools(settings), _s3_run(settings, server, target, src, "capped"), result)
    return result


def scenario_memory(settings: Settings, sizes_mib: Sequence[int]) -> ScenarioResult:
    result = ScenarioResult("memory", "chunkhaul peak RSS by file size (SeaweedFS, defaults)", max(sizes_mib))
    files = {size: data_file(settings, size) for size in sizes_mib}
    tools = [Tool(f"{CHUNKHAUL} {size} MiB", chunkhaul_s3()) for size in sizes_mib]
    with timed(result, settings), SeaweedFS(base_dir=settings.work_dir) as server:
        runners = {t.name: _s3_run(settings, server, s3_target(server), files[s], "mem")
                   for t, s in zip(tools, sizes_mib, strict=True)}
        for path in files.values():
            warm(path)
        alternate(settings, tools, lambda tool, rnd: runners[tool.name](tool, rnd), result)
    return result


# -- tus -------------------------------------------------------------------------------------

def tus_target_works(settings: Settings, server: TusNodeServer) -> str:
    """'' when `chunkhaul upload --protocol tus` works on a small file, else why not."""
    src = data_file(settings, 8)
    with scratch(settings, "tus-probe") as tmp:
        tool = Tool(CHUNKHAUL, chunkhaul_tus())
        job = Job(src, "", tmp, tus_url=server.url)
        try:
            run_once(tool.command(job), tool.environment(job), 120)
        except RunFailed as exc:
            return str(exc).splitlines()[0][:200]
    return ""


def _clear_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            child.unlink()


def scenario_tus(settings: Settings, size_mib: int, tuspy_chunks: Sequence[int]) -> ScenarioResult:
    result = ScenarioResult("tus", f"{size_mib} MiB to @tus/server (file store)", size_mib)
    src = data_file(settings, size_mib)
    with timed(result, settings), TusNodeServer(directory=settings.work_dir / "tus-files") as server:
        problem = tus_target_works(settings, server)
        _clear_dir(server.directory)
        chunkhaul_tools = [] if problem else [Tool(CHUNKHAUL, chunkhaul_tus())]
        if problem:
            result.notes.append(f"chunkhaul skipped: tus target not landed ({problem})")
        tools = settings.wanted([*chunkhaul_tools, *tus_peers(list(tuspy_chunks))])
        warm(src)

        def run(tool: Tool, rnd: int) -> Sample:
            with scratch(settings, f"tus-{slug(tool.name)}-{rnd}") as tmp:
                job = Job(src, "", tmp, tus_url=server.url)
                sample = run_once(tool.command(job), tool.environment(job), settings.timeout)
            _check_tus(server, src.stat().st_size, tool.name)
            return sample

        alternate(settings, tools, run, result)
    return result


def _check_tus(server: TusNodeServer, size: int, name: str) -> None:
    stored = [p for p in server.directory.iterdir() if p.is_file() and not p.name.endswith(".json")]
    ok = len(stored) == 1 and stored[0].stat().st_size == size
    sizes = [p.stat().st_size for p in stored]
    _clear_dir(server.directory)
    if not ok:
        raise RunFailed(f"{name}: the tus store holds {sizes}, expected one upload of {size} bytes")


# -- resume ----------------------------------------------------------------------------------

def _chunkhaul_cmd(src: Path, dest: str, endpoint: str, state: Path, *extra: str) -> list[str]:
    return [str(VENV / "bin" / "chunkhaul"), "upload", str(src), dest, "--endpoint-url", endpoint,
            "--state-dir", str(state), *extra]


def _popen(cmd: list[str], env: dict[str, str], stderr: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if proc.poll() is not None:
            return check()
        time.sleep(0.002)
    return False


def _log_times(log_text: str) -> dict[str, float]:
    """Wall-clock epoch of chunkhaul's -v log lines we care about."""
    marks = {"log_first": "", "log_resuming": "Resuming:"}
    out: dict[str, float] = {}
    for line in log_text.splitlines():
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for name, needle in marks.items():
            if name not in out and needle in line:
                out[name] = stamp
    return out


def _resume_round(settings: Settings, server: SeaweedFS, relay: Relay, src: Path, rnd: int) -> Sample:
    size = src.stat().st_size
    dest = f"s3://{server.bucket}/resume/{rnd}"
    with scratch(settings, f"resume-{rnd}") as tmp:
        job = Job(src, f"resume/{rnd}", tmp, s3=s3_target(server, relay.url))
        env = Tool(CHUNKHAUL, chunkhaul_s3()).environment(job)
        state = tmp / "state"
        relay.clear()
        first = _popen(_chunkhaul_cmd(src, dest, relay.url, state, "-q"), env, subprocess.DEVNULL)
        reached = _wait_until(lambda: relay.bytes_up() >= size // 2, first, settings.timeout)
        _kill(first)
        if not reached:
            raise RunFailed(f"resume: the first run ended (exit {first.returncode}) before sending half")
        manifest_parts = _manifest_summary(state)
        relay.clear()
        err_path = tmp / "resume.log"
        with err_path.open("wb") as err:
            wall0, t0 = time.time(), time.monotonic()
            second = _popen(_chunkhaul_cmd(src, dest, relay.url, state, "-v"), env, err)
            seen = _wait_until(lambda: relay.first_request("PUT", "partNumber=") is not None, second, 120)
            first_put = relay.first_request("PUT", "partNumber=")
            _kill(second)
        if not seen or first_put is None:
            raise RunFailed(f"resume: no UploadPart seen; log:\n{err_path.read_text()[-2000:]}")
        marks = _log_times(err_path.read_text())
        subprocess.run([str(VENV / "bin" / "chunkhaul"), "abort", str(src), dest, "--endpoint-url", relay.url,
                        "--state-dir", str(state), "-q"], env=env, check=False, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    extra = {"first_byte_s": first_put - t0, **manifest_parts}
    extra.update({k: v - wall0 for k, v in marks.items()})
    return Sample(first_put - t0, float("nan"), float("nan"), extra)


def _manifest_summary(state: Path) -> dict[str, float]:
    import json

    for path in state.rglob("*.json"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            data = json.loads(path.read_text())
            parts = data["parts"]
            done = sum(1 for p in parts if p.get("etag"))
            return {"parts": float(len(parts)), "parts_done": float(done)}
    return {}


def scenario_resume(settings: Settings, size_mib: int) -> ScenarioResult:
    result = ScenarioResult("resume", f"resume a {size_mib} MiB upload killed at ~50 %: process start to "
                            "first UploadPart byte", size_mib)
    src = data_file(settings, size_mib)
    tool = Tool(CHUNKHAUL, chunkhaul_s3())
    if not settings.wanted([tool]):
        return result
    with timed(result, settings), SeaweedFS(base_dir=settings.work_dir) as server, \
            Relay("127.0.0.1", server.s3_port) as relay:
        warm(src)
        alternate(settings, [tool], lambda _t, rnd: _resume_round(settings, server, relay, src, rnd), result)
    return result
