"""Local servers to try chunkhaul by hand: SeaweedFS (S3) and @tus/server (file store), on
127.0.0.1 with free ports, until Ctrl-C. Run with `make servers`; it prints what to paste.
(The same servers the tests and the demo use; their data lives in temp dirs, gone at exit.)"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.seaweed import SeaweedFS  # noqa: E402
from tests.servers.tus_servers import TusNodeServer  # noqa: E402


def main() -> None:
    # `kill` (SIGTERM) stops the servers too, not only Ctrl-C: without this the weed and
    # node children would outlive us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SeaweedFS() as s3, TusNodeServer("file") as tus:
        print(f"""S3 (SeaweedFS), bucket {s3.bucket}:
  export AWS_ACCESS_KEY_ID={s3.access_key} AWS_SECRET_ACCESS_KEY={s3.secret_key}
  {REPO}/.venv/bin/chunkhaul upload FILE s3://{s3.bucket}/KEY --endpoint-url {s3.endpoint}
tus (@tus/server, files stored in {tus.directory}):
  {REPO}/.venv/bin/chunkhaul upload FILE tus+{tus.url}
plain HTTP (the SeaweedFS filer: a PUT stores the body at the path, GET reads it back):
  {REPO}/.venv/bin/chunkhaul upload FILE http://127.0.0.1:{s3.ports["filer.port"]}/uploads/NAME
Ctrl-C (or kill) stops them all.""", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
