"""Resolve AWS settings the way the AWS CLI does: options, then env, then profile files."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import botocore.session
from botocore.exceptions import BotoCoreError, ProfileNotFound

from uploader.config import UploadOptions
from uploader.errors import UsageError
from uploader.redact import redact_url
from uploader.targets.s3 import S3Location, S3Protocol


def _session(profile: str | None) -> Any:
    try:
        session = botocore.session.Session(profile=profile)
        session.get_scoped_config()  # raises ProfileNotFound early
        return session
    except ProfileNotFound:
        name = profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        raise UsageError(f"AWS profile {name!r} not found in the AWS config files") from None


def _endpoint(options: UploadOptions, session: Any) -> str | None:
    url = (
        options.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or session.get_scoped_config().get("endpoint_url")
    )
    if not url:
        return None
    try:
        parts = urlsplit(str(url))
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UsageError(f"--endpoint-url {redact_url(str(url))}: not a valid URL ({exc})") from None
    if parts.username or parts.password:
        raise UsageError(f"--endpoint-url {redact_url(str(url))}: must not carry user:password; S3 takes "
                         "credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--endpoint-url {redact_url(str(url))}: must start with http:// or https:// "
                         "(e.g. http://127.0.0.1:8333)")
    return str(url)


def s3_protocol(options: UploadOptions, source: str) -> S3Protocol:
    location = S3Location.parse(options.destination)
    session = _session(options.profile)
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise UsageError(f"could not load AWS credentials: {exc}") from None
    if credentials is None:
        raise UsageError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or use --profile with a configured profile"
        )
    region = options.region or session.get_config_variable("region") or "us-east-1"
    return S3Protocol(
        location,
        endpoint_url=_endpoint(options, session),
        region=str(region),
        credentials=credentials,
        source=source,
        checksum=options.checksum,
    )
