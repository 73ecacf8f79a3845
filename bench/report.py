"""Render the results (JSON from bench.run) as markdown: tables of medians, ratios to chunkhaul,
and the issue's goals with the measured ratio, met or not."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CH = "chunkhaul"
Row = Mapping[str, Any]


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _rate(size_mib: int, row: Row) -> float | None:
    wall = row.get("wall")
    return size_mib / wall if wall else None


def tool_table(scenario: Mapping[str, Any]) -> list[str]:
    """| tool | wall | MiB/s | CPU | RSS | ratios to chunkhaul | for an S3 or tus scenario."""
    rows: Mapping[str, Row] = scenario["rows"]
    base = rows.get(CH, {})
    lines = [
        "| tool | wall s | MiB/s | CPU s | peak RSS MiB | wall ÷ chunkhaul | CPU ÷ chunkhaul | RSS ÷ chunkhaul "
        "| runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        if "wall" not in row:
            lines.append(f"| {name} | failed: {row.get('failed', '?')} |||||||")
            continue
        lines.append(
            f"| {name} | {_f(row['wall'])} | {_f(_rate(scenario['size_mib'], row), 0)} | {_f(row['cpu'])} | "
            f"{_f(row['rss_mib'], 0)} | {_f(_ratio(row['wall'], base.get('wall')))} | "
            f"{_f(_ratio(row['cpu'], base.get('cpu')))} | {_f(_ratio(row['rss_mib'], base.get('rss_mib')))} | "
            f"{row['n']} |"
        )
    return lines


def memory_table(scenario: Mapping[str, Any]) -> list[str]:
    lines = ["| file | wall s | MiB/s | CPU s | peak RSS MiB (median) | peak RSS MiB (max) | runs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in scenario["rows"].items():
        if "wall" not in row:
            lines.append(f"| {name} | failed: {row.get('failed', '?')} ||||||")
            continue
        size = int(name.split()[1])
        lines.append(f"| {size} MiB | {_f(row['wall'])} | {_f(size / row['wall'], 0)} | {_f(row['cpu'])} | "
                     f"{_f(row['rss_mib'], 1)} | {_f(row['rss_max_mib'], 1)} | {row['n']} |")
    return lines


def resume_table(scenario: Mapping[str, Any]) -> list[str]:
    row = scenario["rows"].get(CH)
    if not row or "wall" not in row:
        return [f"not measured: {row.get('failed') if row else 'skipped'}"]
    walls = [s["wall"] for s in row["samples"]]
    return [
        "| first UploadPart byte after process start, s (median) | min | max | parts done / planned "
        "(manifest at kill) | first log line, s | 'Resuming' log line, s | runs |",
        "|---:|---:|---:|---|---:|---:|---:|",
        f"| {_f(row['wall'], 3)} | {_f(min(walls), 3)} | {_f(max(walls), 3)} | "
        f"{_f(row.get('parts_done'), 0)} / {_f(row.get('parts'), 0)} | {_f(row.get('log_first'), 3)} | "
        f"{_f(row.get('log_resuming'), 3)} | {row['n']} |",
    ]


# -- goals -----------------------------------------------------------------------------------

def _goal(goal: str, measured: float | None, limit: float, higher_is_better: bool, unit: str = "") -> list[str]:
    if measured is None:
        return [goal, "not measured", "–", "–"]
    met = measured >= limit if higher_is_better else measured <= limit
    margin = (measured / limit - 1) * 100 if limit else 0.0
    sign = "+" if margin >= 0 else ""
    return [goal, f"{measured:.3g}{unit}", "**met**" if met else "**not met**", f"{sign}{margin:.0f} % vs {limit:g}"]


def _wall(rows: Mapping[str, Row], name: str) -> float | None:
    value = rows.get(name, {}).get("wall")
    return float(value) if value else None


def _s3_goals(sc: Mapping[str, Any]) -> list[list[str]]:
    rows = sc["rows"]
    peers = {n: _wall(rows, n) for n in ("boto3", "aws-cli", "s5cmd", "rclone")}
    present = {n: w for n, w in peers.items() if w}
    fastest = min(present, key=lambda n: present[n]) if present else None
    ch, cpu = _wall(rows, CH), rows.get(CH, {}).get("cpu")
    boto_cpu = rows.get("boto3", {}).get("cpu")
    size = f"{sc['size_mib']} MiB:"
    return [
        _goal(f"{size} wall ≤ 0.9 × fastest peer ({fastest})", _ratio(ch, present.get(fastest or "")), 0.9,
              False, " ×"),
        _goal(f"{size} wall ≤ 1.1 × curl single PUT", _ratio(ch, _wall(rows, "curl PUT")), 1.1, False, " ×"),
        _goal(f"{size} client CPU-s ≤ 0.8 × boto3's", _ratio(cpu, boto_cpu), 0.8, False, " ×"),
    ]


def _memory_goals(sc: Mapping[str, Any]) -> list[list[str]]:
    rows = [r for r in sc["rows"].values() if "rss_mib" in r]
    if not rows:
        return []
    peak = max(r["rss_max_mib"] for r in rows)
    spread = max(r["rss_mib"] for r in rows) - min(r["rss_mib"] for r in rows)
    return [
        _goal("peak RSS ≤ 64 MiB (max of all runs)", peak, 64, False, " MiB"),
        _goal("RSS within ±5 MiB across sizes (max − min of medians ≤ 10)", spread, 10, False, " MiB"),
    ]


def _capped_goals(sc: Mapping[str, Any], concurrency: int) -> list[list[str]]:
    rows = sc["rows"]
    cap = float(next((n.split("=")[1] for n in sc["notes"] if n.startswith("cap_mib_s=")), "nan"))
    ch = _wall(rows, CH)
    rate = sc["size_mib"] / ch if ch else None
    peers = [w for n, r in rows.items() if n != CH and (w := r.get("wall"))]
    best_peer = min(peers) if peers else None
    target = 0.8 * concurrency * cap
    return [
        _goal(f"throughput ≥ 0.8 × {concurrency} × {cap:g} MiB/s", rate, target, True, " MiB/s"),
        _goal("ahead of every peer (chunkhaul wall ÷ best peer wall < 1)", _ratio(ch, best_peer), 1.0, False, " ×"),
    ]


def _tus_goals(sc: Mapping[str, Any]) -> list[list[str]]:
    rows = sc["rows"]
    tuspy = [w for n, r in rows.items() if n.startswith("tuspy") and (w := r.get("wall"))]
    ch = _wall(rows, CH)
    best = min(tuspy) if tuspy else None
    # The ceiling: a zero-overhead client (curl, one PATCH) against the same server. If it is
    # below 1.2 x tuspy's best too, no tus client can meet the goal on this server.
    return [_goal("tus throughput ≥ 1.2 × tuspy's best", _ratio(best, ch), 1.2, True, " ×"),
            _goal("(ceiling) curl single PATCH ≥ 1.2 × tuspy's best", _ratio(best, _wall(rows, "curl PATCH")),
                  1.2, True, " ×")]


def _resume_goals(sc: Mapping[str, Any]) -> list[list[str]]:
    return [_goal(f"resume to first byte ≤ 0.5 s ({sc['size_mib']} MiB)", _wall(sc["rows"], CH), 0.5, False, " s")]


def goals(results: Mapping[str, Any]) -> list[str]:
    by_name = {sc["name"]: sc for sc in results["scenarios"]}
    table: list[list[str]] = []
    if "s3" in by_name:
        table += _s3_goals(by_name["s3"])
    if "memory" in by_name:
        table += _memory_goals(by_name["memory"])
    if "capped" in by_name:
        table += _capped_goals(by_name["capped"], int(results.get("chunkhaul_concurrency", 8)))
    if "tus" in by_name and not by_name["tus"].get("skipped"):
        table += _tus_goals(by_name["tus"])
    if "resume" in by_name:
        table += _resume_goals(by_name["resume"])
    lines = ["| goal | measured | | margin |", "|---|---:|---|---|"]
    return lines + ["| " + " | ".join(row) + " |" for row in table]


# -- the document ----------------------------------------------------------------------------

def _load(sc: Mapping[str, Any]) -> str:
    b, a = sc["load"].get("before"), sc["load"].get("after")
    if not b or not a:
        return ""
    return f"load average (1/5/15 min) before {b[0]:.2f}/{b[1]:.2f}/{b[2]:.2f}, after {a[0]:.2f}/{a[1]:.2f}/{a[2]:.2f}"


def scenario_section(sc: Mapping[str, Any]) -> list[str]:
    lines = [f"### {sc['title']}", ""]
    if sc.get("skipped"):
        return [*lines, f"skipped: {sc['skipped']}", ""]
    if sc["name"] == "memory":
        lines += memory_table(sc)
    elif sc["name"] == "resume":
        lines += resume_table(sc)
    else:
        lines += tool_table(sc)
    notes = [n for n in sc["notes"] if not n.startswith("cap_mib_s=")]
    lines += ["", f"_{_load(sc)}; {sc['seconds']:.0f} s._", *(f"- {n}" for n in notes), ""]
    return lines


def render(results: Mapping[str, Any], chart: str | None) -> str:
    m = results["machine"]
    head = [
        "# chunkhaul benchmarks",
        "",
        f"Measured {results['date']} with `{results['command']}` "
        f"({results['rounds']} round(s), tools alternating in a rotated order A B C, B C A, …, each run "
        f"after `sync` and a 1 s pause; medians).",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['curl'].split(' (')[0]}, node {m['node']}. Everything on 127.0.0.1; "
        f"the machine was shared with other test runs: load average {results['load_start'][0]:.2f} at the "
        f"start, {results['load_end'][0]:.2f} at the end (per-scenario load below).",
        "",
        f"Wall = process start to exit; CPU = user + sys of the client process; peak RSS = the client's "
        f"max resident set ({results['rss_note']}). Ratios are tool ÷ chunkhaul from the same run "
        "(> 1: chunkhaul is faster / cheaper).",
        "",
    ]
    if chart:
        head += [f"![results chart]({chart})", ""]
    head += ["How to run, what each scenario does, and the analysis of these numbers (profile, experiments, "
             "recommendations): [README.md](README.md); the profile itself: [PROFILE.md](PROFILE.md).", ""]
    body = ["## Goals (issue 7)", "", *goals(results), "", "## Scenarios", ""]
    for sc in results["scenarios"]:
        body += scenario_section(sc)
    body += ["## Versions", "", *(f"- {k}: {v}" for k, v in results.get("versions", {}).items()), ""]
    return "\n".join(head + body)
