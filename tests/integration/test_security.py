"""Security checks through the CLI as a subprocess: private state (also under umask 000), no
secret in the manifest, the logs (any level) or --json, TLS verification that nothing turns
off, TLS < 1.2 refused with a clear message, credentials in URLs never echoed."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.chaos.badservers import RecordingServer, TlsServer, leaf, old_tls_context, server_context, write_ca
from tests.conftest import write_random_file
from tests.integration.cli import REPO, Run, cli_args, s3_env
from tests.servers.fault_proxy import FaultProxy, HttpRespond

MiB = 1 << 20
TOKEN = "SESSIONTOKENMARKER0123456789"


def run(*args: str, env: dict[str, str], preexec: Callable[[], None] | None = None, timeout: float = 180) -> Run:
    proc = subprocess.run(cli_args(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def fake_env(home: Path, **extra: str) -> dict[str, str]:
    """AWS credentials for servers that never check them (no SeaweedFS behind)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHUNKHAUL_"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID="AKIDCHUNKHAULTEST", AWS_SECRET_ACCESS_KEY="SECRETKEYMARKER0987654321",
               AWS_REGION="us-east-1", AWS_CONFIG_FILE=str(home / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / "none"), AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def umask_000() -> None:
    os.umask(0)


def interrupted(seaweed: Any, src: Path, dest: str, state: Path | None, env: dict[str, str], *extra: str,
                preexec: Callable[[], None] | None = None) -> Run:
    """Part 1 stored, part 2 refused (403): exit 1 with the manifest kept."""
    rule = HttpRespond(status=403, method="PUT", query="partNumber=2",
                       body="<Error><Code>AccessDenied</Code><Message>no</Message></Error>")
    with FaultProxy("127.0.0.1", seaweed.s3_port, [rule], http=True) as proxy:
        result = run("upload", str(src), dest, "--endpoint-url", proxy.url(), "--part-size", "5MiB",
                     "--concurrency", "1", *(["--state-dir", str(state)] if state else []), *extra,
                     env=env, preexec=preexec)
    assert result.code == 1, result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- private state ----------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [None, 0o750], ids=["new-dir", "existing-0750-dir"])
def test_state_is_private_even_with_umask_000(seaweed: Any, tmp_path: Path, existing: int | None) -> None:
    """A state dir chunkhaul creates is 0700; one the user made is left as it is. The files in
    either are 0600, whatever the umask."""
    state = tmp_path / "state"
    if existing is not None:
        state.mkdir()
        state.chmod(existing)
    src = write_random_file(tmp_path / "f.bin", 16 * MiB, seed=1)
    dest = f"s3://{seaweed.bucket}/{seaweed.unique_key('umask')}"
    interrupted(seaweed, src, dest, state, s3_env(seaweed, tmp_path), preexec=umask_000)
    files = list(state.iterdir())
    assert mode(state) == (existing or 0o700)
    assert {p.suffix for p in files} == {".json"}  # no temp file left over, no lock file once the run ended
    assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}


