"""Retrying storage calls: transient errors get exponential backoff, permanent ones fail fast.

Object stores fail transiently all the time at scale (timeouts, 5xx, throttling
such as S3's ``SlowDown``). The AWS guidance for these is "retry with capped
exponential backoff and full jitter" (Brooker, "Exponential Backoff And
Jitter", AWS Architecture Blog, 2015). A missing object or a refused
credential will not get better by waiting, so those fail at once.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sgcore.errors import InputError

log = logging.getLogger("sgcore")

T = TypeVar("T")

# Error codes in S3-style responses (botocore ClientError.response) that mean "try again".
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "ServerBusy", "BandwidthLimitExceeded",
    "500", "502", "503", "504", "429",
})
# OSError errnos that say "busy / network trouble", not "wrong request".
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EAGAIN", "EWOULDBLOCK", "EBUSY", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED",
        "EPIPE", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH", "EINTR", "EREMOTEIO",
    ) if hasattr(errno, name)
)
# Exception class names (anywhere in the MRO) of the HTTP stacks under s3fs/gcsfs/adlfs
# that are transient; matched by name so that none of those packages has to be imported.
_TRANSIENT_CLASS_NAMES = frozenset({
    "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError", "IncompleteRead", "ResponseParserError",
    "HTTPClientError", "FSTimeoutError", "ClientConnectionError", "ClientPayloadError",
    "ServerDisconnectedError", "ServerTimeoutError", "ClientOSError", "ProtocolError",
    "ChunkedEncodingError", "ServiceRequestError", "ServiceResponseError", "TransportError",
})
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    FileExistsError)
# botocore exceptions (by class name, botocore is never imported) that mean "no usable
# credentials on this machine": raised while signing, before any request is sent.
_NO_CREDENTIALS_CLASS_NAMES = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "ProfileNotFound", "NoAuthTokenError", "TokenRetrievalError", "SSOError",
    "UnknownCredentialError",
})
# S3 error codes of a request that was signed but refused: wrong, expired or
# unauthorised credentials (s3fs turns most of them into PermissionError).
AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "InvalidSecurity", "AllAccessDisabled",
    "AccountProblem", "NotSignedUp", "RequestTimeTooSkewed", "InvalidClientTokenId",
    "UnrecognizedClientException", "ExpiredTokenException", "AccessDeniedException", "403",
})
CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), or "
                   "--storage-options '{\"key\": ..., \"secret\": ...}'")
# Phrases of throttling/5xx messages, for backends that flatten errors into plain text.
_TRANSIENT_PHRASES = ("slowdown", "slow down", "reduce your request rate", "throttl",
                      "service unavailable", "internal error", "timed out", "timeout",
                      "too many requests", "connection reset", "503", "502", "504")


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` may succeed (timeouts, 5xx, throttling, resets).

    Permanent: missing objects, permission errors and other 4xx responses, and
    anything not recognised (retrying an unknown error only delays the report).
    The cause chain is followed, so an ``OSError`` that s3fs translated from a
    botocore ``ClientError`` is judged by the response it came from.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        verdict = _classify(e)
        if verdict is not None:
            return verdict
        e = e.__cause__ or e.__context__
    return False


def _classify(e: BaseException) -> bool | None:
    """True/False when ``e`` alone decides, None to look at its cause."""
    if isinstance(e, _PERMANENT_TYPES):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    if any(cls.__name__ in _TRANSIENT_CLASS_NAMES for cls in type(e).__mro__):
        return True
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = str(err.get("Code", ""))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in TRANSIENT_CODES:
            return True
        if isinstance(status, int):
            return status >= 500 or status == 429
        return False
    if isinstance(e, OSError):
        if e.errno in TRANSIENT_ERRNOS:
            return True
        if e.errno is not None and e.errno != errno.EIO:
            return False
        if e.__cause__ is None and e.__context__ is None:
            text = str(e).lower()
            return any(p in text for p in _TRANSIENT_PHRASES)
    return None


class StorageAuthError(InputError, PermissionError):
    """Object storage refused us for want of (valid) credentials; the message says how to fix it.

    An :class:`InputError` (the jobs exit 2 with its one line) and a
    ``PermissionError`` (storage code that handles permission errors still does).
    """


def storage_auth_error(exc: BaseException, what: str) -> StorageAuthError | None:
    """A :class:`StorageAuthError` for ``exc`` when it is a credentials problem, else None.

    Recognises botocore's "no credentials" family (``NoCredentialsError``,
    ``PartialCredentialsError``, ``ProfileNotFound``, ...) and S3 responses
    refusing the signed request (``InvalidAccessKeyId``, ``SignatureDoesNotMatch``,
    ``AccessDenied``, ``ExpiredToken``, ...), also behind the ``PermissionError``
    that s3fs makes of them (the cause chain is followed).

    Args:
        exc: the error raised by the storage call.
        what: what was being done, with the URL ("read s3://b/k").
    """
    if isinstance(exc, StorageAuthError):
        return exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & _NO_CREDENTIALS_CLASS_NAMES:
            detail = "" if "NoCredentialsError" in names else f" ({_short(e)})"
            return StorageAuthError(f"no AWS credentials to {what}{detail}: {CREDENTIALS_FIX}")
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            err = response.get("Error") or {}
            code = str(err.get("Code", ""))
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in AUTH_CODES or (status == 403 and code not in TRANSIENT_CODES):
                message = str(err.get("Message") or "").strip()
                reason = f"{code}: {message}" if message else code or "403 Forbidden"
                return StorageAuthError(
                    f"storage refused to {what} ({reason}): check the credentials "
                    f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --storage-options) "
                    "and that they may read it"
                )
        e = e.__cause__ or e.__context__
    return None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter.

    Attempt ``k`` (from 0) that fails transiently waits a uniform random time in
    ``[0, min(max_delay, base_delay * 2**k)]`` before the next one. The defaults
    (5 attempts, 0.2 s base, 4 s cap) wait at most 0.2+0.4+0.8+1.6 = 3 s in all.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1; got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(
                f"base_delay and max_delay must be >= 0; got {self.base_delay} and {self.max_delay}"
            )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2.0**attempt))
        return (rng or random).uniform(0.0, cap)


DEFAULT_POLICY = RetryPolicy()


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Calls ``fn()``, retrying transient errors per ``policy``.

    Args:
        fn: the storage call, with no arguments.
        what: what it does, with the URL ("read s3://b/k"); goes into logs and errors.
        policy: attempts and backoff.
        sleep: injectable for tests.

    Raises:
        StorageAuthError: missing or refused credentials (see :func:`storage_auth_error`),
            at once, naming ``what`` and the fix.
        The permanent error at once, or the last transient one after ``policy.attempts``
        tries, re-raised as the same type where it can be, with the URL and the count
        in the message.
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as e:
            auth = storage_auth_error(e, what)
            if auth is not None and auth is not e:
                raise auth from e
            if not is_transient(e):
                raise
            if attempt + 1 >= policy.attempts:
                raise _gave_up(e, what, policy.attempts) from e
            wait = policy.delay(attempt)
            log.debug("%s: transient %s (attempt %d); retrying in %.2fs",
                      what, type(e).__name__, attempt + 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - loop always returns or raises


def _gave_up(e: Exception, what: str, attempts: int) -> Exception:
    message = f"{what}: still failing after {attempts} attempts: {type(e).__name__}: {e}"
    for cls in (TimeoutError, ConnectionError, OSError):
        if isinstance(e, cls):
            return cls(message)
    return OSError(message)


__all__ = [
    "DEFAULT_POLICY",
    "RetryPolicy",
    "StorageAuthError",
    "is_transient",
    "retry_call",
    "storage_auth_error",
]
