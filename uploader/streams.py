"""How many parts go in flight at once: the configured concurrency, or half of it when a
measured probe shows half moves the data as fast.

Why: parallel streams pay off where each connection is capped on its own (TCP window over a
long path, per-connection shaping, a server's per-stream limit). Where one bottleneck is
shared instead (the server's CPU, one uplink), more streams add no throughput and cost CPU on
both ends: against SeaweedFS on the same 2-core machine, 8 streams cost the server ~1.8 CPU-s
per GiB more than 4 (README, "Performance"). So on a file with many waves of parts the
policy measures both settings once and keeps the cheaper one when it is as fast. The probe
costs at most one wave at half speed, which is why short files never probe."""

from __future__ import annotations

import asyncio
import enum
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

KEEP_SHARE = 0.95  # half the streams are kept when they move at least this share of the full rate
WAVES_TO_PROBE = 4  # probe only when the plan holds this many waves of parts at full concurrency
MIN_TO_PROBE = 4  # below this concurrency halving saves too little to be worth a probe


class _Phase(enum.Enum):
    WARM_UP = "warm-up"  # until the first part is done: connections and windows still opening
    FULL = "full"  # measuring parts that start at full concurrency
    HALF = "half"  # measuring parts that start at half
    SETTLED = "settled"


class StreamPolicy:
    """Pure decision logic (no I/O, no clock): fed each finished part's size and duration."""

    def __init__(self, maximum: int, parts: int, adapt: bool = True) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.epoch = 0  # bumped at each change; a part counts only for the epoch it started in
        self.rates: dict[str, float] = {}  # aggregate bytes/s measured in each phase
        probe = adapt and maximum >= MIN_TO_PROBE and parts >= WAVES_TO_PROBE * maximum
        self._phase = _Phase.WARM_UP if probe else _Phase.SETTLED
        self._samples: list[float] = []

    @property
    def settled(self) -> bool:
        return self._phase is _Phase.SETTLED

    def finished(self, epoch: int, nbytes: int, seconds: float) -> None:
        """One part done: `epoch` is the one it started in."""
        if self._phase is _Phase.SETTLED:
            return
        if self._phase is _Phase.WARM_UP:
            self._next(_Phase.FULL, self.maximum)
            return
        if epoch != self.epoch or seconds <= 0:
            return
        self._samples.append(nbytes / seconds)
        if len(self._samples) < self.limit:
            return
        # Every stream in flight moves at about the median part's rate.
        self.rates[self._phase.value] = self.limit * statistics.median(self._samples)
        if self._phase is _Phase.FULL:
            self._next(_Phase.HALF, self.maximum // 2)
        else:
            keep = self.rates["half"] >= KEEP_SHARE * self.rates["full"]
            self._next(_Phase.SETTLED, self.limit if keep else self.maximum)

    def _next(self, phase: _Phase, limit: int) -> None:
        self._phase, self.limit = phase, limit
        self.epoch += 1
        self._samples = []


class StreamGate:
    """Holds a worker back while `policy.limit` parts are in flight (one event loop, so the
    check and the count need no lock)."""

    def __init__(self, policy: StreamPolicy, on_settled: Callable[[StreamPolicy], None]) -> None:
        self.policy = policy
        self._on_settled = on_settled  # called once, when a probe has decided
        self.in_flight = 0
        self._freed = asyncio.Event()

    @asynccontextmanager
    async def slot(self, nbytes: int) -> AsyncIterator[None]:
        while self.in_flight >= self.policy.limit:
            self._freed.clear()
            await self._freed.wait()
        self.in_flight += 1
        epoch, started = self.policy.epoch, time.monotonic()
        try:
            yield
        except BaseException:
            self._release()
            raise
        probing = not self.policy.settled
        self.policy.finished(epoch, nbytes, time.monotonic() - started)
        if probing and self.policy.settled:
            self._on_settled(self.policy)
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._freed.set()


__all__ = ["StreamGate", "StreamPolicy"]
