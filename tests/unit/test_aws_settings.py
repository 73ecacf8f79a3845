"""Where S3 credentials and region come from: the quick env-only path must give what
botocore's own chain gives, and step aside whenever the chain could answer differently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest

from uploader.aws import s3_protocol
from uploader.config import UploadOptions
from uploader.errors import UsageError

KEY, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    config = tmp_path / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return config


def protocol(tmp_path: Path, **extra: str) -> object:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    return s3_protocol(UploadOptions(source=str(src), destination="s3://bkt/key", **extra), str(src))


def chain() -> tuple[tuple[str, str, str | None], str | None]:
    """What botocore's own chain answers in this environment."""
    session = botocore.session.Session()
    creds = session.get_credentials().get_frozen_credentials()
    return (creds.access_key, creds.secret_key, creds.token), session.get_config_variable("region")


@pytest.mark.parametrize("region", [None, "eu-west-3"])
def test_env_keys_without_a_config_file_match_the_chain(aws_env: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, region: str | None) -> None:
    if region:
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    proto = protocol(tmp_path)
    creds, chain_region = chain()
    frozen = proto._credentials.get_frozen_credentials()  # type: ignore[attr-defined]
    assert (frozen.access_key, frozen.secret_key, frozen.token) == creds
    assert proto.region == (chain_region or "us-east-1")  # type: ignore[attr-defined]


@pytest.mark.parametrize("config", ["", "[default]\nregion = sa-east-1\n"], ids=["env-only", "config-file"])
def test_aws_region_wins_over_aws_default_region_and_the_profile(
        aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    # AWS CLI v2's order (its docs: AWS_REGION overrides AWS_DEFAULT_REGION and the profile).
    if config:
        aws_env.write_text(config)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert protocol(tmp_path).region == "eu-west-1"  # type: ignore[attr-defined]
    assert protocol(tmp_path, region="us-west-2").region == "us-west-2"  # type: ignore[attr-defined]


def test_an_unreadable_config_file_is_a_usage_error(aws_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env.write_text("[profile p1\nregion = x\n")
    monkeypatch.setenv("AWS_PROFILE", "p1")
    with pytest.raises(UsageError, match="AWS_CONFIG_FILE"):
        protocol(tmp_path)


def test_a_config_file_is_read_through_the_chain(aws_env: Path, tmp_path: Path) -> None:
    aws_env.write_text("[default]\nregion = sa-east-1\n")
    assert protocol(tmp_path).region == "sa-east-1"  # type: ignore[attr-defined]


def test_a_named_profile_is_read_through_the_chain(aws_env: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env.write_text("[profile other]\nregion = ca-central-1\n")
    monkeypatch.setenv("AWS_PROFILE", "other")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_env))
    assert protocol(tmp_path).region == "ca-central-1"  # type: ignore[attr-defined]


def test_env_keys_without_a_config_file_skip_botocore_session(aws_env: Path, tmp_path: Path) -> None:
    # The point of the quick path: a resume starts ~0.1 s sooner without botocore.session.
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    code = ("import sys; from uploader.aws import s3_protocol; from uploader.config import UploadOptions; "
            f"s3_protocol(UploadOptions(source={str(src)!r}, destination='s3://bkt/k'), {str(src)!r}); "
            "print('botocore.session' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


SERVICES_CONFIG = """[default]
region = us-east-1
services = local
endpoint_url = http://profile-wide.example:9000

[services local]
s3 =
  endpoint_url = http://s3-only.example:8333
"""


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "http://s3-only.example:8333/bkt/key"),  # [services] s3 before the profile's own endpoint_url
    ({"AWS_ENDPOINT_URL": "http://global-env.example:1"}, "http://global-env.example:1/bkt/key"),
    ({"AWS_ENDPOINT_URL_S3": "http://s3-env.example:2", "AWS_ENDPOINT_URL": "http://global-env.example:1"},
     "http://s3-env.example:2/bkt/key"),
    ({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": "http://global-env.example:1"},
     "https://bkt.s3.us-east-1.amazonaws.com/key"),
], ids=["services-section", "env-global", "env-s3", "ignore-configured"])
def test_endpoint_precedence_is_the_aws_sdks(aws_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            env: dict[str, str], expected: str) -> None:
    """AWS SDKs and tools reference guide, "Service-specific endpoints": AWS_ENDPOINT_URL_<SERVICE>,
    AWS_ENDPOINT_URL, the profile's `services` section, the profile's endpoint_url; with
    ignore_configured_endpoint_urls none of them (only an explicit --endpoint-url)."""
    aws_env.write_text(SERVICES_CONFIG)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert protocol(tmp_path).object_url == expected  # type: ignore[attr-defined]
    explicit = protocol(tmp_path, endpoint_url="http://127.0.0.1:8333")
    assert explicit.object_url == "http://127.0.0.1:8333/bkt/key"  # type: ignore[attr-defined]


def test_ignore_configured_endpoint_urls_in_the_profile(aws_env: Path, tmp_path: Path) -> None:
    aws_env.write_text(SERVICES_CONFIG.replace("region = us-east-1\n",
                                               "region = us-east-1\nignore_configured_endpoint_urls = true\n"))
    assert protocol(tmp_path).object_url == "https://bkt.s3.us-east-1.amazonaws.com/key"  # type: ignore[attr-defined]
