"""Shared test fixtures: real SeaweedFS servers and fast random files.

Run from the repo root: ``.venv/bin/python -m pytest``. Fixtures for the tus servers, the
Procore emulator and the fault proxy belong in conftest.py files of their own subfolders
(e.g. tests/integration/tus/conftest.py), or below in a clearly separated section of this
file; keep this part lean.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # makes `tests.servers...` importable from any test
    sys.path.insert(0, str(REPO_ROOT))

from tests.servers.seaweed import SeaweedFS, make_tls_files  # noqa: E402

# A shell starts a background job (`make test &`, nohup ... &) with SIGINT ignored, children
# inherit that, and a Python started so never sees Ctrl-C (it keeps the inherited SIG_IGN).
# The tests that send the CLI SIGINT need it to have the disposition of a terminal's job.
signal.signal(signal.SIGINT, signal.default_int_handler)

MiB = 1 << 20
_BLOCK = 8 * MiB


def md5_file(path: Path) -> str:
    """What a downloaded object is compared by, read in blocks (files here reach GiBs)."""
    h = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def write_random_file(path: str | os.PathLike[str], size: int, seed: int | None = None) -> Path:
    """Write size pseudo-random bytes to path in 8 MiB blocks (~2 GB/s); returns the path.

    AES-CTR keystream when ``cryptography`` is there (it comes with trustme), else
    os.urandom. With seed the content is reproducible. No two 16-byte blocks repeat, so a
    part landing at the wrong offset always changes the object's digest.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    key = (seed if seed is not None else int.from_bytes(os.urandom(8), "big")).to_bytes(
        16, "big"
    )
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        zeros = bytes(_BLOCK)

        def block(n: int) -> bytes:
            return encryptor.update(zeros[:n])
    except ImportError:  # pragma: no cover - cryptography is a trustme dependency
        def block(n: int) -> bytes:
            return os.urandom(n)

    with p.open("wb") as f:
        left = size
        while left > 0:
            n = min(_BLOCK, left)
            f.write(block(n))
            left -= n
    return p


@pytest.fixture
def make_random_file(tmp_path: Path) -> Callable[..., Path]:
    """make_random_file(name_or_path, size, seed=None) -> Path; relative names go in tmp_path."""

    def make(path: str | os.PathLike[str], size: int, seed: int | None = None) -> Path:
        p = Path(path)
        return write_random_file(p if p.is_absolute() else tmp_path / p, size, seed)

    return make


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    """One plain-HTTP SeaweedFS S3 server for the whole session (bucket pre-created).

    Shared: use unique keys (``seaweed.unique_key()``) and abort what you leave behind.
    """
    with SeaweedFS() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server behind HTTPS with a trustme CA: ``seaweed_tls.ca_file``."""
    tls = make_tls_files(tmp_path_factory.mktemp("seaweed-tls"))
    with SeaweedFS(tls=(tls.cert_file, tls.key_file), ca_file=tls.ca_file) as server:
        yield server


# ---- other engineers: tus / Procore emulator / fault proxy fixtures go below this line ----
