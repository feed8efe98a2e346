"""Credentials inside URLs, kept out of every artifact and message.

A URL may carry a secret in two places: its userinfo (``https://user:password@host/...``)
and its query (a presigned S3 URL's ``X-Amz-Signature``, a GCS signed URL's
``X-Goog-Signature``, an Azure SAS ``sig``, a ``token`` or ``key``). :func:`redact_url`
replaces those with ``***`` and keeps everything else, so the scheme, host, path and
the other parameters (which name the object) stay readable and stable;
:func:`redact_text` does the same for every URL and query inside free text (an
exception's message, a log line, a JSON document). Everything the job records or
prints — the manifest, each row's ``source`` and ``error``, log and progress lines,
error messages, the audit's ``summary.json`` and ``index.html`` — passes through them.

A redacted URL no longer reaches its object: the credentials have to come again,
from the command line or, better, from the environment or ``--storage-options``
(:func:`is_redacted` lets a reader say so instead of sending ``***`` to a server).

Standard library only, so every layer may import it (like :mod:`sgcore.errors`).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Query parameters whose value is a credential (compared lower-case): presigned S3
# (SigV4 and SigV2), GCS signed URLs, Azure SAS, OAuth and API keys.
SECRET_PARAMETERS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "x-goog-security-token",
    "signature", "sig", "awsaccesskeyid",
    "token", "access_token", "id_token", "refresh_token", "session_token", "security_token",
    "password", "passwd", "pwd", "secret", "client_secret",
    "key", "apikey", "api_key", "api-key", "auth", "authorization", "credential", "credentials",
})
# ... and any parameter whose name ends like one (``my_token``, ``x-api-secret``).
_SECRET_SUFFIXES = ("token", "secret", "password", "signature", "credential", "apikey", "api_key", "api-key")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside free text: a scheme, then up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# One query parameter: its separator (``?``, ``&``, or ``;`` as in an HTML ``&amp;``), name and value.
_PARAMETER = re.compile(r"(?P<sep>[?&;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#;\s'\"<>`]*)")


def redact_url(url: str) -> str:
    """``url`` with its userinfo and credential-like query values replaced by ``***``.

    Everything else is kept as it was (no normalisation), so a URL without
    credentials comes back unchanged, and so does a local path.

    >>> redact_url("https://u:pw@host/a.jpg?X-Amz-Signature=abc&versionId=3")
    'https://***@host/a.jpg?X-Amz-Signature=***&versionId=3'
    """
    if not isinstance(url, str):
        return url
    m = _SCHEME.match(url)
    if m is None:
        return url  # a local path: no userinfo, no query
    head, rest = url[: m.end()], url[m.end():]
    end = _userinfo_end(rest)
    if end is not None:
        rest = MASK + "@" + rest[end:]
    path, q, query = rest.partition("?")
    return head + path + (q + _redact_parameters("?" + query)[1:] if q else "")


def redact_text(text: str) -> str:
    """Every URL and every credential-like ``?name=value`` / ``&name=value`` in ``text``, redacted."""
    if not isinstance(text, str):
        return text
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _redact_parameters(text)


def redact_value(value: Any) -> Any:
    """``value`` with :func:`redact_text` applied to every string in it (dict keys too, lists, tuples)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def has_userinfo(url: str) -> bool:
    """Whether ``url`` carries ``user[:password]@`` before its host."""
    m = _SCHEME.match(url) if isinstance(url, str) else None
    return m is not None and _userinfo_end(url[m.end():]) is not None


def is_redacted(url: str) -> bool:
    """Whether ``url`` is one this module redacted (its credentials are ``***``)."""
    if not isinstance(url, str) or MASK not in url:
        return False
    m = _SCHEME.match(url)
    if m is not None and url[m.end():].startswith(MASK + "@"):
        return True
    return any(p.group("value") == MASK and _is_secret(p.group("name")) for p in _PARAMETER.finditer(url))


def _userinfo_end(rest: str) -> int | None:
    """Where the host starts after ``user[:password]@`` at the start of ``rest`` (None: no userinfo).

    The user name holds no ``/`` (RFC 3986); a pasted password may (AWS secret
    keys do), unless what precedes its first ``/`` is a port: ``host:8080/a@b.jpg``
    is a host, a port and a path with an ``@``, not credentials.
    """
    at = rest.find("@")
    if at < 0:
        return None
    stop = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    if at > stop:
        return None
    userinfo = rest[:at]
    if any(c.isspace() for c in userinfo):
        return None
    user, colon, password = userinfo.partition(":")
    if "/" in user:
        return None
    if colon and "/" in password and password.split("/", 1)[0].isdigit():
        return None
    if not colon and "/" in userinfo:
        return None
    return at + 1


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_PARAMETERS or lowered.endswith(_SECRET_SUFFIXES)


def _redact_parameters(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        if not _is_secret(m.group("name")) or not m.group("value"):
            return m.group(0)
        return f"{m.group('sep')}{m.group('name')}={MASK}"

    return _PARAMETER.sub(one, text)


__all__ = ["MASK", "SECRET_PARAMETERS", "has_userinfo", "is_redacted", "redact_text", "redact_url", "redact_value"]
