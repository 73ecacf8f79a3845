"""The plain-HTTP protocol module (targets/http.py) and its options, no sockets.

Statuses and header meanings are RFC 9110's (2xx success, 3xx + Location a redirect,
Retry-After seconds); the file's size and bytes come from the file written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from uploader.config import UploadOptions
from uploader.engine import build_protocol
from uploader.errors import PermanentError, TransientError, UsageError
from uploader.targets.http import HttpProtocol, http_protocol, parse_http_url
from uploader.wire import FileSlice, HttpResponse


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-" + bytes(range(256)) * 40)
    return path


def protocol(src: Path, url: str = "https://files.example/up/report.pdf", **kwargs: object) -> HttpProtocol:
    options = UploadOptions.build(str(src), url, **kwargs)
    built = build_protocol(options, str(src))
    assert isinstance(built, HttpProtocol)
    return built


def test_put_carries_the_whole_file_as_raw_body(src: Path) -> None:
    size = src.stat().st_size
    req = protocol(src, headers={"Authorization": "Bearer t0k"}).single_shot(size, None)
    assert (req.method, req.url) == ("PUT", "https://files.example/up/report.pdf")
    assert req.body == FileSlice(str(src), 0, size)
    assert req.headers == {"Authorization": "Bearer t0k", "Content-Type": "application/pdf",
                           "Content-Length": str(size)}
    assert req.follow_redirects is False  # a 3xx must come back to us, not be followed with the body


def test_post_and_explicit_content_type(src: Path) -> None:
    req = protocol(src, method="post", content_type="text/plain; charset=utf-8").single_shot(5, None)
    assert req.method == "POST"
    assert req.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_empty_file_and_unknown_type(tmp_path: Path) -> None:
    empty = tmp_path / "blob"
    empty.write_bytes(b"")
    req = protocol(empty, "http://h/blob").single_shot(0, None)
    assert req.body == b"" and req.headers["Content-Length"] == "0"
    assert req.headers["Content-Type"] == "application/octet-stream"


def test_protocol_http_takes_a_plain_url(src: Path) -> None:
    assert protocol(src, "http://h:8080/x?y=1#frag", protocol="http").url == "http://h:8080/x?y=1"


@pytest.mark.parametrize("status", [200, 201, 204])
def test_any_2xx_is_stored(src: Path, status: int) -> None:
    done = protocol(src).parse_single_shot(HttpResponse(status, {"etag": '"abc"'}))
    assert (done.etag, done.location) == ("abc", "https://files.example/up/report.pdf")


def test_redirect_is_an_error_naming_the_location(src: Path) -> None:
    resp = HttpResponse(307, {"location": "https://u:secret@other.example/final?sig=s3cr3t"})
    with pytest.raises(PermanentError) as caught:
        protocol(src).parse_single_shot(resp)
    message = str(caught.value)
    assert "HTTP 307" in message and "other.example/final" in message
    assert "secret" not in message and "s3cr3t" not in message


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507])
def test_5xx_and_throttling_are_retried(src: Path, status: int) -> None:
    with pytest.raises(TransientError) as caught:
        protocol(src).parse_single_shot(HttpResponse(status, {"retry-after": "7"}))
    assert (caught.value.status, caught.value.retry_after) == (status, 7.0)


@pytest.mark.parametrize(("status", "check"), [(401, "credentials"), (403, "credentials"), (404, "path"),
                                               (405, "--method"), (413, "large"), (400, "--header")])
def test_other_4xx_is_final_and_says_what_to_check(src: Path, status: int, check: str) -> None:
    body = b"<html>\n<body>nope</body>\n</html>"
    with pytest.raises(PermanentError) as caught:
        protocol(src).parse_single_shot(HttpResponse(status, {}, body))
    message = str(caught.value)
    assert f"PUT https://files.example/up/report.pdf: HTTP {status}" in message
    assert check in message and "nope" in message and "\n" not in message
    assert "resume" not in message


@pytest.mark.parametrize("name", ["Content-Type", "content-length", "Host", "Transfer-Encoding"])
def test_headers_chunkhaul_sets_are_refused(src: Path, name: str) -> None:
    with pytest.raises(UsageError, match="sets this header itself"):
        protocol(src, headers={name: "x"})


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///x", "http://h:99999/x"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError):
        parse_http_url(url)


def test_method_other_than_put_or_post_is_refused(src: Path) -> None:
    with pytest.raises(UsageError, match="PUT or POST"):
        http_protocol(UploadOptions.build(str(src), "http://h/x", method="PATCH"), str(src))


@pytest.mark.parametrize(("destination", "kwargs", "phrase"), [
    ("s3://bucket/key", {"method": "POST"}, "--method applies to http uploads only (this destination is s3)"),
    ("tus+http://h/files/", {"method": "PUT"}, "--method applies to http uploads only"),
    ("http://h/x", {"metadata": {"k": "v"}}, "--metadata applies to s3 and tus uploads only"),
    ("http://h/x", {"region": "eu-west-1"}, "--region applies to s3 uploads only (this destination is http)"),
    ("http://user:pw@h/x", {"headers": {"Authorization": "Basic x"}}, "give them one way"),
    ("http://h/x", {"part_size": "8MiB"}, "--part-size applies to s3 and tus and procore uploads only"),
    ("http://h/x", {"headers": {"X-Token": "1", "x-token": "2"}}, "--header x-token is given twice"),
])
def test_options_that_do_not_fit_are_refused(destination: str, kwargs: dict[str, object], phrase: str) -> None:
    with pytest.raises(UsageError) as caught:
        UploadOptions.build("f.bin", destination, **kwargs)
    assert phrase in str(caught.value)


def test_http_keeps_its_options() -> None:
    UploadOptions.build("f.bin", "https://h/x", method="POST", headers={"Authorization": "Bearer x"},
                        content_type="video/mp4")


def test_cli_passes_method_and_protocol() -> None:
    from uploader.cli import _options, build_parser

    args = build_parser().parse_args(["upload", "f.bin", "https://h/x", "--protocol", "http", "--method", "post"])
    options = _options(args)
    assert (options.target, options.method) == ("http", "POST")
