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
from sgcore.redact import redact_text

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
    status = getattr(e, "status", None)  # aiohttp's ClientResponseError (http:// inputs)
    if isinstance(status, int) and any(c.__name__ == "ClientResponseError" for c in type(e).__mro__):
        return status >= 500 or status in (408, 429)
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
    what = redact_text(what)
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
    text = redact_text(" ".join(str(e).split())) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class StorageUnavailable(OSError):
    """Storage kept failing transiently (timeouts, 5xx, throttling) past the retry budget.

    Not a property of any one image: a shard that meets it fails as a whole (and is
    retried, then redone by the next run); it never becomes a committed error row.
    """


class StorageTimeout(StorageUnavailable, TimeoutError):
    """:class:`StorageUnavailable` whose last error was a timeout."""


class StorageConnectionError(StorageUnavailable, ConnectionError):
    """:class:`StorageUnavailable` whose last error was a refused or reset connection."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, within a time budget.

    Attempt ``k`` (from 0) that fails transiently waits a uniform random time in
    ``[0, min(max_delay, base_delay * 2**k)]`` before the next one, for at most
    ``attempts`` attempts and, with ``max_elapsed``, for no longer than that many
    seconds after the first attempt started. 5 attempts, 0.2 s base and a 4 s cap
    wait at most 0.2+0.4+0.8+1.6 = 3 s in all; the job's policy
    (:func:`storage_policy`) retries for ``--storage-retry-s`` seconds instead.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 4.0
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1; got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(
                f"base_delay and max_delay must be >= 0; got {self.base_delay} and {self.max_delay}"
            )
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must be >= 0; got {self.max_elapsed}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2.0**attempt))
        return (rng or random).uniform(0.0, cap)


# How long the job keeps retrying one storage call by default: S3 outages of a
# minute or two happen; a budget of seconds turned them into lost shards.
DEFAULT_STORAGE_RETRY_S = 120.0


def storage_policy(seconds: float) -> RetryPolicy:
    """The job's policy: retry transient errors for ``seconds``, backoff capped at 10 s."""
    if seconds < 0:
        raise ValueError(f"storage retry budget must be >= 0 seconds; got {seconds}")
    return RetryPolicy(attempts=1_000_000, base_delay=0.2, max_delay=min(10.0, max(seconds / 4, 0.01)),
                       max_elapsed=float(seconds))


DEFAULT_POLICY = storage_policy(DEFAULT_STORAGE_RETRY_S)
_current: list[RetryPolicy] = [DEFAULT_POLICY]


def set_default_policy(policy: RetryPolicy) -> RetryPolicy:
    """Makes ``policy`` the one storage calls of this process use when given none.

    The job sets it in the driver and in each worker from ``--storage-retry-s``
    (a process-wide knob, as the storage calls sit deep in the readers).

    Returns:
        The previous policy (to restore it).
    """
    previous = _current[0]
    _current[0] = policy
    return previous


def default_policy() -> RetryPolicy:
    """The policy storage calls use when given none (see :func:`set_default_policy`)."""
    return _current[0]


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Calls ``fn()``, retrying transient errors per ``policy``.

    Args:
        fn: the storage call, with no arguments.
        what: what it does, with the URL ("read s3://b/k"); goes into logs and errors.
        policy: attempts, backoff and time budget (default: :func:`default_policy`).
        sleep: injectable for tests.

    Raises:
        StorageAuthError: missing or refused credentials (see :func:`storage_auth_error`),
            at once, naming ``what`` and the fix.
        StorageUnavailable: the last transient error once the attempts or the time
            budget are spent (a ``TimeoutError``/``ConnectionError`` where the error
            was one), with the URL, the count and the seconds in the message.
        The permanent error at once.
    """
    policy = policy or default_policy()
    what = redact_text(what)  # it goes into logs and messages
    start = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as e:
            auth = storage_auth_error(e, what)
            if auth is not None and auth is not e:
                raise auth from e
            if not is_transient(e):
                raise
            wait = policy.delay(attempt)
            elapsed = time.monotonic() - start
            out_of_time = policy.max_elapsed is not None and elapsed + wait > policy.max_elapsed
            if attempt + 1 >= policy.attempts or out_of_time:
                raise _gave_up(e, what, attempt + 1, elapsed) from e
            log.debug("%s: transient %s (attempt %d); retrying in %.2fs",
                      what, type(e).__name__, attempt + 1, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - loop always returns or raises


def _gave_up(e: Exception, what: str, attempts: int, elapsed: float) -> StorageUnavailable:
    message = (f"{what}: still failing after {attempts} attempts over {elapsed:.1f} s: "
               f"{type(e).__name__}: {_short(e)}")
    if isinstance(e, TimeoutError):
        return StorageTimeout(message)
    if isinstance(e, ConnectionError):
        return StorageConnectionError(message)
    return StorageUnavailable(message)


def is_storage_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a :class:`StorageUnavailable`."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, StorageUnavailable):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_STORAGE_RETRY_S",
    "RetryPolicy",
    "StorageAuthError",
    "StorageConnectionError",
    "StorageTimeout",
    "StorageUnavailable",
    "default_policy",
    "is_storage_unavailable",
    "is_transient",
    "retry_call",
    "set_default_policy",
    "storage_auth_error",
    "storage_policy",
]
