"""The demo: a local S3 server, a 600 MiB file, an upload killed at ~40 %, the resume, a check.

Run with `make demo` (sets everything up first). Nothing leaves 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import md5_file, write_random_file  # noqa: E402
from tests.servers.seaweed import SeaweedFS  # noqa: E402

MiB = 1 << 20
SIZE = int(os.environ.get("DEMO_SIZE_MIB", "600")) * MiB
PART = 16 * MiB


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="chunkhaul-demo-") as tmp, SeaweedFS() as s3:
        work = Path(tmp)
        src, state = work / "big.iso", work / "state"
        key = "demo/big.iso"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_REGION": s3.region, "AWS_EC2_METADATA_DISABLED": "true"}
        cmd = [sys.executable, "-m", "uploader", "upload", str(src), f"s3://{s3.bucket}/{key}",
               "--endpoint-url", s3.endpoint, "--state-dir", str(state), "--part-size", "16MiB"]
        say(f"SeaweedFS S3 is up at {s3.endpoint} (bucket {s3.bucket})")
        say(f"Writing a random {SIZE // MiB} MiB file")
        write_random_file(src, SIZE)
        say("Uploading; the demo will kill -9 the upload at about 40 %")
        proc = subprocess.Popen([*cmd, "-q"], env=env)
        killed_at = wait_and_kill(proc, s3, state, key, int(SIZE / PART * 0.4))
        say(f"Killed with SIGKILL; the server holds {killed_at / MiB:.0f} MiB "
            f"({100 * killed_at / SIZE:.0f} %). Running the same command again:")
        print("   $ " + " ".join(["chunkhaul", *cmd[3:]]), flush=True)
        resumed = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=False)
        print(resumed.stderr, end="", flush=True)
        if resumed.returncode != 0:
            print(f"resume failed with exit code {resumed.returncode}")
            return 1
        summary = json.loads(resumed.stdout.strip().splitlines()[-1])
        say("Verifying byte for byte (md5 of the file vs the object downloaded back)")
        local, remote = md5_file(src), s3.get_object_bytes_md5(key)
        same = local == remote.md5 and remote.size == SIZE
        print(f"   local  {local}\n   remote {remote.md5}  ({remote.size} bytes)")
        say("Summary")
        print(f"   resumed: {summary['resumed']}, already on the server: {summary['bytes_resumed'] / MiB:.0f} MiB, "
              f"sent on resume: {summary['bytes_sent'] / MiB:.0f} MiB of {SIZE // MiB} MiB")
        print(f"   resume took {summary['seconds']:.1f}s ({summary['mib_per_s']:.0f} MiB/s), "
              f"verified: {'IDENTICAL' if same else 'DIFFERENT'}")
        return 0 if same else 1


def wait_and_kill(proc: subprocess.Popen[bytes], s3: SeaweedFS, state: Path, key: str, parts: int) -> int:
    upload_id = None
    while proc.poll() is None:
        if upload_id is None:
            for manifest in state.glob("*.json"):
                upload_id = json.loads(manifest.read_text())["session"].get("upload_id")
        if upload_id and len(s3.list_parts(key, upload_id)) >= parts:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return sum({p["PartNumber"]: p["Size"] for p in s3.list_parts(key, upload_id)}.values())
        time.sleep(0.05)
    raise SystemExit("the upload finished before the demo could interrupt it")


if __name__ == "__main__":
    sys.exit(main())
