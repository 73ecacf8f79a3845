"""The stream-count policy against two link models: a shared bottleneck (the total rate is the
same whatever the number of streams: a server's CPU, one uplink) and per-connection caps (each
stream gets its own rate: a long path's TCP window, per-connection shaping)."""

from __future__ import annotations

import asyncio

import pytest

from chunker import MiB
from uploader.streams import StreamGate, StreamPolicy

PART = 16 * MiB


def shared(total_rate: float) -> float:
    """Seconds per part on a shared bottleneck: k streams split `total_rate`."""
    return 0.0 if total_rate <= 0 else PART / total_rate


def drive(policy: StreamPolicy, seconds_per_part: dict[int, float], parts: int) -> list[int]:
    """Feed `parts` completions, each started in the current epoch at the current limit;
    returns the limit seen at each completion."""
    seen = []
    for _ in range(parts):
        policy.finished(policy.epoch, PART, seconds_per_part[policy.limit])
        seen.append(policy.limit)
    return seen


def test_shared_bottleneck_settles_on_half() -> None:
    policy = StreamPolicy(8, parts=64)
    # 200 MiB/s whatever the stream count: a part takes k x as long with k streams.
    drive(policy, {8: 8 * shared(200 * MiB), 4: 4 * shared(200 * MiB)}, parts=1 + 8 + 4)
    assert policy.settled and policy.limit == 4
    assert policy.rates["full"] == pytest.approx(200 * MiB)
    assert policy.rates["half"] == pytest.approx(200 * MiB)


def test_per_connection_cap_goes_back_to_full() -> None:
    policy = StreamPolicy(8, parts=64)
    capped = PART / (8 * MiB)  # 8 MiB/s per connection, whatever the count
    drive(policy, {8: capped, 4: capped}, parts=1 + 8 + 4)
    assert policy.settled and policy.limit == 8
    assert policy.rates["half"] == pytest.approx(policy.rates["full"] / 2)


def test_half_kept_only_above_the_share() -> None:
    just_below = StreamPolicy(8, parts=64)
    drive(just_below, {8: 1.0, 4: 0.5 / 0.94}, parts=13)  # half moves 94 % of the full rate
    assert just_below.limit == 8
    just_above = StreamPolicy(8, parts=64)
    drive(just_above, {8: 1.0, 4: 0.5 / 0.96}, parts=13)
    assert just_above.limit == 4


def test_probe_steps_half_after_the_warm_up_and_a_full_wave() -> None:
    policy = StreamPolicy(8, parts=64)
    seen = drive(policy, {8: 1.0, 4: 0.5}, parts=13)
    assert seen[:9] == [8] * 8 + [4]  # warm-up part, then 8 measured at full
    assert policy.settled


def test_parts_started_before_a_change_do_not_count() -> None:
    policy = StreamPolicy(8, parts=64)
    policy.finished(policy.epoch, PART, 1.0)  # warm-up over
    stale = policy.epoch - 1
    for _ in range(20):
        policy.finished(stale, PART, 100.0)  # first-wave parts: slow start, not full-rate samples
    assert policy.limit == 8 and not policy.rates


@pytest.mark.parametrize(("maximum", "parts", "adapt"), [
    (8, 31, True),  # fewer than 4 waves: a probe could cost a quarter of the upload
    (3, 100, True),  # too few streams to halve
    (8, 1000, False),  # --fixed-concurrency
])
def test_no_probe(maximum: int, parts: int, adapt: bool) -> None:
    policy = StreamPolicy(maximum, parts=parts, adapt=adapt)
    assert policy.settled
    drive(policy, {maximum: 1.0}, parts=50)
    assert policy.limit == maximum and not policy.rates


def test_gate_never_exceeds_the_limit_and_follows_it_down() -> None:
    async def run() -> tuple[list[int], list[StreamPolicy]]:
        settled: list[StreamPolicy] = []
        gate = StreamGate(StreamPolicy(8, parts=64), settled.append)
        peaks: list[int] = []  # in-flight count seen by each part, with the limit it started under

        async def part() -> None:
            async with gate.slot(PART):
                peaks.append(gate.in_flight)
                assert gate.in_flight <= gate.policy.limit
                # A shared bottleneck that more streams slow down (as a server's CPU does).
                await asyncio.sleep(0.001 * gate.policy.limit ** 2)

        await asyncio.gather(*(part() for _ in range(64)))
        return peaks, settled

    peaks, settled = asyncio.run(run())
    assert len(settled) == 1 and settled[0].limit == 4
    assert max(peaks) == 8 and max(peaks[-20:]) <= 4


def test_gate_releases_the_slot_of_a_failed_part() -> None:
    async def run() -> int:
        gate = StreamGate(StreamPolicy(2, parts=4), lambda _: None)

        async def failing() -> None:
            async with gate.slot(PART):
                raise OSError("reset")

        for _ in range(3):  # would block forever on the third if slots leaked
            with pytest.raises(OSError):
                await asyncio.wait_for(failing(), 1)
        return gate.in_flight

    assert asyncio.run(run()) == 0
