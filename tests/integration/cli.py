"""Run the chunkhaul CLI as a user would: a subprocess with a clean, explicit environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def s3_env(server: Any, home: Path, **extra: str) -> dict[str, str]:
    """Credentials as the AWS CLI reads them; no user config, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKHAUL_"))}
    env.update(
        HOME=str(home),
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_REGION=server.region,
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "uploader", *args]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout.strip().splitlines()[-1]))


def run_cli(*args: str, env: dict[str, str], timeout: float = 600) -> Run:
    proc = subprocess.run(cli_args(*args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def popen_cli(*args: str, env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(cli_args(*args), env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def manifests(state_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(state_dir.glob("*.json"))]
