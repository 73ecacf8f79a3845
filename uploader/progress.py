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
            import shutil

            from tqdm import tqdm

            # A terminal reporting a 0x0 size (fresh ptys, some CI consoles) makes tqdm
            # hide the bar; shutil falls back to 80x24 there.
            size = shutil.get_terminal_size()
            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, ncols=size.columns, nrows=size.lines, leave=True,
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