@pytest.mark.parametrize("loose", [0o777, 0o722], ids=oct)
def test_state_dir_writable_by_others_is_refused(tmp_path: Path, loose: int) -> None:
    """Another user could swap or delete the manifests in it: refused before anything is sent."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(loose)
    src = write_random_file(tmp_path / "f.bin", 6 * MiB, seed=1)
    with RecordingServer() as server:
        result = run("upload", str(src), "s3://bucket-x/key", "--endpoint-url", server.url, "--state-dir", str(state),
                     env=fake_env(tmp_path), preexec=umask_000)
    assert result.code == 2, result.stderr
    assert "writable by other users" in _error_line(result)
    assert server.requests == [] and list(state.iterdir()) == []
    assert mode(state) == loose  # not the tool's to change


def test_default_state_dir_is_private_with_umask_000(seaweed: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in s3_env(seaweed, home).items() if k != "XDG_STATE_HOME"}
    src = write_random_file(tmp_path / "f.bin", 16 * MiB, seed=2)
    interrupted(seaweed, src, f"s3://{seaweed.bucket}/{seaweed.unique_key('xdg')}", None, env, preexec=umask_000)
    state = home / ".local" / "state" / "chunkhaul"
    assert mode(state) == 0o700
    assert [mode(p) for p in state.glob("*.json")] == [0o600]


# -- no secrets -------------------------------------------------------------------------------


def _outputs(state: Path, *runs: Run) -> str:
    texts = [r.stdout + r.stderr for r in runs]
    texts += [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()]
    return "\n".join(texts)


LEVELS = [
    pytest.param((), id="default"),
    pytest.param(("-v",), id="-v"),
    pytest.param(("--json",), id="--json"),
    pytest.param(("-q", "--json"), id="-q--json"),
    pytest.param(("-vv",), id="-vv"),
    pytest.param(("-vv", "--json"), id="-vv--json"),
]


@pytest.mark.parametrize("flags", LEVELS)
def test_no_secret_in_manifest_logs_or_json(seaweed: Any, tmp_path: Path, flags: tuple[str, ...]) -> None:
    """Against SeaweedFS with a session token set: SeaweedFS refuses the token, so the runs
    fail; what matters is what they print and store: never the secret key, the token, an
    Authorization value or a signature."""
    state = tmp_path / "state"
    src = write_random_file(tmp_path / "f.bin", 16 * MiB, seed=3)
    dest = f"s3://{seaweed.bucket}/{seaweed.unique_key('secret')}"
    plain = s3_env(seaweed, tmp_path)
    first = interrupted(seaweed, src, dest, state, plain, *flags)  # a manifest, no token yet
    with_token = s3_env(seaweed, tmp_path, AWS_SESSION_TOKEN=TOKEN)
    second = run("upload", str(src), dest, "--endpoint-url", seaweed.endpoint, "--state-dir", str(state),
                 "--part-size", "5MiB", "--sync-delay", "0", *flags, env=with_token)
    text = _outputs(state, first, second)
    for secret in (seaweed.secret_key, TOKEN, "X-Amz-Signature", "Signature=", "Signature:",
                   "Credential=", "AWS4-HMAC-SHA256 ", "x-amz-security-token:"):
        assert secret not in text, f"{secret!r} printed or stored"


@pytest.mark.parametrize("flags", [*LEVELS, pytest.param(("-vv", "--fallback", "only"), id="-vv-fallback-only")])
def test_authorization_values_never_printed(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """A server that records every header it gets (and answers 500, so the client retries):
    none of the Authorization values or tokens it received appears in the CLI's output."""
    src = write_random_file(tmp_path / "f.bin", 11 * MiB, seed=4)
    env = fake_env(tmp_path, AWS_SESSION_TOKEN=TOKEN)
    with RecordingServer() as server:
        result = run("upload", str(src), "s3://bucket-x/key", "--endpoint-url", server.url, "--state-dir",
                     str(tmp_path / "state"), "--part-size", "5MiB", "--retries", "2", "--sync-delay", "0",
                     *flags, env=env)
    assert result.code == 1, result.stderr
    auth = [h["Authorization"] for _, h in server.requests if "Authorization" in h]
    assert auth and all(h.get("X-Amz-Security-Token") == TOKEN for _, h in server.requests)
    text = _outputs(tmp_path / "state", result)
    secrets = {a.rsplit("Signature=", 1)[-1] for a in auth} | set(auth) | {TOKEN, env["AWS_SECRET_ACCESS_KEY"]}
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"{len(leaked)} secret values printed, e.g. {leaked[0][:20]}..."


