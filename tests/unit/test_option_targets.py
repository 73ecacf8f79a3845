"""Options a target would silently ignore are refused (UsageError, exit 2); every option a
target reads is still accepted, and the defaults pass everywhere."""

from __future__ import annotations

from typing import Any

import pytest

from uploader.config import PROCORE_SANDBOX_URL, UploadOptions
from uploader.errors import UsageError

S3 = "s3://bucket/key"
TUS = "tus+http://127.0.0.1:1080/files/"
PROCORE = "procore://123/projects/456"


def refused(destination: str, **kwargs: Any) -> str:
    with pytest.raises(UsageError) as caught:
        UploadOptions.build("f.bin", destination, **kwargs)
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- refused: (destination, option, phrase) -----------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    # tus-only options elsewhere
    (S3, {"headers": {"Content-Type": "text/plain"}},
     "--header applies to tus and http uploads only (this destination is s3)"),
    (PROCORE, {"metadata": {"color": "blue"}},
     "--metadata applies to s3 and tus uploads only (this destination is procore)"),
    (PROCORE, {"headers": {"X-A": "b"}}, "--header applies to tus and http uploads only (this destination is procore)"),
    # Procore-only options elsewhere
    (S3, {"procore_api": "v1.1"}, "--procore-api applies to procore uploads only (this destination is s3)"),
    (S3, {"procore_base_url": "https://p.example"}, "--procore-base-url applies to procore uploads only"),
    (S3, {"procore_base_url": PROCORE_SANDBOX_URL}, "--sandbox applies to procore uploads only"),
    (S3, {"token_file": "/tmp/t"}, "--token-file applies to procore uploads only (this destination is s3)"),
    (TUS, {"procore_api": "v2.1"}, "--procore-api applies to procore uploads only (this destination is tus+http)"),
    (TUS, {"procore_base_url": "https://p.example"}, "--procore-base-url applies to procore uploads only"),
    (TUS, {"procore_base_url": PROCORE_SANDBOX_URL}, "--sandbox applies to procore uploads only"),
    (TUS, {"token_file": "/tmp/t"}, "--token-file applies to procore uploads only (this destination is tus+http)"),
    # S3-only options elsewhere
    (TUS, {"endpoint_url": "http://127.0.0.1:8333"}, "--endpoint-url applies to s3 uploads only"),
    (TUS, {"region": "eu-west-1"}, "--region applies to s3 uploads only (this destination is tus+http)"),
    (TUS, {"profile": "demo"}, "--profile applies to s3 uploads only"),
    (TUS, {"checksum": "md5"}, "--checksum md5 applies to s3 uploads only"),
    (PROCORE, {"endpoint_url": "http://127.0.0.1:8333"}, "--endpoint-url applies to s3 uploads only"),
    (PROCORE, {"region": "eu-west-1"}, "--region applies to s3 uploads only (this destination is procore)"),
    (PROCORE, {"profile": "demo"}, "--profile applies to s3 uploads only"),
    (PROCORE, {"checksum": "md5"}, "--checksum md5 applies to s3 uploads only"),
    # --protocol decides the target, not the URL's look
    ("https://h/files/", {"protocol": "tus", "region": "x"}, "this destination is tus); drop it"),
]


@pytest.mark.parametrize(("destination", "kwargs", "phrase"), REFUSED,
                         ids=[f"{d.split(':')[0]}-{'-'.join(k)}-{i}" for i, (d, k, _) in enumerate(REFUSED)])
def test_an_option_the_target_ignores_is_refused(destination: str, kwargs: dict[str, Any], phrase: str) -> None:
    message = refused(destination, **kwargs)
    assert phrase in message
    assert message.endswith("; drop it")


@pytest.mark.parametrize("destination", [
    "tus+http://user:pw@127.0.0.1:1080/files/",
    "tus+https://user@h/files/",  # a user alone is Basic auth too (aiohttp, requests)
    "tus://:pw@h/files/",
])
@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_tus_credentials_in_the_url_and_an_authorization_header_are_refused(destination: str, name: str) -> None:
    message = refused(destination, headers={name: "Bearer X"})
    assert "give them one way" in message and "pw" not in message


def test_tus_credentials_in_the_url_under_protocol_tus_are_refused() -> None:
    message = refused("http://u:pw@h/files/", protocol="tus", headers={"Authorization": "Bearer X"})
    assert "give them one way" in message


# -- accepted ----------------------------------------------------------------------------

@pytest.mark.parametrize("destination", [S3, TUS, "tus+https://h/f/", PROCORE, "procore://1"])
def test_defaults_pass_for_every_target(destination: str) -> None:
    options = UploadOptions.build("f.bin", destination)
    assert options.checksum == "crc32" and not options.headers and not options.metadata


@pytest.mark.parametrize("destination", [S3, TUS, PROCORE])
def test_empty_values_count_as_not_given(destination: str) -> None:
    UploadOptions.build("f.bin", destination, headers={}, metadata={}, endpoint_url="", region="",
                        profile="", token_file="", procore_base_url="", checksum="crc32")


