"""Small asyncio helpers shared by the flows."""

from __future__ import annotations

import asyncio


async def gather_or_cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for all; on the first failure cancel the rest and raise that failure."""
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
