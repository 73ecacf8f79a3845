"""Progress counts committed bytes only: a retried part never counts twice."""

from __future__ import annotations

from typing import Any

from uploader.config import ProgressCallback


class Progress:
    def __init__(
        self,
        total: int,
        *,
        label: str,
        bar: bool,
        callback: ProgressCallback | None,
    ) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, dynamic_ncols=True, leave=True,
            )

    def start_at(self, already: int) -> None:
        """A resumed upload starts where the server is."""
        self._advance(already)

    def commit(self, nbytes: int) -> None:
        self._advance(nbytes)

    def _advance(self, nbytes: int) -> None:
        step = max(0, min(nbytes, self.total - self.done))  # never past 100 %
        if step == 0 and nbytes > 0:
            return
        self.done += step
        if self._bar is not None:
            self._bar.update(step)
        if self._callback is not None:
            self._callback(self.done, self.total)

    def reset(self) -> None:
        self.done = 0
        if self._bar is not None:
            self._bar.reset(total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
