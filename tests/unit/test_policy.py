"""Retry-After parsing (RFC 9110 §10.2.3), backoff bounds, redaction, progress accounting."""

from __future__ import annotations

import random

import pytest

from uploader.config import UploadOptions
from uploader.errors import TransientError, UsageError
from uploader.progress import Progress
from uploader.redact import redact_text, redact_url
from uploader.retry import RetryPolicy, parse_retry_after


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    # RFC 9110's example date, evaluated 30 s before it.
    now = 784111777.0 - 30
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=lambda: now) == pytest.approx(30.0)
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None


def test_backoff_honours_retry_after_and_caps() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    assert all(0 <= policy.delay(n, None, rng) <= 4.0 for n in range(1, 10))
    assert policy.delay(1, TransientError("x", retry_after=9.0), rng) >= 9.0
    assert policy.delay(1, TransientError("x", retry_after=10_000.0), rng) == 300.0


def test_redaction_of_presigned_urls_and_auth() -> None:
    url = ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F2026"
           "&X-Amz-Signature=deadbeef&partNumber=1")
    red = redact_url(url)
    assert "deadbeef" not in red and "AKID" not in red and "partNumber=1" in red
    assert "user:pw" not in redact_url("https://user:pw@host/x")
    assert "s3cr3t" not in redact_text("Authorization: Bearer s3cr3t")


def test_progress_never_passes_total() -> None:
    seen: list[tuple[int, int]] = []
    p = Progress(100, label="f", bar=False, callback=lambda d, t: seen.append((d, t)))
    p.start_at(40)
    p.commit(50)
    p.commit(50)
    assert seen[-1] == (100, 100)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize(
    "kwargs",
    [{"part_size": "0"}, {"part_size": "-5MiB"}, {"part_size": "lots"}, {"part_size": "6GiB"},
     {"concurrency": 0}, {"concurrency": 10_000}, {"fallback": "sometimes"}],
)
def test_options_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        UploadOptions.build("f", "s3://b/k", **kwargs)
