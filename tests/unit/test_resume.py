"""Manifest store: atomic, private, locked; reconciliation trusts only the server's parts."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from resume import (
    FileIdentity,
    LockHeld,
    Manifest,
    ManifestError,
    ManifestStore,
    PartRecord,
    ServerPart,
    reconcile,
)
from uploader.config import UploadOptions


def _manifest(path: Path) -> Manifest:
    return Manifest(
        file=FileIdentity.of(str(path)), destination="s3://b/k", target="s3", part_size=5,
        parts=[PartRecord(1, 0, 5, "aa", "e1"), PartRecord(2, 5, 5)], session={"upload_id": "u"},
    )


def test_manifest_round_trip_and_permissions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    old = os.umask(0)
    try:
        store = ManifestStore(tmp_path / "state", str(src), "s3://b/k")
        store.save(_manifest(src))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    loaded = store.load()
    assert loaded is not None
    assert loaded.parts[0].etag == "e1" and loaded.parts[1].etag is None
    assert loaded.session == {"upload_id": "u"}
    assert loaded.file == FileIdentity.of(str(src))
    assert list((tmp_path / "state").glob("*.tmp*")) == []


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [(b'{"tool": "chunkhaul", "schema": 1, "par', "not valid JSON"),
     (b'{"tool": "chunkhaul", "schema": 99}', "schema 99"),
     (b'{"tool": "other"}', "not a chunkhaul manifest"),
     (b'{"tool": "chunkhaul", "schema": 1}', "missing")],
)
def test_unusable_manifest_is_reported(raw: bytes, phrase: str) -> None:
    with pytest.raises(ManifestError, match=phrase):
        Manifest.loads(raw)


def test_failed_write_keeps_old_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    store = ManifestStore(tmp_path / "state", str(src), "s3://b/k")
    store.save(_manifest(src))
    before = store.path.read_bytes()

    class Boom(Manifest):
        def dumps(self) -> bytes:
            raise OSError(28, "No space left on device")

    broken = _manifest(src)
    broken.__class__ = Boom
    with pytest.raises(OSError):
        store.save(broken)
    assert store.path.read_bytes() == before
    assert list((tmp_path / "state").glob("*.tmp*")) == []


def test_second_process_cannot_take_the_lock(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    store = ManifestStore(tmp_path / "state", str(src), "s3://b/k")
    store.acquire()
    try:
        code = (
            "import sys; from resume import ManifestStore, LockHeld\n"
            f"s = ManifestStore({str(tmp_path / 'state')!r}, {str(src)!r}, 's3://b/k')\n"
            "try:\n    s.acquire()\nexcept LockHeld as e:\n    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert proc.returncode == 3
        assert f"process {os.getpid()}" in proc.stdout
    finally:
        store.release()
    other = ManifestStore(tmp_path / "state", str(src), "s3://b/k")
    other.acquire()  # free again once released
    other.release()
    with pytest.raises(LockHeld):
        store.acquire()
        ManifestStore(tmp_path / "state", str(src), "s3://b/k").acquire()
    store.release()


def test_identity_detects_same_size_rewrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    before = FileIdentity.of(str(src))
    src.write_bytes(b"0123456780")
    os.utime(src, ns=(before.mtime_ns + 1000, before.mtime_ns + 1000))
    assert "mtime_ns" in before.differences(FileIdentity.of(str(src)))


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_reconcile_trusts_server_and_verifies_unrecorded_parts() -> None:
    chunks = [b"aaaaa", b"bbbbb", b"ccccc", b"dd"]
    parts = [PartRecord(i + 1, i * 5, len(c)) for i, c in enumerate(chunks)]
    parts[0].etag = _md5(chunks[0])  # recorded and on the server
    parts[2].etag = "stale"  # recorded but the server lost it
    server = {
        1: [ServerPart(1, 5, f'"{_md5(chunks[0])}"')],
        # on the server twice (a re-upload), never recorded: verified by md5
        2: [ServerPart(2, 5, _md5(b"zzzzz")), ServerPart(2, 5, _md5(chunks[1]))],
        4: [ServerPart(4, 2, _md5(b"XX"))],  # on the server but other bytes: resend
    }
    todo = reconcile(parts, server, lambda p: _md5(chunks[p.number - 1]))
    assert [p.number for p in todo] == [3, 4]
    assert parts[1].etag == _md5(chunks[1])
    assert parts[2].etag is None and parts[3].etag is None


def test_reconcile_keeps_the_servers_crc32_for_parts_the_manifest_lacks() -> None:
    """ListParts lists ChecksumCRC32 for uploads created with CRC32 (AWS; SeaweedFS does not):
    a kept part without a recorded CRC-32 takes the server's, a recorded one keeps its own."""
    chunks = [b"aaaaa", b"bbbbb"]
    parts = [PartRecord(1, 0, 5, etag=_md5(chunks[0]), crc32="bWluZQ=="), PartRecord(2, 5, 5)]
    server = {1: [ServerPart(1, 5, _md5(chunks[0]), crc32="c2VydmVy")],
              2: [ServerPart(2, 5, _md5(chunks[1]), crc32="dGhlaXJz")]}
    assert reconcile(parts, server, lambda p: _md5(chunks[p.number - 1])) == []
    assert [p.crc32 for p in parts] == ["bWluZQ==", "dGhlaXJz"]


def test_manifest_keeps_part_crc32_and_loads_manifests_without_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    manifest = _manifest(src)
    manifest.parts[0].crc32 = "y/Q5Jg=="
    data = json.loads(manifest.dumps())
    assert data["parts"][0]["crc32"] == "y/Q5Jg=="
    assert "crc32" not in data["parts"][1]  # not recorded: absent, not null
    assert Manifest.loads(manifest.dumps()).parts[0].crc32 == "y/Q5Jg=="
    del data["parts"][0]["crc32"]  # as written before the field existed
    old = Manifest.loads(json.dumps(data).encode())
    assert old.parts[0].crc32 is None and old.parts[0].etag == "e1"


def test_manifest_keeps_an_attributes_digest_not_the_values(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    options = UploadOptions(source=str(src), destination="s3://b/k", metadata={"client": "ACME"})
    manifest = _manifest(src)
    manifest.attributes = options.attributes
    raw = manifest.dumps()
    assert b"ACME" not in raw and Manifest.loads(raw).attributes == options.attributes
    other = UploadOptions(source=str(src), destination="s3://b/k", metadata={"client": "Other"})
    assert other.attributes != options.attributes
    data = json.loads(raw)
    del data["attributes"]  # as written before the field existed: no digest, nothing to compare
    assert Manifest.loads(json.dumps(data).encode()).attributes == ""


def test_manifest_json_holds_no_credentials(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    data = json.loads(_manifest(src).dumps())
    assert set(data) == {"schema", "tool", "file", "destination", "target", "part_size", "session",
                         "attributes", "created_at", "updated_at", "parts"}