# -- TLS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fallback", ["never", "only"])
def test_tls_verification_cannot_be_switched_off_by_environment(tmp_path: Path, fallback: str) -> None:
    """Variables that turn verification off (or blank the CA bundle) in Python, requests and
    curl change nothing: a certificate from an unknown CA is refused on both paths."""
    ca = trustme.CA()
    env = fake_env(tmp_path, PYTHONHTTPSVERIFY="0", REQUESTS_CA_BUNDLE="", CURL_CA_BUNDLE="", AWS_CA_BUNDLE="",
                   SSL_CERT_FILE="", PYTHONWARNINGS="ignore")
    src = write_random_file(tmp_path / "f.bin", 6 * MiB, seed=5)
    with TlsServer(server_context(leaf(ca, "127.0.0.1", "localhost"))) as server:
        result = run("upload", str(src), "s3://bucket-x/key", "--endpoint-url", server.url, "--state-dir",
                     str(tmp_path / "state"), "--retries", "2", "--sync-delay", "0", "--fallback", fallback, env=env)
    assert result.code == 1, result.stderr
    assert "certificate" in _error_line(result).lower()
    assert not any(h.ok for h in server.handshakes), "a handshake with an untrusted certificate succeeded"


@pytest.mark.parametrize("flag", ["--no-verify-ssl", "--insecure", "-k", "--no-verify", "--verify=false",
                                  "--ssl-no-verify", "--no-check-certificate"])
def test_no_flag_turns_tls_verification_off(tmp_path: Path, flag: str) -> None:
    src = write_random_file(tmp_path / "f.bin", 10, seed=6)
    result = run("upload", str(src), "s3://bucket-x/key", flag, env=fake_env(tmp_path))
    assert result.code == 2
    assert "unrecognized arguments" in result.stderr or "expected one argument" in result.stderr


@pytest.mark.parametrize("keyword", ["verify", "ssl", "insecure", "verify_ssl"])
def test_library_has_no_verification_switch(tmp_path: Path, keyword: str) -> None:
    from uploader import upload
    from uploader.errors import UsageError

    src = write_random_file(tmp_path / "f.bin", 10, seed=7)
    with pytest.raises(UsageError):
        upload(str(src), "s3://bucket-x/key", state_dir=str(tmp_path / "s"), **{keyword: False})


def _tls11_client_handshake(port: int, ca: trustme.CA) -> str:
    """Proof that the server really speaks TLS 1.1 (so the refusal is the client's)."""
    import socket

    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port)) as sock, ctx.wrap_socket(sock, server_hostname="127.0.0.1") as t:
        return str(t.version())


def _error_line(result: Run) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("chunkhaul: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("fallback", [
    "never",
    "only",
])
def test_tls_below_1_2_is_refused_with_a_clear_message(tmp_path: Path, fallback: str) -> None:
    ca = trustme.CA()
    bundle = write_ca(ca, tmp_path / "ca.pem")
    src = write_random_file(tmp_path / "f.bin", 6 * MiB, seed=8)
    with TlsServer(old_tls_context(leaf(ca, "127.0.0.1"))) as server:
        assert _tls11_client_handshake(server.port, ca) == "TLSv1.1"
        result = run("upload", str(src), "s3://bucket-x/key", "--endpoint-url", server.url, "--ca-bundle",
                     str(bundle), "--state-dir", str(tmp_path / "state"), "--sync-delay", "0",
                     "--fallback", fallback, env=fake_env(tmp_path))
    assert result.code == 1, result.stderr
    assert "TLS 1.2" in _error_line(result)
    assert sum(h.ok for h in server.handshakes) == 1  # only our TLS 1.1 probe got through
    assert "Sync upload attempt 2/3" not in result.stderr  # a refusal is not retried


