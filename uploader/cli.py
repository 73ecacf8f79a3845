"""`chunkhaul upload FILE DEST`: run it again after any failure and it resumes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

from uploader.config import CHECKSUMS, DEFAULT_CONCURRENCY, HTTP_SCHEMES, UploadOptions
from uploader.config import PROCORE_PRODUCTION_URL as PRODUCTION_URL
from uploader.config import PROCORE_SANDBOX_URL as SANDBOX_URL
from uploader.config import PROCORE_TOKEN_ENV as TOKEN_ENV
from uploader.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RESUME_HINT,
    ChunkhaulError,
    UsageError,
)
from uploader.redact import redact_text
from uploader.result import UploadResult

log = logging.getLogger("uploader")
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefixes: `--part-siz` working today would break the day an option starting so is added.
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # one line, exit 2, as for every other bad input
        if "--json" in sys.argv[1:]:  # a script asked for JSON: give it JSON even now
            print(json.dumps({"error": message, "exit_code": EXIT_USAGE}))
        self.exit(EXIT_USAGE, f"chunkhaul: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("chunkhaul")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"chunkhaul {text}")
        parser.exit(0)


def _pairs(values: Sequence[str] | None, sep: str, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        name, found, value = item.partition(sep)
        if not found or not name.strip():
            raise UsageError(f"{flag} {item!r}: expected NAME{sep}VALUE")
        if name.strip() in out:  # the last would silently win
            raise UsageError(f"{flag} {name.strip()} is given twice; give it once")
        out[name.strip()] = value.strip() if sep == ":" else value
    return out


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="count", default=0, help="more logging; tracebacks")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chunkhaul", description="Resumable, parallel, verified uploads.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = sub.add_parser("upload", help="upload FILE to DEST (run again to resume)")
    up.add_argument("file")
    up.add_argument("destination", help="s3://BUCKET/KEY, tus+https://HOST/PATH/ (tus creation URL), "
                    "procore://COMPANY_ID[/projects/PROJECT_ID], or http(s)://HOST/PATH (one PUT or POST)")
    up.add_argument("--endpoint-url", help="S3-compatible endpoint (default: env AWS_ENDPOINT_URL_S3, "
                    "AWS_ENDPOINT_URL, the profile's endpoint_url, else AWS)")
    up.add_argument("--region", help="S3 region (default: env AWS_REGION, AWS_DEFAULT_REGION, the profile, "
                    "else us-east-1)")
    up.add_argument("--profile", help="AWS profile for credentials and settings (default: env AWS_PROFILE)")
    up.add_argument("--protocol", choices=["s3", "tus", "procore", "http"], help="override the protocol implied "
                    "by DEST (tus: DEST is an http(s):// tus creation URL)")
    up.add_argument("--part-size", help="e.g. 16MiB; default 16MiB, grown automatically to stay under 10,000 "
                    "parts (tus: default one streamed PATCH)")
    up.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                    help=f"parts in flight (default {DEFAULT_CONCURRENCY})")
    up.add_argument("--state-dir", help="where resume manifests live (default $XDG_STATE_HOME/chunkhaul, "
                    "else ~/.local/state/chunkhaul)")
    up.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    up.add_argument("--restart", action="store_true", help="abort the interrupted upload and start over")
    up.add_argument("--fallback", choices=["auto", "never", "only"], default="auto",
                    help="the single-shot sync upload after the async path fails: auto (default), never, "
                    "or only")
    up.add_argument("--sync-deadline", type=float, metavar="SECONDS",
                    help="wall-clock limit per single-shot attempt (default: 10 s per MB, 300-1800 s)")
    up.add_argument("--sync-delay", type=float, default=5.0, metavar="SECONDS",
                    help="pause between single-shot attempts (default 5)")
    up.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS", help="default 10")
    up.add_argument("--stall-timeout", type=float, default=30.0, metavar="SECONDS",
                    help="a request with no bytes moving for this long is cut and retried (default 30)")
    up.add_argument("--retries", type=int, default=5, help="attempts per request (default 5)")
    up.add_argument("--force-close", action="store_true", help="a new connection for every request")
    up.add_argument("--checksum", choices=CHECKSUMS, default="crc32",
                    help="S3 part checksum the server verifies: crc32 (default, x-amz-checksum-crc32, about "
                    "0.6 CPU-s per GiB) or md5 (Content-MD5, about 1.8 CPU-s per GiB; for S3-compatible "
                    "stores that do not understand the x-amz-checksum headers)")
    up.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="tus and http: sent with the upload")
    up.add_argument("--method", type=str.upper, choices=["PUT", "POST"],
                    help="http(s):// destinations: the request that carries the file (default PUT)")
    up.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                    help="S3: x-amz-meta-KEY (ASCII, 2 KB in all); tus: Upload-Metadata")
    up.add_argument("--content-type", metavar="TYPE",
                    help="media type stored with the object (S3 Content-Type, tus filetype, Procore); "
                    "default: guessed from the file name")
    up.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_verbosity(up)
    _add_procore_flags(up)
    _add_abort_parser(sub)
    return parser


def _add_procore_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Procore (procore://COMPANY_ID[/projects/PROJECT_ID])")
    group.add_argument("--procore-api", choices=["v2.1", "v1.1"],
                       help="upload API (default: v2.1 when DEST names a project, else v1.1)")
    host = group.add_mutually_exclusive_group()
    host.add_argument("--procore-base-url", metavar="URL", help=f"API host (default {PRODUCTION_URL})")
    host.add_argument("--sandbox", action="store_true", help=f"use the sandbox, {SANDBOX_URL}")
    group.add_argument("--token-file", metavar="FILE",
                       help=f"read the OAuth access token from FILE (default: env {TOKEN_ENV})")


def _add_abort_parser(sub: Any) -> None:
    ab = sub.add_parser("abort", help="delete the interrupted upload of FILE to DEST on the server, "
                        "and its resume manifest")
    ab.add_argument("file", help="the file as given to upload")
    ab.add_argument("destination", help="the destination as given to upload")
    ab.add_argument("--protocol", choices=["s3", "tus", "procore"], help="as given to upload")
    ab.add_argument("--endpoint-url", help="S3: as given to upload (or the same env/profile)")
    ab.add_argument("--region", help="S3: as given to upload")
    ab.add_argument("--profile", help="S3: as given to upload")
    ab.add_argument("--state-dir", help="as given to upload")
    ab.add_argument("--ca-bundle", help="PEM file of CA certificates to trust")
    ab.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="tus: e.g. Authorization")
    ab.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS", help="default 10")
    ab.add_argument("--stall-timeout", type=float, default=30.0, metavar="SECONDS", help="default 30")
    ab.add_argument("--json", action="store_true", help='print {"aborted": true|false} on stdout')
    _add_verbosity(ab)
    _add_procore_flags(ab)


def _options(args: argparse.Namespace) -> UploadOptions:
    return UploadOptions(
        source=args.file, destination=args.destination, protocol=args.protocol,
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
        part_size=args.part_size, concurrency=args.concurrency, state_dir=args.state_dir,
        ca_bundle=args.ca_bundle, restart=args.restart, fallback=args.fallback,
        headers=_pairs(args.header, ":", "--header"), metadata=_pairs(args.metadata, "=", "--metadata"),
        content_type=args.content_type,
        connect_timeout=args.connect_timeout, stall_timeout=args.stall_timeout,
        retries=args.retries, force_close=args.force_close, checksum=args.checksum,
        sync_deadline=args.sync_deadline, sync_delay=args.sync_delay,
        procore_api=args.procore_api, token_file=args.token_file,
        procore_base_url=SANDBOX_URL if args.sandbox else args.procore_base_url, method=args.method,
    )


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    # botocore's DEBUG output prints canonical requests and signatures: never enabled.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if verbose < 2:
        for noisy in ("asyncio", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


async def _main_task(options: UploadOptions, show_bar: bool) -> UploadResult:
    # SIGTERM stops the upload the way Ctrl-C does: cancelled, manifest saved.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    from uploader.tls import default_cas_skipped

    with default_cas_skipped():
        from uploader.engine import upload_async  # imported late: `chunkhaul --help` stays fast

    return await upload_async(options, show_bar=show_bar)


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    # One line, always: a server's multi-line body (XML, HTML) is folded and cut.
    message = " ".join(redact_text(message).split())
    if len(message) > 600:
        message = message[:597] + "..."
    print(f"chunkhaul: error: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def _run(args: argparse.Namespace, work: Callable[[], Coroutine[Any, Any, T]], interrupted: str) -> T | int:
    """Run one command; every failure becomes one line (a traceback only with -v) and an exit code."""
    try:
        return asyncio.run(work())
    except ChunkhaulError as exc:
        log.debug("failure detail", exc_info=True)
        return _fail(args, exc.exit_code, str(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return _fail(args, EXIT_INTERRUPTED, interrupted)
    except Exception as exc:  # a bug: still one line unless -v
        log.debug("internal error", exc_info=True)
        return _fail(args, EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc} "
                     f"(run with -v for details); {RESUME_HINT}")


def run_upload(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
    except ChunkhaulError as exc:
        return _fail(args, exc.exit_code, str(exc))
    show_bar = not args.quiet and not args.json and sys.stderr.isatty()
    stopped = (f"interrupted; {RESUME_HINT}" if options.target not in HTTP_SCHEMES else
               "interrupted; plain HTTP keeps nothing to resume from: the same command sends the file again")
    result = _run(args, lambda: _main_task(options, show_bar), stopped)
    if isinstance(result, int):
        return result
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def run_abort(args: argparse.Namespace) -> int:
    from uploader.engine import abort_async

    try:
        options = UploadOptions(
            source=args.file, destination=args.destination, protocol=args.protocol,
            endpoint_url=args.endpoint_url, region=args.region, profile=args.profile,
            state_dir=args.state_dir, ca_bundle=args.ca_bundle, headers=_pairs(args.header, ":", "--header"),
            connect_timeout=args.connect_timeout, stall_timeout=args.stall_timeout,
            procore_api=args.procore_api, token_file=args.token_file,
            procore_base_url=SANDBOX_URL if args.sandbox else args.procore_base_url,
        )
    except ChunkhaulError as exc:
        return _fail(args, exc.exit_code, str(exc))
    aborted = _run(args, lambda: abort_async(options), "interrupted; run chunkhaul abort again")
    if not isinstance(aborted, bool):
        return aborted
    message = "aborted" if aborted else "nothing to abort: no interrupted upload of this file to this destination"
    log.info("%s", message[0].upper() + message[1:])
    if args.json:
        print(json.dumps({"aborted": aborted}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    if args.command == "upload":
        return run_upload(args)
    if args.command == "abort":
        return run_abort(args)
    return EXIT_USAGE


def entry() -> NoReturn:
    """The console script: main(), then an exit that skips the interpreter's teardown (~35 ms
    of freeing modules and objects). Everything is written and closed by then: the manifest
    saves are atomic and done, the lock is released, only stdout and stderr need a flush."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
