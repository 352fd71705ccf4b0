"""Credentials never leave the Git edge: userinfo is cut out of every URL shown.

A fleet repository URL may carry a token (``https://user:TOKEN@host/fleet.git``). Kernex
hands the URL to git and to nothing else: every message, log line, metric, exception
text and response shows it through ``redact_url`` (one URL) or ``redact_text`` (free
text such as git's stderr, which may echo the URL).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

# scheme://userinfo@ — userinfo runs to the last '@' before the host (a token may itself
# hold an '@'), and stops at whitespace, quotes, '/' and anything that ends a URL in text.
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s'\"<>`]*@")


def redact_url(url: str) -> str:
    """``url`` with any userinfo (user, password, token) replaced by ``***``.

    ``https://user:TOKEN@host/fleet.git`` becomes ``https://***@host/fleet.git``; URLs
    without userinfo, local paths and scp-like SSH addresses (``git@host:fleet.git``,
    whose user is no secret) are returned unchanged.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split: fall back to the text rule
        return redact_text(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every ``scheme://user:secret@`` URL in it replaced."""
    if "@" not in text:
        return text
    return _USERINFO_IN_TEXT.sub(rf"\1{REDACTED}@", text)
