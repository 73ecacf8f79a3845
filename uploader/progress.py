"""Progress counts committed bytes: a retried part never counts twice. (A streamed tus
PATCH, which may run for minutes, reports bytes handed to the socket as it goes.)"""

from __future__ import annotations

from collections.abc import Callable
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
        self._label = label
        self._want_bar = bar
        # The caller's callback raised: kept to be re-raised once the upload has stopped
        # (on_callback_error stops it), and the callback is not called again.
        self.callback_error: BaseException | None = None
        self.on_callback_error: Callable[[], object] | None = None

    def _show(self) -> None:
        """The bar appears on the first progress, after the log lines that precede it, and
        starts at what the server already has so tqdm's rate counts only this run's bytes."""
        if not self._want_bar or self._bar is not None:
            return
        import shutil

        from tqdm import tqdm

        # A terminal reporting a 0x0 size (fresh ptys, some CI consoles) makes tqdm
        # hide the bar; shutil falls back to 80x24 there.
        size = shutil.get_terminal_size()
        self._bar = tqdm(
            total=self.total, initial=self.done, unit="B", unit_scale=True, unit_divisor=1024,
            desc=self._label, ncols=size.columns, nrows=size.lines, leave=True,
        )

    def start_at(self, already: int) -> None:
        """A resumed upload starts where the server is."""
        self._advance(already, show=False)

    def commit(self, nbytes: int) -> None:
        self._advance(nbytes)

    def _advance(self, nbytes: int, show: bool = True) -> None:
        step = max(0, min(nbytes, self.total - self.done))  # never past 100 %
        if step == 0 and nbytes > 0:
            return
        if show and self._bar is None:
            self._show()
        self.done += step
        if self._bar is not None:
            self._bar.update(step)
        self._notify()

    def _notify(self) -> None:
        if self._callback is None or self.callback_error is not None:
            return
        try:
            self._callback(self.done, self.total)
        except BaseException as exc:  # KeyboardInterrupt too: raised here, it would leave the lock held
            # Not raised here: this may run inside the HTTP client's body writer, which would
            # pass it off as a network error (retried, then the fallback).
            self.callback_error = exc
            if self.on_callback_error is not None:
                self.on_callback_error()

    def reset(self) -> None:
        self.done = 0
        if self._bar is not None:
            self._bar.reset(total=self.total)

    def close(self) -> None:
        if self._bar is None and self.done:
            self._show()  # a run that only resumed still shows where it ended
        if self._bar is not None:
            self._bar.close()
            self._bar = None
