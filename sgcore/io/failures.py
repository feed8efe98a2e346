"""Which failures of reading an input become an error row, named once.

An image that cannot be read (missing, refused, a store that fails) or decoded
(not an image, a damaged tar, a broken Parquet footer) is a fact about the data:
it becomes an error row with the message (contract 4), and the job goes on.
Anything else raised on the way (a ``TypeError``, ``AttributeError`` or
``NameError`` in our code) is a bug: it propagates and fails the shard, which is
retried and then recorded as failed with the traceback in the log, instead of
hiding in the error column of every image. So the readers catch only these
tuples, never ``Exception``.
"""

from __future__ import annotations

import importlib.util
import lzma
import tarfile
import zlib

import pyarrow as pa
from PIL import Image


class DecodeError(ValueError):
    """The bytes are not an image we can use; the message says why."""


def _botocore_errors() -> tuple[type[BaseException], ...]:
    # s3fs turns a refused request (botocore's ClientError) into an OSError, but
    # botocore's own errors (BotoCoreError: ParamValidationError for a malformed bucket
    # name, say) reach us as they are; ClientError is listed for any call that passes
    # it through. Imported only where installed: then s3fs, and so botocore, reads s3://.
    if importlib.util.find_spec("botocore") is None:
        return ()
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _http_errors() -> tuple[type[BaseException], ...]:
    # fsspec's HTTP filesystem raises aiohttp's ClientResponseError for an answer
    # other than 404 (403, 410, 5xx past the retries): the object's, not our bug.
    if importlib.util.find_spec("aiohttp") is None:
        return ()
    from aiohttp import ClientResponseError

    return (ClientResponseError,)


# Storage: the object cannot be read. OSError covers FileNotFoundError and
# PermissionError (what fsspec backends make of a missing or refused object, s3fs
# and gcsfs included), timeouts (TimeoutError is socket.timeout, asyncio's and
# fsspec's FSTimeoutError), ConnectionError, requests' RequestException, pyarrow's
# ArrowIOError, and the errors of sgcore.io._retry: StorageUnavailable (transient
# errors past the retry budget, which the readers re-raise to fail the shard) and
# StorageAuthError (credentials). The transient errors of the HTTP stacks that are
# not OSErrors (aiohttp, urllib3) become StorageUnavailable in retry_call.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, *_botocore_errors(), *_http_errors())

# Decoding: the bytes were read but are not what the layout needs. DecodeError
# (an image, see sgcore.io.decode), a tar that is damaged or cut short (TarError,
# EOFError; zlib/lzma errors where tarfile lets them through), a Parquet file that
# is not one or is damaged (ArrowException: ArrowInvalid, ArrowNotImplementedError,
# ...; never a plain TypeError of ours, only pyarrow's ArrowTypeError).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    DecodeError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, pa.ArrowException,
)

# What reading an input may raise for a reason of the data or the store: an error row.
READ_ERRORS: tuple[type[BaseException], ...] = STORAGE_ERRORS + DECODE_ERRORS

# What PIL raises for bytes it cannot decode: truncated data and unknown formats are
# OSErrors (UnidentifiedImageError), broken chunks SyntaxError, impossible sizes and
# "Decompressed Data Too Large" ValueError, oversized images the bomb guard's error or
# warning (made an error by decode_image). decode_image turns them into DecodeError.
PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning,
)

__all__ = ["DECODE_ERRORS", "PIL_ERRORS", "READ_ERRORS", "STORAGE_ERRORS", "DecodeError"]
