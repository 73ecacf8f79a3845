"""Retry policy: which failures to retry, how long to wait, how many times."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from uploader.errors import TransientError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


@dataclass(frozen=True)
class RetryPolicy:
    """Immutable: one instance shared by every part."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    # A server asking us to wait longer than this is treated as a failure, not a nap.
    max_retry_after: float = 300.0

    def delay(self, attempt: int, error: BaseException | None, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff, but never shorter than the server's Retry-After."""
        rng = rng or random.Random()
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if isinstance(error, TransientError) and error.retry_after is not None:
            return max(backoff, min(error.retry_after, self.max_retry_after))
        return backoff
