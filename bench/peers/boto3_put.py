"""boto3 upload_file with its default TransferConfig (run in .venv-bench, not chunkhaul's venv).

    python boto3_put.py FILE BUCKET KEY      # endpoint and credentials from AWS_* env vars

Only the addressing style is set (path-style: the local server has no wildcard DNS)."""

from __future__ import annotations

import os
import sys

import boto3
from botocore.config import Config


def main(argv: list[str]) -> None:
    path, bucket, key = argv
    client = boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        config=Config(s3={"addressing_style": "path"}),
    )
    client.upload_file(path, bucket, key)


if __name__ == "__main__":
    main(sys.argv[1:])