@pytest.mark.parametrize("size", [6 * MiB, 40 * MiB], ids=["single-shot", "multipart"])
def test_ca_from_ssl_cert_file_is_trusted_without_ca_bundle(seaweed_tls: Any, tmp_path: Path, size: int) -> None:
    """The CLI imports aiohttp with its default CA paths blanked (start-up time); the user's
    SSL_CERT_FILE must still be what our own TLS context trusts, on both paths."""
    src = write_random_file(tmp_path / "f.bin", size, seed=11)
    key = seaweed_tls.unique_key("ssl-cert-file")
    run_ = run("upload", str(src), f"s3://{seaweed_tls.bucket}/{key}", "--endpoint-url", seaweed_tls.endpoint,
               "--state-dir", str(tmp_path / "state"), "--part-size", "16MiB", "--json",
               env=s3_env(seaweed_tls, tmp_path, SSL_CERT_FILE=str(seaweed_tls.ca_file)))
    assert run_.code == 0, run_.stderr
    with src.open("rb") as f:
        assert seaweed_tls.get_object_bytes_md5(key).md5 == hashlib.md5(f.read()).hexdigest()


def test_aiohttp_default_contexts_skip_the_ca_store_only_in_a_clean_process(tmp_path: Path) -> None:
    """default_cas_skipped: aiohttp's import-time contexts get no CAs, the environment is
    restored after, and with a proxy configured nothing is skipped."""
    probe = (
        "import os, ssl; from uploader.tls import default_cas_skipped, make_ssl_context\n"
        "before = {k: os.environ.get(k) for k in ('SSL_CERT_FILE', 'SSL_CERT_DIR')}\n"
        "with default_cas_skipped():\n    import aiohttp.connector as c\n"
        "assert before == {k: os.environ.get(k) for k in before}, 'environment not restored'\n"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'], make_ssl_context().cert_store_stats()['x509_ca'])"
    )
    ca = trustme.CA()
    bundle = write_ca(ca, tmp_path / "ca.pem")
    results = {}
    for name, extra in {"clean": {}, "proxied": {"HTTPS_PROXY": "http://127.0.0.1:9"}}.items():
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(SSL_CERT_FILE=str(bundle), SSL_CERT_DIR=str(tmp_path / "none"), **extra)
        out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stderr
        results[name] = tuple(int(n) for n in out.stdout.split())
    assert results == {"clean": (0, 1), "proxied": (1, 1)}  # the bundle holds exactly one CA


# -- credentials in URLs ----------------------------------------------------------------------


PASSWORD = "PASSWORDMARKER4242"


@pytest.mark.parametrize("where", [
    "endpoint",
    "s3-destination",
    "tus-destination",
])
def test_credentials_in_urls_are_never_echoed(tmp_path: Path, where: str) -> None:
    src = write_random_file(tmp_path / "f.bin", 6 * MiB, seed=9)
    with RecordingServer() as server:
        authority = f"user:{PASSWORD}@{server.url.removeprefix('http://')}"
        args = {
            "endpoint": ("s3://bucket-x/key", "--endpoint-url", f"http://{authority}"),
            "s3-destination": (f"s3://user:{PASSWORD}@bucket-x/key", "--endpoint-url", server.url),
            "tus-destination": (f"tus+http://{authority}/files/",),
        }[where]
        result = run("upload", str(src), *args, "--state-dir", str(tmp_path / "state"), "--retries", "2",
                     "--sync-delay", "0", "-vv", "--json", env=fake_env(tmp_path))
    assert result.code in (1, 2), result.stderr
    text = _outputs(tmp_path / "state", result)
    assert PASSWORD not in text, [line for line in text.splitlines() if PASSWORD in line][:3]


def test_default_state_dir_parents_are_not_world_writable(seaweed: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in s3_env(seaweed, home).items() if k != "XDG_STATE_HOME"}
    src = write_random_file(tmp_path / "f.bin", 16 * MiB, seed=10)
    interrupted(seaweed, src, f"s3://{seaweed.bucket}/{seaweed.unique_key('xdg')}", None, env, preexec=umask_000)
    created = [home / ".local", home / ".local" / "state"]
    assert {p.name: oct(mode(p)) for p in created} == {p.name: oct(0o700) for p in created}
