"""What every test server shares: `with Server(...) as server:` starts it and always stops it."""

from __future__ import annotations

from typing import TypeVar

S = TypeVar("S", bound="Server")


class Server:
    """Subclasses define start() (returning self once the server answers) and stop()."""

    def start(self: S) -> S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
