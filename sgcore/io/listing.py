"""Listing an input: the files under one or several URLs, their common root, their stamps.

Shard ids and image ids are formed from these names, relative to the root, so
the same input gives the same ids on every run; the stamps (size plus ETag or
modification time) give each shard the identity of its input bytes.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sgcore.errors import InputError
from sgcore.io._fs import full_url, is_local, url_to_fs
from sgcore.io._retry import retry_call, storage_auth_error
from sgcore.io._tree import list_s3, walk_local
from sgcore.io.failures import STORAGE_ERRORS
from sgcore.io.layouts.base import Listing, Root, ShardSpec
from sgcore.io.layouts.names import Names, Stamps

_GLOB_CHARS = ("*", "?", "[")


def _split_urls(url: str | Sequence[str]) -> list[str]:
    pieces = url.split(",") if isinstance(url, str) else list(url)
    out = [p.strip() for p in pieces if p and p.strip()]
    if not out:
        raise InputError(f"input must name at least one URL or path; got {url!r}")
    return out


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def list_input(url: str | Sequence[str], storage_options: dict[str, Any] | None) -> Listing:
    """Lists a prefix, a file, a glob pattern, or several of those (a sequence or one string with commas).

    Names are relative to the longest common folder (the folder itself for a
    single prefix), sorted; files of every kind are listed, the layouts pick theirs.
    An ``http(s)://`` URL is a file, or an index page (an HTML listing such as
    ``python -m http.server``'s, nginx's or Apache's) whose links below it are its
    files and sub-folders; the URLs of a list must then share one host.

    Raises:
        InputError: a URL (one of a list included) does not exist or cannot be
            listed, the URLs mix protocols, or credentials are missing or refused
            (:class:`StorageAuthError`).
    """
    urls = _split_urls(url)
    protocols = {_protocol(u) for u in urls}
    if len(protocols) > 1:
        raise InputError(f"input URLs must share one protocol; got {', '.join(sorted(protocols))}")
    if len(urls) == 1 and (fast := _list_folder(urls[0], storage_options, url)) is not None:
        return fast
    fs: Any = None
    files: dict[str, dict[str, Any]] = {}
    dirs: list[str] = []
    globbed = False
    for u in urls:
        fs, path = url_to_fs(u, storage_options)
        found, folders, was_glob = _expand(fs, path, u)
        if not found and not folders:
            # One missing URL of a list must not shrink the dataset silently.
            raise InputError(f"input {u} does not exist; check the URL and credentials")
        files.update(found)
        dirs.extend(folders)
        globbed = globbed or was_glob
    if len(urls) == 1 and len(dirs) == 1 and not globbed:
        root = dirs[0].rstrip("/")
    else:
        parents = [posixpath.dirname(f) for f in files] + [d.rstrip("/") for d in dirs]
        root = _common_dir(parents)
    if _is_http(fs) and not urlsplit(root).netloc:
        raise InputError(f"input URLs {', '.join(urls)} are on several hosts; HTTP(S) inputs must share one "
                         "host (run one job per host)")
    names = sorted(_relative(p, root) for p in files)
    stamps = {_relative(p, root): st for p, info in files.items() if (st := _stamp(info)) is not None}
    first = urls[0]
    root_url = full_url(fs, root) if "://" not in first else _with_protocol(first, fs, root)
    shown = url if isinstance(url, str) else ", ".join(url)
    return Listing(root=Root(fs=fs, path=root, url=root_url), names=names, stamps=stamps, shown=shown)


def _list_folder(url: str, storage_options: dict[str, Any] | None, given: str | Sequence[str]) -> Listing | None:
    """One folder listed compactly, as :func:`list_input` would list it: a local folder, or an S3 prefix.

    None where this does not apply (a file, a glob, another store) or anything
    goes wrong: :func:`list_input` then lists the URL the general way (and words the error).
    """
    fs, path = url_to_fs(url, storage_options)
    if _has_magic(path):
        return None  # a glob, or a folder named like one: the general listing tells them apart
    root = path.rstrip("/")
    protocol = _protocol(url)
    if is_local(fs):
        table = walk_local(root) if root and os.path.isdir(root) else None
    elif protocol in ("s3", "s3a") and root:
        try:
            if fs.isfile(path):
                return None
        except Exception:  # missing credentials included: the general listing words it
            return None
        table = list_s3(fs, root, name=lambda p: _relative(p, root), stamp=_stamp, shown=url)
    else:
        return None
    if table is None:
        return None
    root_url = full_url(fs, root) if "://" not in url else _with_protocol(url, fs, root)
    shown = given if isinstance(given, str) else ", ".join(given)
    return Listing(root=Root(fs=fs, path=root, url=root_url), names=table.view(), stamps=Stamps(table),
                   shown=shown)


def _expand(fs: Any, path: str, url: str) -> tuple[dict[str, dict[str, Any]], list[str], bool]:
    """(files -> their info, listed folders, whether it was a glob) for one URL: a folder, a file or a glob.

    A path that exists is taken as it is, even with ``*``, ``?`` or ``[`` in
    its name (a folder ``weird[1]``); only a path that does not exist is a
    glob pattern (for HTTP, ``?`` starts a query, never a pattern).
    """
    http = _is_http(fs)
    try:
        if _has_magic(path, http=http) and not fs.exists(path):
            matches = dict(sorted(fs.glob(path, detail=True).items()))
            if not matches:
                raise InputError(f"no files match {url}")
            files: dict[str, dict[str, Any]] = {}
            dirs: list[str] = []
            for m, info in matches.items():
                if info.get("type") == "directory" or (info.get("type") is None and fs.isdir(m)):
                    files.update(retry_call(lambda m=m: fs.find(m, withdirs=False, detail=True),
                                            what=f"list {url}"))
                    dirs.append(m)
                else:
                    files[m] = info
            return files, dirs, True
        if http:
            return _expand_http(fs, path, url)
        if fs.isfile(path):
            return {path: fs.info(path)}, [], False
        found = retry_call(lambda: fs.find(path.rstrip("/"), withdirs=False, detail=True), what=f"list {url}")
        if not found and not fs.exists(path):
            return {}, [], False
        return dict(found), [path], False
    except InputError:
        raise  # already names the URL and the fix (a StorageAuthError included)
    except FileNotFoundError as e:
        raise InputError(f"input {url} does not exist; check the URL and credentials") from e
    except STORAGE_ERRORS as e:
        auth = storage_auth_error(e, f"list {url}")
        if auth is not None:
            raise auth from e
        if isinstance(e, PermissionError):
            raise InputError(f"input {url} is not readable: {e}; check credentials") from e
        # Anything else the store answered (an OSError, an HTTP status, botocore's
        # ParamValidationError for a malformed bucket name): the input's, one line.
        raise InputError(f"cannot list input {url}: {type(e).__name__}: {_one_line(e)}") from e


def _expand_http(fs: Any, path: str, url: str) -> tuple[dict[str, dict[str, Any]], list[str], bool]:
    """One HTTP(S) URL: an index page whose links below it fsspec lists (recursively), else one file.

    fsspec's ``HTTPFileSystem.ls`` reads the links of an HTML page (a file that is
    not HTML has none, and only its headers are read); a 404 is ``FileNotFoundError``.
    """
    entries = retry_call(lambda: fs.ls(path, detail=True), what=f"list {url}")
    if not entries:
        return {path: retry_call(lambda: fs.info(path), what=f"read {url}")}, [], False
    found = retry_call(lambda: fs.find(path, withdirs=False, detail=True), what=f"list {url}")
    return dict(found), [path], False


def _is_http(fs: Any) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"http", "https"} & set(protocols))


def _has_magic(path: str, *, http: bool = False) -> bool:
    return any(c in path for c in _GLOB_CHARS if not (http and c == "?"))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _common_dir(paths: list[str]) -> str:
    if not paths:
        return ""
    split = [p.strip("/").split("/") if p.strip("/") else [] for p in paths]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if all(x == parts[0] for x in parts):
            common.append(parts[0])
        else:
            break
    lead = "/" if paths[0].startswith("/") else ""
    return lead + "/".join(common)


def content_identity(spec: ShardSpec, stamps: Mapping[str, str]) -> str | None:
    """A hash of the listed size and stamp of each input file of ``spec`` (None if unknown)."""
    parts = []
    for f, stamp in _file_stamps(spec, stamps):
        if stamp is None:
            return None
        parts.append(f"{f}\0{stamp}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _file_stamps(spec: ShardSpec, stamps: Mapping[str, str]) -> Iterator[tuple[str, str | None]]:
    """(file, stamp) of each input file of ``spec``; a compact range of names carries its stamps."""
    if spec.file is None and isinstance(spec.members, Names):
        return zip(spec.members, spec.members.stamps(), strict=True)
    files = [spec.file] if spec.file is not None else list(spec.members)
    return ((f, stamps.get(f)) for f in files)


def _stamp(info: dict[str, Any]) -> str | None:
    """Size plus what changes when the bytes do: an ETag/checksum, else the modification time."""
    size = info.get("size")
    for key in ("ETag", "etag", "md5Hash", "md5", "crc32c", "content_md5"):
        if info.get(key):
            return f"{size}:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        if info.get(key) is not None:
            value = info[key]
            return f"{size}:{value.isoformat() if hasattr(value, 'isoformat') else value}"
    return None


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def _with_protocol(url: str, fs: Any, root: str) -> str:
    protocol = url.split("://", 1)[0]
    if protocol == "file" or "://" in root:  # HTTP paths are whole URLs already
        return root
    return f"{protocol}://{root}"


__all__ = ["content_identity", "list_input"]
