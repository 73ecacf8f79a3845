"""Pick the default part size and concurrency: a grid against SeaweedFS on loopback.

    .venv/bin/python -m bench.defaults [--size-mib 1024] [--rounds 3]

Prints a markdown table of median wall seconds, CPU seconds and peak RSS per setting,
alternating the settings round by round so machine noise spreads evenly."""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.measure import run_once  # noqa: E402  (through GNU time: a child forked from here inherits our peak RSS)
from tests.conftest import write_random_file  # noqa: E402
from tests.servers.seaweed import SeaweedFS  # noqa: E402

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="8,16,32,64")
    ap.add_argument("--concurrency", default="4,8,16")
    args = ap.parse_args()
    grid = list(itertools.product([int(x) for x in args.parts.split(",")],
                                  [int(x) for x in args.concurrency.split(",")]))
    results: dict[tuple[int, int], list[tuple[float, float, float]]] = {g: [] for g in grid}  # wall, cpu, rss
    with tempfile.TemporaryDirectory() as tmp, SeaweedFS() as s3:
        src = write_random_file(Path(tmp) / "bench.bin", args.size_mib * MiB)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_EC2_METADATA_DISABLED": "true"}
        for rnd in range(args.rounds):
            for part, conc in grid:
                cmd = [sys.executable, "-m", "uploader", "upload", str(src), f"s3://{s3.bucket}/b{rnd}-{part}-{conc}",
                       "--endpoint-url", s3.endpoint, "--state-dir", f"{tmp}/state", "-q",
                       "--part-size", f"{part}MiB", "--concurrency", str(conc)]
                s = run_once(cmd, env)
                results[(part, conc)].append((s.wall, s.cpu, s.rss_mib))
    print(f"\n{args.size_mib} MiB to SeaweedFS, medians of {args.rounds} rounds\n")
    print("| part size | concurrency | wall s | MiB/s | CPU s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for (part, conc), runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = statistics.median(r[2] for r in runs)
        print(f"| {part} MiB | {conc} | {wall:.2f} | {args.size_mib / wall:.0f} | {cpu:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
