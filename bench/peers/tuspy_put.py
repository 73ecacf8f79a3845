"""tuspy (tusclient) upload of one file to a tus creation URL (run in .venv-bench).

    python tuspy_put.py FILE URL [--chunk-mib N]     # N = 0: tuspy's default chunk size"""

from __future__ import annotations

import argparse
import os
import sys

from tusclient import client


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("url")
    ap.add_argument("--chunk-mib", type=int, default=0)
    args = ap.parse_args(argv)
    kwargs = {"chunk_size": args.chunk_mib << 20} if args.chunk_mib else {}
    # A filename, as tus-js-client sends: tuspy sends an empty Upload-Metadata header otherwise,
    # which @tus/server refuses (400 Invalid upload-metadata).
    metadata = {"filename": os.path.basename(args.file)}
    uploader = client.TusClient(args.url).uploader(args.file, metadata=metadata, **kwargs)
    uploader.upload()
    if uploader.offset != uploader.get_file_size():
        raise SystemExit(f"tuspy stopped at {uploader.offset} of {uploader.get_file_size()} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
