"""Chaos suite: N uploads of random-size files through the fault proxy, every connection drawn
a random fault; each object downloaded and compared; failures resumed with the faults off.

    python -m tests.chaos.chaos --uploads 200 --seed 1 [--max-size 200MiB] [--out figures.json]

Link faults (reset at a random byte, TLS record corruption, stall, bandwidth cap) run against
the TLS SeaweedFS through the raw proxy, so the TLS stack itself rejects corrupted records.
HTTP faults (500, 503, 429 with Retry-After in seconds or as an HTTP-date, an UploadPart
answered 200 but dropped, CompleteMultipartUpload answered 200 with an <Error> body) run
against the plain-HTTP SeaweedFS through the proxy in HTTP mode, with resets, stalls and caps.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.chaos.harness import (
    MiB,
    abort_others,
    delete_object,
    human,
    machine,
    object_md5,
    run_bounded,
    seaweed_servers,
    table,
)
from tests.conftest import md5_file, write_random_file
from tests.integration.cli import manifests, s3_env
from tests.servers.fault_proxy import (
    Corrupt,
    Direction,
    FaultProxy,
    HttpDrop,
    HttpExchange,
    HttpRespond,
    Reset,
    Rule,
    Stall,
    Throttle,
)
from tests.servers.seaweed import SeaweedFS

PART = 5 * MiB
MAX_SIZE = 200 * MiB
LINK_KINDS = ("reset", "corrupt", "stall", "throttle")
HTTP_KINDS = ("reset", "stall", "throttle", "http500", "http503", "http429_seconds", "http429_date",
              "drop", "complete_error", "complete_reply_lost")
ALL_KINDS = tuple(dict.fromkeys(LINK_KINDS + HTTP_KINDS))
S3_ERROR = "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"


# -- one upload's plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    index: int
    size: int
    mode: str  # "tls" (raw proxy before HTTPS SeaweedFS) or "http" (HTTP-mode proxy)
    kinds: tuple[str, ...]
    concurrency: int
    seed: int


def pick_size(rng: random.Random, max_size: int) -> int:
    """Sizes at part boundaries (k × 5 MiB ± 1), tiny ones, and log-uniform up to max_size."""
    draw = rng.random()
    if draw < 0.35:
        k = int(math.exp(rng.uniform(0, math.log(max(2, max_size // PART)))))
        return max(0, min(max_size, k * PART + rng.choice((-1, 0, 1))))
    if draw < 0.45:
        return rng.choice((0, 1, rng.randint(2, PART - 2)))
    if draw < 0.50:
        return rng.randint(max_size * 3 // 4, max_size)
    return min(max_size, int(math.exp(rng.uniform(math.log(1024), math.log(max_size)))))


def plan_case(rng: random.Random, index: int, max_size: int) -> Case:
    """Upload `index`: the first len(ALL_KINDS) uploads each include one kind for certain, so
    even a short run injects every kind; the rest draw 1-3 kinds at random."""
    forced = ALL_KINDS[index] if index < len(ALL_KINDS) else None
    mode = rng.choice(("tls", "http"))
    if forced is not None and forced not in HTTP_KINDS:
        mode = "tls"
    elif forced is not None and forced not in LINK_KINDS:
        mode = "http"
    pool = LINK_KINDS if mode == "tls" else HTTP_KINDS
    kinds = set(rng.sample(pool, rng.randint(1, 3)))
    if forced:
        kinds.add(forced)
    if {"http429_seconds", "http429_date"} <= kinds:  # one 429 form per upload: counts stay exact
        kinds.discard(rng.choice(("http429_seconds", "http429_date")))
    if {"complete_error", "complete_reply_lost"} <= kinds:
        kinds.discard(rng.choice(("complete_error", "complete_reply_lost")))
    return Case(index, pick_size(rng, max_size), mode, tuple(sorted(kinds)), rng.choice((1, 2, 4, 8)),
                rng.randrange(1 << 30))


# -- rules ------------------------------------------------------------------------------------


def _direction(rng: random.Random) -> Direction:
    return Direction.UP if rng.random() < 0.75 else Direction.DOWN


def _offset(rng: random.Random, direction: Direction) -> int:
    # Upstream anywhere in the first few parts a (kept-alive) connection carries; downstream
    # inside a reply or the next one (replies are small).
    return rng.randint(0, 24 * MiB) if direction is Direction.UP else rng.randint(0, 1500)


def link_rules(rng: random.Random, kind: str, tls: bool) -> list[Rule]:
    """Most connections of an upload get a fault of the chosen kinds (rules are drawn per connection)."""
    rules: list[Rule] = []
    if kind == "reset":
        for _ in range(3):
            d = _direction(rng)
            rules.append(Reset(after_bytes=_offset(rng, d), direction=d, probability=0.2))
    elif kind == "corrupt":
        for _ in range(2):
            d = _direction(rng)
            rules.append(Corrupt(after_bytes=_offset(rng, d), direction=d, tls=tls, probability=0.25))
    elif kind == "stall":
        d = _direction(rng)
        rules.append(Stall(after_bytes=_offset(rng, d), direction=d, discard=rng.random() < 0.5,
                           probability=0.2))
    elif kind == "throttle":
        rules.append(Throttle(bytes_per_sec=rng.uniform(6, 24) * MiB, latency_ms=rng.uniform(0, 40),
                              direction=Direction.BOTH, probability=0.5))
    return rules


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def http_rules(rng: random.Random, kind: str) -> list[Rule]:
    any_request = rng.choice((None, "partNumber=", "uploadId="))
    if kind == "http500":
        return [HttpRespond(status=500, body=S3_ERROR, query=any_request, probability=0.1)]
    if kind == "http503":
        return [HttpRespond(status=503, retry_after=1, query=any_request, probability=0.1)]
    if kind == "http429_seconds":
        return [HttpRespond(status=429, retry_after=rng.choice((1, 2)), query=any_request, probability=0.08)]
    if kind == "http429_date":
        # An HTTP-date is fixed when the rule is installed: 2-3 s ahead, then (later in a long
        # upload) in the past, which a client must read as "retry now".
        return [HttpRespond(status=429, retry_after=_http_date(rng.uniform(2, 3)), query=any_request,
                            probability=0.08)]
    if kind == "drop":
        return [HttpDrop(method="PUT", query="partNumber=", probability=0.1)]
    if kind == "complete_error":  # S3's "200 with an <Error> body": the Complete did not happen
        return [HttpRespond(status=200, body=S3_ERROR, method="POST", query="uploadId=", probability=0.6)]
    if kind == "complete_reply_lost":  # the Complete happened; the client sees an error instead
        return [HttpRespond(status=200, body=S3_ERROR, method="POST", query="uploadId=", probability=0.6,
                            forward=True)]
    return link_rules(rng, kind, tls=False)


def rules_for(case: Case) -> list[Rule]:
    rng = random.Random(case.seed)
    rules: list[Rule] = []
    for kind in case.kinds:
        rules += link_rules(rng, kind, tls=True) if case.mode == "tls" else http_rules(rng, kind)
    return rules


# -- counting what was injected -------------------------------------------------------------


def injected(case: Case, proxy: FaultProxy) -> Counter[str]:
    stats = proxy.stats()
    counts: Counter[str] = Counter(e.kind for e in stats.fault_log if e.kind in LINK_KINDS)
    for exchange in stats.requests:
        kind = _http_kind(case, exchange)
        if kind:
            counts[kind] += 1
    return counts


def _http_kind(case: Case, exchange: HttpExchange) -> str | None:
    if exchange.action == "drop":
        return "drop"
    if exchange.action != "respond":
        return None
    if exchange.status == 429:
        return "http429_date" if "http429_date" in case.kinds else "http429_seconds"
    if exchange.status == 200:
        return "complete_reply_lost" if exchange.upstream_status is not None else "complete_error"
    return f"http{exchange.status}"


# -- one upload -----------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    size: int
    mode: str
    kinds: tuple[str, ...]
    first_code: int
    result: str  # first-time | resume | corrupted | lost
    first_error: str = ""
    manifest_after_failure: bool | None = None
    resumed_flag: bool | None = None
    fallback_used: bool = False
    orphans: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Rig:
    """The two servers and a work directory; each upload gets a fresh proxy seeded by its case
    (the proxy's per-rule RNGs restart with every rule set, so a shared proxy would draw the
    same faults for the first connections of every upload)."""

    plain: SeaweedFS
    secure: SeaweedFS
    work: Path

    def server(self, case: Case) -> SeaweedFS:
        return self.secure if case.mode == "tls" else self.plain

    def proxy(self, case: Case) -> FaultProxy:
        return FaultProxy("127.0.0.1", self.server(case).s3_port, rules_for(case),
                          http=case.mode == "http", seed=case.seed)


def _args(rig: Rig, case: Case, src: Path, key: str, state: Path, endpoint: str) -> list[str]:
    server = rig.server(case)
    args = ["upload", str(src), f"s3://{server.bucket}/{key}", "--endpoint-url", endpoint,
            "--state-dir", str(state), "--part-size", "5MiB", "--concurrency", str(case.concurrency),
            "--stall-timeout", "2", "--connect-timeout", "5", "--sync-delay", "0.2", "--json"]
    if server.ca_file:
        args += ["--ca-bundle", str(server.ca_file)]
    return args


def _check_run(run: Any, outcome: Outcome, label: str) -> None:
    if run.hung:
        outcome.anomalies.append(f"{label}: hung, killed after {run.seconds:.0f}s")
    if "Traceback" in run.stderr:
        outcome.anomalies.append(f"{label}: traceback on stderr")
    if run.code not in (0, 1):
        outcome.anomalies.append(f"{label}: exit {run.code}, expected 0 or 1")
    errors = [line for line in run.stderr.splitlines() if line.startswith("chunkhaul: error:")]
    if len(errors) != (1 if run.code else 0):
        outcome.anomalies.append(f"{label}: exit {run.code} with {len(errors)} 'chunkhaul: error:' lines")


def run_case(rig: Rig, case: Case) -> Outcome:
    server = rig.server(case)
    src = write_random_file(rig.work / f"u{case.index}.bin", case.size, seed=case.seed)
    want = md5_file(src)
    key, state = server.unique_key(f"chaos{case.index}"), rig.work / f"state{case.index}"
    env = s3_env(server, rig.work)
    started = time.monotonic()
    with rig.proxy(case) as proxy:
        first = run_bounded(_args(rig, case, src, key, state, proxy.url(_scheme(case))), env)
        outcome = Outcome(case.index, case.size, case.mode, case.kinds, first.code, "lost",
                          first_error=_error_line(first.stderr), faults=dict(injected(case, proxy)))
        proxy.set_rules([])  # the next run goes through the same proxy, faults off
        _check_run(first, outcome, "first run")
        final = first
        if first.code != 0:
            outcome.manifest_after_failure = bool(manifests(state))
            final = run_bounded(_args(rig, case, src, key, state, proxy.url(_scheme(case))), env)
            _check_run(final, outcome, "resume")
            if final.code == 0 and outcome.manifest_after_failure:
                outcome.resumed_flag = bool(final.summary.get("resumed"))
    outcome.seconds = round(time.monotonic() - started, 2)
    _verify(server, key, want, final, outcome, state)
    src.unlink()
    shutil.rmtree(state, ignore_errors=True)
    return outcome


def _error_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if line.startswith("chunkhaul: error:")), "")


def _scheme(case: Case) -> str:
    return "https" if case.mode == "tls" else "http"


def _verify(server: SeaweedFS, key: str, want: str, final: Any, outcome: Outcome, state: Path) -> None:
    got = object_md5(server, key)
    if final.code == 0:
        summary = final.summary
        outcome.fallback_used = bool(summary.get("fallback_used"))
        outcome.orphans = abort_others(server, key)
        if manifests(state):
            outcome.anomalies.append("manifest left after success")
        if got == want:
            outcome.result = "first-time" if outcome.first_code == 0 else "resume"
        else:
            outcome.result = "corrupted" if got is not None else "lost"
    else:
        outcome.result = "corrupted" if got is not None and got != want else "lost"
        outcome.anomalies.append(f"resume failed (exit {final.code}): {final.stderr.strip()[-300:]}")
    delete_object(server, key)


# -- the run --------------------------------------------------------------------------------


@dataclass
class Figures:
    seed: int
    uploads: int
    max_size: int
    bytes_total: int = 0
    wall_seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    failed_first: int = 0
    failed_with_manifest: int = 0
    resumed_flag_true: int = 0
    fallback_used: int = 0
    orphans: int = 0
    by_mode: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.bytes_total += outcome.size
        self.faults.update(outcome.faults)
        self.results[outcome.result] += 1
        self.by_mode[outcome.mode] += 1
        self.failed_first += outcome.first_code != 0
        self.failed_with_manifest += bool(outcome.manifest_after_failure)
        self.resumed_flag_true += bool(outcome.resumed_flag)
        self.fallback_used += outcome.fallback_used
        self.orphans += outcome.orphans
        self.anomalies += [f"upload {outcome.index} ({outcome.size} B, {outcome.mode}, "
                           f"{'+'.join(outcome.kinds)}): {a}" for a in outcome.anomalies]

    @property
    def corrupted(self) -> int:
        return self.results["corrupted"]

    @property
    def lost(self) -> int:
        return self.results["lost"]

    def render(self) -> str:
        rows: list[tuple[str, object]] = [
            ("seed", self.seed),
            ("uploads (TLS proxy / HTTP proxy)", f"{self.uploads} ({self.by_mode['tls']} / {self.by_mode['http']})"),
            ("bytes uploaded (file sizes 0 B .. max)", f"{human(self.bytes_total)} (max {human(self.max_size)})"),
            ("faults injected (total)", sum(self.faults.values())),
            *[(f"  {kind}", self.faults[kind]) for kind in ALL_KINDS],
            ("completed first time", self.results["first-time"]),
            ("  of which via the sync fallback", self.fallback_used - self._resumed_with_fallback()),
            ("first run failed (exit 1)", self.failed_first),
            ("  with a manifest left for the next run", self.failed_with_manifest),
            ("  without one (below part size / before create)", self.failed_first - self.failed_with_manifest),
            ("completed on resume (faults off)", self.results["resume"]),
            ("  resume reported resumed=true", self.resumed_flag_true),
            ("corrupted (must be 0)", self.corrupted),
            ("lost (must be 0)", self.lost),
            ("orphaned multipart uploads found (aborted)", self.orphans),
            ("anomalies (tracebacks, wrong exit codes, ...)", len(self.anomalies)),
            ("wall time", f"{self.wall_seconds:.0f} s"),
            ("machine", machine()),
        ]
        lines = [f"chunkhaul chaos suite: python -m tests.chaos.chaos --uploads {self.uploads} --seed {self.seed}",
                 table(rows)]
        lines += [f"  ! {a}" for a in self.anomalies]
        return "\n".join(lines)

    def _resumed_with_fallback(self) -> int:
        return sum(1 for o in self.outcomes if o.fallback_used and o.result == "resume")

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "uploads": self.uploads, "max_size": self.max_size, "bytes_total": self.bytes_total,
            "wall_seconds": round(self.wall_seconds, 1), "faults": dict(self.faults), "results": dict(self.results),
            "failed_first": self.failed_first, "failed_with_manifest": self.failed_with_manifest,
            "fallback_used": self.fallback_used, "orphans": self.orphans, "anomalies": self.anomalies,
            "outcomes": [asdict(o) for o in self.outcomes], "machine": machine(),
        }


def run_chaos(plain: SeaweedFS, secure: SeaweedFS, uploads: int, seed: int, work: Path,
              max_size: int = MAX_SIZE, progress: bool = False) -> Figures:
    rng = random.Random(seed)
    figures = Figures(seed, uploads, max_size)
    started = time.monotonic()
    rig = Rig(plain, secure, work)
    for index in range(uploads):
        outcome = run_case(rig, plan_case(rng, index, max_size))
        figures.add(outcome)
        if progress:
            print(_progress_line(outcome), file=sys.stderr, flush=True)
    figures.wall_seconds = time.monotonic() - started
    return figures


def _progress_line(o: Outcome) -> str:
    faults = ",".join(f"{k}={v}" for k, v in sorted(o.faults.items()))
    return (f"[{o.index:3d}] {o.size:>10d} B {o.mode:4s} {'+'.join(o.kinds):40s} exit={o.first_code} "
            f"-> {o.result:10s} {o.seconds:6.1f}s {faults}" + (f"  [{o.first_error}]" if o.first_error else "")
            + (f"  ANOMALY {o.anomalies}" if o.anomalies else ""))


def main(argv: list[str] | None = None) -> int:
    from chunker import parse_size

    parser = argparse.ArgumentParser(prog="python -m tests.chaos.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--max-size", default="200MiB")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"chaos: seed {seed}, {args.uploads} uploads", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="chunkhaul-chaos-") as work, seaweed_servers(tls=True) as (plain, secure):
        assert secure is not None
        figures = run_chaos(plain, secure, args.uploads, seed, Path(work), parse_size(args.max_size), progress=True)
    print(figures.render())
    if args.out:
        Path(args.out).write_text(json.dumps(figures.to_json(), indent=1))
    return 0 if figures.corrupted == 0 and figures.lost == 0 and not figures.anomalies else 1


if __name__ == "__main__":
    sys.exit(main())
