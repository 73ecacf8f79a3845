"""Where chunkhaul's CPU and memory go on a 1 GiB upload, and what changes would buy: `make bench-profile`.

    .venv/bin/python -m bench.profile [--size-mib 1024] [--rounds 3] [--sections micro,pyspy,...]

Sections:
  micro        hash and read speeds on this machine (md5, sha256, crc32, xxh3_128, pread)
  startup      interpreter + import time of the CLI (python -X importtime), the floor of any run
  pyspy        py-spy samples of one upload (flame graph SVG + a table by activity)
  memory       tracemalloc peak vs peak RSS of one in-process upload, and the import-time RSS floor
  experiments  variants alternated round by round: malloc env knobs, smaller read pieces,
               force_close, and S3 checksum choices (patched copies of the code in a temp dir;
               nothing in uploader/ or chunker/ is changed)
  grid         part size x concurrency
Writes PROFILE.md (and profile/*.svg, profile/*.txt) into --out-dir."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from bench.measure import MiB, RunFailed, Sample, loadavg, machine, run_once, summarize
from bench.scenarios import Settings, data_file, s3_target, scratch, slug, warm
from bench.tools import BENCH, BENCH_VENV, REPO, VENV, Job, Tool, chunkhaul_s3
from tests.servers.seaweed import SeaweedFS

SECTIONS = ("micro", "startup", "pyspy", "memory", "experiments", "grid")


# -- micro: raw speeds ------------------------------------------------------------------------

def _speed(fn: Callable[[bytes], object], data: bytes, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - t0)
    return len(data) / best / 1e9


def _pread_speed(path: Path, total: int, piece: int) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for off in range(0, total, piece):
            os.pread(fd, piece, off)
        return total / (time.perf_counter() - t0) / 1e9
    finally:
        os.close(fd)


def section_micro(settings: Settings) -> list[str]:
    data = os.urandom(256 * MiB)
    speeds = {
        "md5": _speed(lambda d: hashlib.md5(d, usedforsecurity=False).digest(), data),
        "sha256": _speed(lambda d: hashlib.sha256(d).digest(), data),
        "crc32 (zlib)": _speed(zlib.crc32, data),
        "xxh3_128": _speed(xxhash.xxh3_128_hexdigest, data),
    }
    src = data_file(settings, 1024)
    warm(src)
    for piece in (64 * 1024, 256 * 1024, MiB):
        speeds[f"pread {piece // 1024} KiB pieces (page cache)"] = _pread_speed(src, 1024 * MiB, piece)
    lines = ["| operation | GB/s (best of 3, one core) | CPU s per GiB |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {1.0737 / v:.2f} |" for k, v in speeds.items()]
    return lines


# -- startup ------------------------------------------------------------------------------------

def _median_wall(cmd: list[str], n: int = 5) -> float:
    walls = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.monotonic() - t0)
    return statistics.median(walls)


def _top_imports(n: int = 16) -> list[tuple[str, float]]:
    """The slowest imports (cumulative, nested ones included) of `import uploader.cli`."""
    proc = subprocess.run([str(VENV / "bin" / "python"), "-X", "importtime", "-c", "import uploader.cli"],
                          capture_output=True, text=True, check=True)
    rows: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and m.group(3) not in ("site", "uploader.cli"):
            rows.append(("&nbsp;" * (len(m.group(2)) - 1) + m.group(3), int(m.group(1)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def section_startup(settings: Settings) -> list[str]:
    py = str(VENV / "bin" / "python")
    bare = _median_wall([py, "-c", "pass"])
    cli = _median_wall([py, "-c", "import uploader.cli"])
    help_ = _median_wall([str(VENV / "bin" / "chunkhaul"), "upload", "--help"])
    lines = ["| what | wall s (median of 5) |", "|---|---:|",
             f"| python -c pass | {bare:.3f} |", f"| python -c 'import uploader.cli' | {cli:.3f} |",
             f"| chunkhaul upload --help | {help_:.3f} |", "",
             "Slowest imports under `import uploader.cli`, nested ones indented (-X importtime, cumulative):", "",
             "| module | s |", "|---|---:|"]
    lines += [f"| {name} | {sec:.3f} |" for name, sec in _top_imports()]
    return lines


# -- py-spy -------------------------------------------------------------------------------------

# py-spy's idle detection misses threads parked in these calls: they are waits, not work.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "EpollSelector.select", "Condition.wait",
               "Event.wait", "Thread.join", "SimpleQueue.get")
CATEGORIES: Sequence[tuple[str, Sequence[str]]] = (
    ("startup: imports, TLS context, argument parsing", ("_find_and_load", "load_default_certs",
                                                         "_make_ssl_context", "_compile_bytecode")),
    ("md5 (digest_range h.update)", ("digest_range (chunker/digest.py:79)",)),
    ("xxh3_128 (digest_range xx.update)", ("digest_range (chunker/digest.py:76)",)),
    ("reading for the digest (read_part)", ("read_part (chunker/reader.py",)),
    # os.pread / os.open run by run_in_executor show as the executor's run() frame (line 58).
    ("reading for the body (os.pread in the executor)", ("_WorkItem.run (concurrent/futures/thread.py:58)",
                                                         "_file_body")),
    ("socket writes (asyncio transport.write / _write_ready)", ("_SelectorSocketTransport.write",
                                                                "_SelectorSocketTransport._write_ready")),
    ("thread hand-offs (executor submit, loop wake-ups, futures)", ("ThreadPoolExecutor.submit", "_write_to_self",
                                                                     "_read_from_self",
                                                                     "Condition.__enter__", "call_soon_threadsafe")),
    ("SigV4 signing (botocore)", ("add_auth", "_signed")),
    ("manifest writes (store.save)", ("save (resume/store.py",)),
    ("aiohttp request/response code", ("aiohttp",)),
    ("asyncio event loop bookkeeping", ("asyncio", "selectors")),
)


def _category(stack: str) -> str | None:
    """The activity of one sampled stack (leaf first), or None for a thread that only waits."""
    frames = stack.split(";")
    if any(frames[-1].startswith(idle) for idle in IDLE_LEAVES):
        return None
    for name, needles in CATEGORIES:
        if any(n in frames[-1] for n in needles):
            return name
    for name, needles in CATEGORIES:
        if any(n in stack for n in needles):
            return name
    return "other"


def _pyspy(args: list[str], out: Path, cmd: list[str], env: Mapping[str, str]) -> None:
    spy = str(BENCH_VENV / "bin" / "py-spy")
    full = [spy, "record", "--rate", "250", *args, "-o", str(out), "--", *cmd]
    proc = subprocess.run(full, env=dict(env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunFailed(f"py-spy failed: {proc.stderr[-2000:]}")


def section_pyspy(settings: Settings, size_mib: int, out_dir: Path) -> list[str]:
    src = data_file(settings, size_mib)
    warm(src)
    prof = out_dir / "profile"
    prof.mkdir(parents=True, exist_ok=True)
    svg, raw = prof / f"chunkhaul-{size_mib}MiB.svg", prof / f"chunkhaul-{size_mib}MiB.txt"
    with SeaweedFS(base_dir=settings.work_dir) as server, scratch(settings, "pyspy") as tmp:
        tool = Tool("chunkhaul", chunkhaul_s3())
        for i, (fmt, path) in enumerate((("flamegraph", svg), ("raw", raw))):
            job = Job(src, f"pyspy-{i}", tmp, s3=s3_target(server))
            _pyspy(["--format", fmt], path, tool.command(job), tool.environment(job))
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        category = _category(stack)
        if category is not None:
            counts[category] += int(n)
    total = sum(counts.values()) or 1
    lines = [f"py-spy at 250 Hz, one {size_mib} MiB upload: [flame graph]({svg.relative_to(out_dir)}), "
             f"[collapsed stacks]({raw.relative_to(out_dir)}). Samples of threads parked in a queue or "
             "select() are dropped; the rest counts where threads were (running, or in a GIL-free call "
             "such as md5 or pread), so it is time presence, not exact CPU.", "",
             "| where | share of busy samples |", "|---|---:|"]
    lines += [f"| {k} | {100 * v / total:.0f} % |" for k, v in counts.most_common()]
    return lines


# -- memory -------------------------------------------------------------------------------------

_TRACE_DRIVER = """
import json, resource, sys, tracemalloc
tracemalloc.start()
import uploader
after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
traced_import = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.reset_peak()
src, dest, endpoint, state = sys.argv[1:5]
uploader.upload(src, dest, endpoint_url=endpoint, state_dir=state)
cur, peak = tracemalloc.get_traced_memory()
print(json.dumps({"rss_after_import": after_import, "traced_import": traced_import,
                  "traced_peak_upload": peak / 2**20,
                  "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def section_memory(settings: Settings, size_mib: int) -> list[str]:
    src = data_file(settings, size_mib)
    floor = run_once([str(VENV / "bin" / "python"), "-c", "import uploader.cli, aiohttp, botocore.session"],
                     _clean_env(), 120)
    with SeaweedFS(base_dir=settings.work_dir) as server, scratch(settings, "mem") as tmp:
        env = {**Tool("chunkhaul", chunkhaul_s3()).environment(Job(src, "m", tmp, s3=s3_target(server)))}
        proc = subprocess.run([str(VENV / "bin" / "python"), "-c", _TRACE_DRIVER, str(src),
                               f"s3://{server.bucket}/mem", server.endpoint, str(tmp / "state")],
                              env=env, capture_output=True, text=True, timeout=settings.timeout)
    if proc.returncode != 0:
        raise RunFailed(proc.stderr[-2000:])
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        "| measure | MiB |", "|---|---:|",
        f"| peak RSS of `python -c 'import uploader.cli, aiohttp, botocore.session'` (through GNU time) | "
        f"{floor.rss_mib:.1f} |",
        f"| Python objects alive after `import uploader` (tracemalloc) | {info['traced_import']:.1f} |",
        f"| peak of Python allocations during the {size_mib} MiB upload (tracemalloc, above imports) | "
        f"{info['traced_peak_upload']:.1f} |",
        f"| peak RSS of that in-process upload (tracemalloc adds overhead) | {info['rss_peak']:.1f} |",
    ]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MALLOC_"))}


# -- experiments --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()
    patches: Sequence[tuple[str, str, str]] = ()  # (file, old, new) in a copy of the code


S3 = "uploader/targets/s3.py"
VARIANTS: Sequence[Variant] = (
    Variant("baseline (defaults)"),
    Variant("MALLOC_ARENA_MAX=2", env={"MALLOC_ARENA_MAX": "2"}),
    Variant("MALLOC_MMAP_THRESHOLD_=128KiB", env={"MALLOC_MMAP_THRESHOLD_": "131072"}),
    Variant("READ_PIECE 256 KiB + digest block 256 KiB", patches=(
        ("uploader/transport_async.py", "READ_PIECE = 1024 * 1024", "READ_PIECE = 256 * 1024"),
        ("chunker/digest.py", "block: int = 1024 * 1024", "block: int = 256 * 1024"),
    )),
    Variant("--force-close", args=("--force-close",)),
    # crc32 (x-amz-checksum-crc32) is the default since the S3 --checksum option: measure the others.
    Variant("--checksum md5 (Content-MD5)", args=("--checksum", "md5")),
    Variant("no part checksum (xxh3 only)", args=("--checksum", "md5"), patches=(
        (S3, "self.part_digests: tuple[str, ...] = (checksum,)", "self.part_digests: tuple[str, ...] = ()"),
        (S3, '    return {"Content-MD5": digest.md5_b64}', "    return {}"),
    )),
)


def patched_tree(variant: Variant, root: Path) -> Path | None:
    """A copy of chunker/, resume/, uploader/ with the variant's edits; None if no edits."""
    if not variant.patches:
        return None
    dest = root / re.sub(r"\W+", "-", variant.name).strip("-")
    if dest.exists():
        shutil.rmtree(dest)
    for pkg in ("chunker", "resume", "uploader"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in variant.patches:
        path = dest / rel
        text = path.read_text()
        if old not in text:
            raise RunFailed(f"{variant.name}: {old!r} not found in {rel}; the code moved on")
        path.write_text(text.replace(old, new, 1))
    where = subprocess.run([str(VENV / "bin" / "python"), "-c", "import uploader; print(uploader.__file__)"],
                           env={**_clean_env(), "PYTHONPATH": str(dest)}, cwd="/", capture_output=True, text=True)
    if not where.stdout.startswith(str(dest)):
        raise RunFailed(f"{variant.name}: the patched copy is not the one imported ({where.stdout.strip()})")
    return dest


def _variant_tool(variant: Variant, tree: Path | None) -> Tool:
    env = dict(variant.env)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)

    def build(job: Job) -> list[str]:
        # The console script, not `python -m uploader`: -m puts the cwd (this repo) first on
        # sys.path, ahead of PYTHONPATH, and the patched copy would be ignored.
        assert job.s3 is not None
        return [str(VENV / "bin" / "chunkhaul"), "upload", str(job.src),
                f"s3://{job.s3.bucket}/{job.key}", "--endpoint-url", job.s3.endpoint,
                "--state-dir", str(job.scratch / "state"), "-q", *variant.args]
    return Tool(variant.name, build, env)


def run_variants(settings: Settings, tools: Sequence[Tool], src: Path) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[Sample]] = {t.name: [] for t in tools}
    with SeaweedFS(base_dir=settings.work_dir) as server:
        warm(src)
        for rnd in range(settings.rounds):
            for tool in tools:
                key = f"exp/{slug(tool.name)}-{rnd}"
                with scratch(settings, f"exp-{rnd}") as tmp:
                    job = Job(src, key, tmp, s3=s3_target(server))
                    try:
                        s = run_once(tool.command(job), tool.environment(job), settings.timeout)
                    except RunFailed as exc:
                        print(f"   {tool.name}: FAILED {str(exc)[:400]}")
                        continue
                head = server.head_object(key)
                if not head or head["ContentLength"] != src.stat().st_size:
                    print(f"   {tool.name}: wrong object size {head and head['ContentLength']}")
                    continue
                server.s3.delete_object(Bucket=server.bucket, Key=key)
                samples[tool.name].append(s)
                print(f"   r{rnd} {tool.name:<48} {s.wall:6.2f}s cpu {s.cpu:5.2f}s rss {s.rss_mib:5.1f} MiB "
                      f"load {loadavg()[0]:.2f}")
    return {name: summarize(runs) for name, runs in samples.items() if runs}


def _variant_table(rows: Mapping[str, Mapping[str, Any]], size_mib: int, base: str) -> list[str]:
    b = rows.get(base, {})
    lines = ["| variant | wall s | MiB/s | CPU s | peak RSS MiB | wall ÷ base | CPU ÷ base | ΔRSS MiB | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['wall']:.2f} | {size_mib / r['wall']:.0f} | {r['cpu']:.2f} | {r['rss_mib']:.1f} | "
            f"{r['wall'] / b['wall']:.2f} | {r['cpu'] / b['cpu']:.2f} | {r['rss_mib'] - b['rss_mib']:+.1f} | "
            f"{r['n']} |" if b else f"| {name} | {r['wall']:.2f} | | | | | | | |")
    return lines


def section_experiments(settings: Settings, size_mib: int) -> list[str]:
    src = data_file(settings, size_mib)
    with tempfile.TemporaryDirectory(prefix="chunkhaul-exp-") as root:
        tools = [_variant_tool(v, patched_tree(v, Path(root))) for v in VARIANTS]
        rows = run_variants(settings, tools, src)
    return _variant_table(rows, size_mib, VARIANTS[0].name)


def section_grid(settings: Settings, size_mib: int, parts: Sequence[int], concs: Sequence[int]) -> list[str]:
    src = data_file(settings, size_mib)
    variants = [Variant(f"{p} MiB x {c}", args=("--part-size", f"{p}MiB", "--concurrency", str(c)))
                for p in parts for c in concs]
    rows = run_variants(settings, [_variant_tool(v, None) for v in variants], src)
    return _variant_table(rows, size_mib, "16 MiB x 8")


# -- main -----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--grid-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grid-rounds", type=int, default=2)
    ap.add_argument("--parts", default="8,16,32,64")
    ap.add_argument("--concurrency", default="4,8,16")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/chunkhaul-bench-data"))
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/chunkhaul-bench-work"))
    ap.add_argument("--out-dir", type=Path, default=BENCH)
    args = ap.parse_args(argv)
    for d in (args.data_dir, args.work_dir, args.out_dir):
        d.mkdir(parents=True, exist_ok=True)
    settings = Settings(args.data_dir, args.work_dir, args.rounds)
    grid_settings = Settings(args.data_dir, args.work_dir, args.grid_rounds)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    sections: dict[str, Callable[[], list[str]]] = {
        "micro": lambda: section_micro(settings),
        "startup": lambda: section_startup(settings),
        "pyspy": lambda: section_pyspy(settings, args.size_mib, args.out_dir),
        "memory": lambda: section_memory(settings, args.size_mib),
        "experiments": lambda: section_experiments(settings, args.size_mib),
        "grid": lambda: section_grid(grid_settings, args.grid_mib, ints(args.parts), ints(args.concurrency)),
    }
    m = machine()
    doc = ["# Where chunkhaul's time and memory go", "",
           f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with `python -m bench.profile "
           f"{' '.join(argv if argv is not None else sys.argv[1:])}` on {m['nproc']} CPUs ({m['cpu']}), "
           f"{m['mem_gib']} GiB, shared with other test runs (load average per section below).", ""]
    for name in args.sections.split(","):
        print(f"\n== {name}")
        before = loadavg()
        lines = sections[name]()
        print("\n".join(lines))
        doc += [f"## {name}", "", *lines, "", f"_load average before {before[0]:.2f}, after {loadavg()[0]:.2f}._", ""]
        (args.out_dir / "PROFILE.md").write_text("\n".join(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
