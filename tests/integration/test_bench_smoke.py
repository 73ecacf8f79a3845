"""Keeps `make bench` working: one round of the S3 scenario on a small file, chunkhaul and
curl only (no peers venv needed). Asserts the report's shape, never absolute times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.run", "--scenarios", "s3", "--tools", "chunkhaul,curl",
           "--rounds", "1", "--s3-mib", "40", "--no-chart", "--out-dir", str(out),
           "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    (s3,) = results["scenarios"]
    assert set(s3["rows"]) == {"chunkhaul", "curl PUT"}
    for row in s3["rows"].values():
        assert "failed" not in row, row
        assert row["n"] == 1
        assert row["wall"] > 0 and row["cpu"] >= 0 and row["rss_mib"] > 0

    report = (out / "RESULTS.md").read_text()
    assert "| chunkhaul | " in report and "| curl PUT | " in report
    assert "wall ≤ 1.1 × curl single PUT" in report
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir()), "scratch left behind"
