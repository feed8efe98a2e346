"""fsspec access with errors that name the URL and the fix."""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from sgcore.errors import InputError

# Protocols whose fsspec backend lives in a separate package.
_BACKENDS = {
    "s3": ("s3fs", "sgcore[s3]"),
    "s3a": ("s3fs", "sgcore[s3]"),
    "gs": ("gcsfs", "gcsfs"),
    "gcs": ("gcsfs", "gcsfs"),
    "az": ("adlfs", "adlfs"),
    "abfs": ("adlfs", "adlfs"),
}


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolves ``url`` to (filesystem, path), failing with the package to install."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as e:
        module, extra = _BACKENDS.get(protocol, (protocol, protocol))
        raise ImportError(f"reading {protocol}:// needs {module}: pip install '{extra}'") from e
    except ValueError as e:
        raise InputError(f"cannot open {url}: {e}") from e


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
