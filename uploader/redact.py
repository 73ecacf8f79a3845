"""Keep secrets out of logs, errors, manifests and --json."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_QUERY_KEYS = {
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
    "access_token",
    "token",
    "sig",
}
SECRET_HEADERS = {"authorization", "x-amz-security-token", "proxy-authorization", "cookie"}
# The token after "Bearer"; every Credential= / Signature= value of a SigV4 header.
_BEARER_RE = re.compile(r"(?i)(bearer\s+|credential=|signature=)[^\s,;'\"]+")
_USERINFO_RE = re.compile(r"([a-z][a-z0-9+.\-]*://)[^/\s@'\"]+@", re.IGNORECASE)
# A URL ends before whitespace, quotes and the punctuation a sentence puts after it.
_URL_RE = re.compile(r"https?://[^\s'\"<>]+[^\s'\"<>;,.)]")


def redact_url(url: str) -> str:
    """Drop user:password and secret query values; keep the rest readable."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparsable: keep only what cannot hold a secret
        return re.sub(r"//[^/@]*@", "//", url.split("?", 1)[0])
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode(
            [(k, "REDACTED" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
        )
    else:
        query = ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("REDACTED" if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def redact_text(text: str) -> str:
    """Best effort for free text such as exception messages that embed URLs or headers."""
    text = _BEARER_RE.sub(lambda m: m.group(1) + "REDACTED", text)
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    # Any other scheme (s3://, tus+https://, procore://) may carry user:password@ too.
    return _USERINFO_RE.sub(r"\1", text)