def test_s3_keeps_its_options() -> None:
    UploadOptions.build("f.bin", S3, endpoint_url="http://127.0.0.1:8333", region="eu-west-1",
                        profile="demo", checksum="md5")
    UploadOptions.build("f.bin", "https://h/b/k", protocol="s3", region="eu-west-1")


@pytest.mark.parametrize("destination", [TUS, "tus+https://h/files/", "tus://h/files/"])
def test_tus_keeps_headers_and_metadata(destination: str) -> None:
    options = UploadOptions.build("f.bin", destination, headers={"Authorization": "Bearer X", "X-Trace": "1"},
                                  metadata={"project": "Zürich 7"})
    assert options.metadata == {"project": "Zürich 7"}


def test_tus_with_protocol_override_keeps_headers_and_metadata() -> None:
    UploadOptions.build("f.bin", "https://h/files/", protocol="tus", headers={"Authorization": "Bearer X"},
                        metadata={"k": "v"})


def test_tus_credentials_in_the_url_alone_or_with_other_headers_pass() -> None:
    UploadOptions.build("f.bin", "tus+http://user:pw@h/files/")
    UploadOptions.build("f.bin", "tus+http://user:pw@h/files/", headers={"X-Trace": "1"})
    UploadOptions.build("f.bin", "tus+http://@h/files/", headers={"Authorization": "Bearer X"})  # no userinfo


def test_procore_keeps_its_options() -> None:
    UploadOptions.build("f.bin", PROCORE, procore_api="v1.1", procore_base_url=PROCORE_SANDBOX_URL,
                        token_file="/tmp/token")
    UploadOptions.build("f.bin", "procore://1", procore_api="v2.1", procore_base_url="https://p.example")


def test_unknown_targets_are_left_to_build_protocol() -> None:
    # Its "unknown destination" message is the useful one, not "--region applies to s3 only".
    UploadOptions.build("f.bin", "ftp://h/f", region="x", metadata={"k": "v"})
    UploadOptions.build("f.bin", "s3:/bucket/key", endpoint_url="http://h")


def test_abort_options_still_build() -> None:
    # cli.run_abort passes the S3 and Procore flags and --header (no --metadata, default checksum).
    UploadOptions(source="f.bin", destination=S3, endpoint_url="http://127.0.0.1:8333", region="r",
                  profile="p", headers={}, procore_api=None, token_file=None, procore_base_url=None)
    UploadOptions(source="f.bin", destination=TUS, headers={"Authorization": "Bearer X"})
    UploadOptions(source="f.bin", destination=PROCORE, headers={}, procore_base_url="https://p.example",
                  token_file="/tmp/t")


# -- through the CLI's parser (options only: nothing is sent) ----------------------------

def cli_options(*argv: str) -> UploadOptions:
    from uploader.cli import _options, build_parser

    return _options(build_parser().parse_args(["upload", "f.bin", *argv]))


@pytest.mark.parametrize(("argv", "phrase"), [
    ((S3, "--metadata", "color=blue", "--header", "Content-Type: text/plain"),
     "--header applies to tus and http uploads only"),
    ((S3, "--header", "Content-Type: text/plain"), "--header applies to tus and http uploads only"),
    ((S3, "--sandbox"), "--sandbox applies to procore uploads only (this destination is s3)"),
    ((TUS, "--checksum", "md5"), "--checksum md5 applies to s3 uploads only"),
    (("tus+http://user:pw@127.0.0.1:1/files/", "--header", "Authorization: Bearer X"), "give them one way"),
    # aiohttp would refuse these mid-upload ("internal error"); RFC 9110 forbids them in a field
    ((TUS, "--header", "X-A: b\nInjected: yes"), "the value holds a control character"),
    ((TUS, "--header", "Bad Name: v"), "not a header name"),
    ((TUS, "--header", "X-A: 1", "--header", "x-a: 2"), "--header x-a is given twice"),
    ((TUS, "--header", "X-A: 1", "--header", "X-A: 2"), "--header X-A is given twice"),
])
def test_cli_refuses_with_exit_2_and_one_line(argv: tuple[str, ...], phrase: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from uploader.cli import main

    assert main(["upload", "f.bin", *argv, "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and phrase in err and "pw" not in err


def test_cli_takes_no_abbreviated_options(capsys: pytest.CaptureFixture[str]) -> None:
    from uploader.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["upload", "f.bin", S3, "--part-siz", "8MiB"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --part-siz 8MiB" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    (S3, "--endpoint-url", "http://127.0.0.1:8333", "--region", "r", "--profile", "p", "--checksum", "md5",
     "--metadata", "k=v", "--content-type", "video/mp4"),
    (TUS, "--header", "Authorization: Bearer X", "--metadata", "k=v", "--checksum", "crc32"),
    (PROCORE, "--procore-api", "v1.1", "--sandbox", "--token-file", "/tmp/t"),
    (PROCORE, "--procore-base-url", "https://p.example", "--content-type", "application/pdf"),
])
def test_cli_accepts_what_the_target_uses(argv: tuple[str, ...]) -> None:
    cli_options(*argv)
