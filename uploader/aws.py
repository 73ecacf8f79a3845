"""Resolve AWS settings the way the AWS CLI does: options, then env, then profile files."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from uploader.config import REGION_NAME, UploadOptions
from uploader.errors import UsageError
from uploader.redact import redact_url
from uploader.targets.s3 import S3Location, S3Protocol


def _session(profile: str | None) -> Any:
    import botocore.session  # ~0.1 s more than signing needs: only when files must be read
    from botocore.exceptions import ConfigParseError, ProfileNotFound

    try:
        session = botocore.session.Session(profile=profile)
        session.get_scoped_config()  # raises ProfileNotFound early
        return session
    except ConfigParseError as exc:
        raise UsageError(f"{exc}: fix the file, or point AWS_CONFIG_FILE elsewhere") from None
    except ProfileNotFound:
        name = profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
        raise UsageError(f"AWS profile {name!r} not found in the AWS config files") from None


def _configured_endpoint(session: Any) -> str | None:
    """The AWS SDKs' order after --endpoint-url: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the
    s3 endpoint_url of the profile's [services NAME] section, the profile's endpoint_url;
    nothing at all when ignore_configured_endpoint_urls (or its env variable) is true."""
    env = os.environ
    scoped: dict[str, Any] = session.get_scoped_config() if session is not None else {}
    ignore = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or scoped.get("ignore_configured_endpoint_urls")
    if str(ignore).strip().lower() == "true":
        return None
    services: dict[str, Any] = {}
    if session is not None and scoped.get("services"):
        services = session.full_config.get("services", {}).get(scoped["services"], {})
    s3 = services.get("s3")
    from_services = s3.get("endpoint_url") if isinstance(s3, dict) else None
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or from_services or scoped.get("endpoint_url")


def _endpoint(options: UploadOptions, session: Any) -> str | None:
    url = options.endpoint_url or _configured_endpoint(session)
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


def _from_env_only(options: UploadOptions) -> Any:
    """Credentials straight from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when botocore's
    chain could not answer otherwise: no profile asked for and no config file (which could
    name a region or endpoint). Env keys come first in that chain, so the result is the same,
    without importing botocore.session (~0.1 s of a resume's start). None: use the chain."""
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret or options.profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE"):
        return None
    if os.path.exists(os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")):
        return None
    from botocore.credentials import Credentials

    return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None, method="env")


def _from_chain(session: Any) -> Any:
    from botocore.exceptions import BotoCoreError

    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise UsageError(f"could not load AWS credentials: {exc}") from None
    if credentials is None:
        raise UsageError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or use --profile with a configured profile"
        )
    return credentials


def s3_protocol(options: UploadOptions, source: str) -> S3Protocol:
    # The name the user typed, not the resolved `source`: a symlink uploads under its own name
    # (as aws-cli does), and abort, which has only the typed path, computes the same key.
    location = S3Location.parse(options.destination, options.source)
    credentials = _from_env_only(options)
    session = None if credentials is not None else _session(options.profile)
    # AWS_REGION first, as AWS CLI v2 and the other SDKs read it (botocore alone does not).
    region = options.region or os.environ.get("AWS_REGION")
    if session is not None:
        credentials = _from_chain(session)
        region = region or session.get_config_variable("region") or "us-east-1"
    else:
        region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if not REGION_NAME.fullmatch(str(region)):  # from AWS_REGION or a config file
        raise UsageError(f"region {region!r} is not a region name; check AWS_REGION, AWS_DEFAULT_REGION "
                         "and the profile's region (e.g. us-east-1)")
    return S3Protocol(
        location,
        endpoint_url=_endpoint(options, session),
        region=str(region),
        credentials=credentials,
        source=source,
        checksum=options.checksum,
        content_type=options.media_type,
        metadata=options.metadata,
    )
