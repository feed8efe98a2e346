"""fsspec access with errors that name the URL and the fix, and retried reads."""

from __future__ import annotations

import io
import re
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from sgcore.errors import ConfigError, InputError
from sgcore.io._retry import RetryPolicy, retry_call
from sgcore.redact import has_userinfo, is_redacted, redact_text, redact_url

# Protocols whose fsspec backend lives in a separate package.
_BACKENDS = {
    "s3": ("s3fs", "sgcore[s3]"),
    "s3a": ("s3fs", "sgcore[s3]"),
    "gs": ("gcsfs", "gcsfs"),
    "gcs": ("gcsfs", "gcsfs"),
    "az": ("adlfs", "adlfs"),
    "abfs": ("adlfs", "adlfs"),
}

# Backends that build a client session lazily, with a ``connect()`` that builds it.
_SESSIONS = ("s3", "s3a")

# Protocols whose backend takes ``user:password@`` from the URL (HTTP basic auth, FTP, SSH);
# object stores do not: s3fs, gcsfs and adlfs would take it for part of the bucket's name.
_USERINFO_PROTOCOLS = ("http", "https", "ftp", "sftp", "ssh", "smb", "webdav")


def check_url_credentials(url: str) -> None:
    """Refuses a URL whose credentials cannot work: userinfo on an object store, or ``***``.

    Raises:
        ConfigError: one line, the URL redacted, with the fix.
    """
    if not isinstance(url, str):
        return
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if is_redacted(url):
        raise ConfigError(
            f"{url} was recorded with its credentials redacted (***); pass the full URL again, or give the "
            "credentials through the environment or --storage-options")
    if has_userinfo(url) and protocol not in _USERINFO_PROTOCOLS:
        raise ConfigError(
            f"{redact_url(url)}: {protocol}:// does not take credentials from the URL (user:secret@ would "
            "be read as part of the bucket name); remove them from the URL and pass them through the "
            "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...) or "
            "--storage-options '{\"key\": ..., \"secret\": ...}'")

# botocore's own rule for a bucket name (AWS's is stricter: 3-63 of a-z 0-9 . -), checked
# here so that a malformed name fails with one line naming the URL, not deep in a request.
_S3_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolves ``url`` to (filesystem, path), failing with the package to install.

    Errors name the URL with its credentials redacted (:mod:`sgcore.redact`).
    """
    check_url_credentials(url)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    options = storage_options or {}
    if protocol in ("s3", "s3a"):
        _check_bucket(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
        if options and protocol in _SESSIONS:
            # The backend only builds its client, and so only uses the options,
            # at the first request: build it now, so that a bad option fails
            # here with one line instead of deep inside the first listing.
            fs.connect()
    except ImportError as e:
        module, extra = _BACKENDS.get(protocol, (protocol, protocol))
        raise ImportError(f"reading {protocol}:// needs {module}: pip install '{extra}'") from e
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        if options:
            # The backend's message may quote an option's value, a secret: name the keys only.
            raise ConfigError(
                f"--storage-options were refused by the {protocol}:// filesystem ({type(e).__name__}) "
                f"for {redact_url(url)}; the options given: {', '.join(sorted(map(str, options)))}. Check their names "
                "and types against the backend's documentation (values are not shown: they may hold secrets)"
            ) from None
        if isinstance(e, ValueError):
            raise InputError(redact_text(f"cannot open {url}: {e}")) from e
        raise
    return fs, path


def _check_bucket(url: str) -> None:
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0]
    bucket = netloc.rpartition("@")[2]  # never echo what precedes an '@': it may be a secret
    if not bucket or bucket.startswith("arn:") or _S3_BUCKET.fullmatch(bucket):
        return
    shown = f"{scheme}://{'***@' if '@' in netloc else ''}{bucket}/{rest.split('/', 1)[1] if '/' in rest else ''}"
    raise InputError(f"{shown} names an invalid S3 bucket {bucket!r}: bucket names hold lowercase letters, "
                     "digits, '.' and '-' (3 to 63 characters); check the URL")


def full_url(fs: AbstractFileSystem, path: str) -> str:
    """The URL a user would type for ``path`` on ``fs`` (local paths stay plain)."""
    if is_local(fs):
        return path
    return fs.unstrip_protocol(path)


def is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(url: str, *parts: str) -> str:
    """Joins path segments onto a URL or a local path with '/'."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def read_bytes(fs: AbstractFileSystem, path: str, *, url: str,
               policy: RetryPolicy | None = None) -> bytes:
    """The whole object at ``path``, retrying transient errors (``url`` names it in errors)."""
    return bytes(retry_call(lambda: fs.cat_file(path), what=f"read {url}", policy=policy))


class RetryingReader(io.RawIOBase):
    """A read-only, seekable file that survives transient errors mid-stream.

    On a transient error it reopens the object and seeks back to where it was,
    so a long streamed read (a tar shard, a Parquet file) does not restart.
    """

    def __init__(self, fs: AbstractFileSystem, path: str, *, url: str,
                 policy: RetryPolicy | None = None):
        super().__init__()
        self._fs = fs
        self._path = path
        self._url = url
        self._policy = policy
        self._pos = 0
        self._f: Any = None
        retry_call(self._ensure_open, what=f"open {url}", policy=policy)

    def _ensure_open(self) -> Any:
        if self._f is None:
            f = self._fs.open(self._path, "rb")
            if self._pos:
                f.seek(self._pos)
            self._f = f
        return self._f

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # closing a broken connection may fail too; it is gone either way
                pass

    def _attempt(self, fn: Any) -> Any:
        try:
            return fn(self._ensure_open())
        except Exception:
            self._drop()
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        data = retry_call(lambda: self._attempt(lambda f: f.read(n)), what=f"read {self._url}",
                          policy=self._policy)
        k = len(data)
        buffer[:k] = data
        self._pos += k
        return k

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        else:
            target = retry_call(lambda: self._attempt(lambda f: f.seek(offset, whence)),
                                what=f"seek {self._url}", policy=self._policy)
        if self._f is not None and whence != io.SEEK_END:
            try:
                self._f.seek(target)
            except Exception:
                self._drop()
        self._pos = int(target)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._drop()
        super().close()


def open_input(fs: AbstractFileSystem, path: str, *, url: str, buffer_size: int = 1 << 20,
               policy: RetryPolicy | None = None) -> io.BufferedReader:
    """A buffered, retrying reader over ``path`` (see :class:`RetryingReader`)."""
    return io.BufferedReader(RetryingReader(fs, path, url=url, policy=policy), buffer_size=buffer_size)
