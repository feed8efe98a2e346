"""Listing an input into shards, and reading a shard's samples, for every layout.

Layouts (chosen with ``input_format`` or detected from the listing):

- ``images``: a prefix of image files; a shard is a fixed-size group of files
  in sorted order; image id = the path relative to the input root; label =
  the parent folder, or the ``labels`` file.
- ``webdataset``: ``.tar`` shards (see :mod:`sgcore.io.webdataset`); one shard
  per tar; image id = ``<tar path>/<sample key>``.
- ``parquet``: tables with an image-bytes column (see
  :mod:`sgcore.io.parquet_input`); one shard per file, or per run of row groups
  in large files; image id = ``<file path>#<row index>`` or the ``id_column``.

Inputs may be a prefix, a single file, a glob pattern, or a comma-separated
list of those; paths are relative to the longest common folder. Shard ids and
image ids depend only on the input listing and settings, so the same input
gives the same ids on every run. Each object read is retried on transient
errors (:mod:`sgcore.io._retry`); an object that cannot be read (missing,
refused) becomes an error row, never a crashed job; a store that keeps failing
transiently past the retry budget raises :class:`StorageUnavailable`, which
fails the shard (it is retried, not committed as error rows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgcore.errors import InputError
from sgcore.io import parquet_input, webdataset
from sgcore.io._fs import full_url, join, open_input, read_bytes, url_to_fs
from sgcore.io._retry import StorageUnavailable, retry_call, storage_auth_error
from sgcore.io.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Geometry, decode_image
from sgcore.io.failures import READ_ERRORS, STORAGE_ERRORS, DecodeError
from sgcore.io.labels import LabelsFile, cached_labels, load_labels, lookup

log = logging.getLogger("sgcore")

INPUT_FORMATS = ("auto", "images", "webdataset", "parquet")
_GLOB_CHARS = ("*", "?", "[")
_FOOTER_THREADS = 16


@dataclass(frozen=True, kw_only=True)
class ShardSpec:
    """One unit of work: which files (or rows), relative to the input root.

    Attributes:
        shard_id: names the output part (``part-<shard_id>.parquet``).
        kind: ``images``, ``webdataset`` or ``parquet``.
        root: URL the members are relative to.
        members: image paths (images); the tar path (webdataset); the row ids
            ``<file>#<row>`` (parquet, or the file path when its footer could not
            be read).
        file: the tar/Parquet file, relative to ``root``.
        count: number of images when known (None for tars listed without --limit).
        row_groups, first_row, stop_row: the Parquet row groups of this shard, the
            file-level index of their first row, and the row to stop at.
        image_column, label_column, id_column: Parquet columns (None: detected).
        max_samples: read no more than this many samples of the tar (--limit).
        labels: per-member labels from a labels file (images layout).
        labels_url: the labels file, read by the decode task (tar/Parquet layouts).
        content: a hash of the size and modification stamp (mtime, S3 ETag) of the
            shard's input files as listed; recorded in its part, so that a resume
            notices replaced bytes under the same names.
    """

    shard_id: str
    kind: str
    root: str
    members: tuple[str, ...]
    file: str | None = None
    count: int | None = None
    row_groups: tuple[int, ...] | None = None
    first_row: int = 0
    stop_row: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    max_samples: int | None = None
    labels: tuple[str | None, ...] | None = None
    labels_url: str | None = None
    content: str | None = None  # identity of the input bytes (see _content_identity)

    @property
    def size(self) -> int:
        """Images in the shard (1 for a tar whose count is not known before reading it)."""
        return self.count if self.count is not None else len(self.members)


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """One input image before decoding; ``error`` set when it could not be read."""

    image_id: str
    source: str
    label: str | None
    data: bytes | None = None
    error: str | None = None


@dataclass(kw_only=True)
class DecodedShard:
    """A shard ready for the model: the decoded pixels plus one record per sample.

    ``records[i]["index"]`` is the row of ``images`` holding sample i, or -1
    when it failed (then ``records[i]["error"]`` says why).
    """

    shard_id: str
    images: np.ndarray  # (N_ok, H, W, 3) uint8
    records: list[dict[str, Any]] = field(default_factory=list)
    content: str | None = None  # the spec's input identity, recorded in the part

    @property
    def num_ok(self) -> int:
        return int(self.images.shape[0])


def plan_shards(
    url: str | Sequence[str],
    *,
    shard_size: int,
    limit: int | None = None,
    input_format: str = "auto",
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    labels: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[ShardSpec]:
    """Lists the input and cuts it into shards.

    Args:
        url: a prefix, a file, a glob pattern, or several of those (a sequence,
            or one string separated by commas).
        shard_size: images per shard (images layout; Parquet files with more
            rows are split at row-group boundaries).
        limit: only the first ``limit`` images, in listing order.
        input_format: ``auto``, ``images``, ``webdataset`` or ``parquet``.
        image_column, label_column, id_column: Parquet columns.
        labels: CSV/Parquet file mapping image path -> label.
        storage_options: fsspec options (credentials, endpoint).

    Files of other types are skipped, not failed.

    A labels file is read here, once: one that labels none of the planned images
    is refused, one that labels only some of them logs a warning with the count
    (tar samples are only checked for a matching ``<tar path>/`` prefix, and ids
    from an ``id_column`` not at all, as neither is known before reading).

    Raises:
        InputError: the input (or one URL of a list) does not exist, holds nothing
            usable, or mixes layouts under ``auto``; a named Parquet column is
            missing; the labels file is unusable or matches no image; storage
            credentials are missing or refused (:class:`StorageAuthError`).
        ValueError: a bad ``input_format``, ``shard_size`` or ``limit``.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}; got {input_format!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer; got {shard_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer; got {limit!r}")
    shown = url if isinstance(url, str) else ", ".join(url)
    fs, root, names, root_url, stamps = _list_input(url, storage_options)
    kind = _choose_layout(names, input_format, shown)
    # Read (and so check) the labels file here, before any work is scheduled.
    table = load_labels(labels, storage_options) if labels else None
    if kind == "images":
        shards = _plan_images(names, root_url, shown, shard_size=shard_size, limit=limit,
                              labels=table)
    elif kind == "webdataset":
        tars = [n for n in names if webdataset.is_tar(n)]
        shards = _plan_tars(fs, root, root_url, tars, limit=limit, labels=labels)
        if table is not None:
            _check_tar_labels(table, root_url, [s.file or s.members[0] for s in shards])
    else:
        files = [n for n in names if parquet_input.is_parquet(n) and not _hidden(n)]
        shards = _plan_parquet(fs, root, root_url, files, shard_size=shard_size, limit=limit,
                               image_column=image_column, label_column=label_column,
                               id_column=id_column, labels=labels)
        if table is not None and id_column is None:
            _check_labels(table, [(m, f"{join(root_url, m.rsplit('#', 1)[0])}#{m.rsplit('#', 1)[1]}")
                                  for s in shards for m in s.members if "#" in m])
    return [dataclasses.replace(s, content=_content_identity(s, stamps)) for s in shards]


def _content_identity(spec: ShardSpec, stamps: dict[str, str]) -> str | None:
    """A hash of the listed size and stamp of each input file of ``spec`` (None if unknown)."""
    files = [spec.file] if spec.file is not None else list(spec.members)
    parts = []
    for f in files:
        stamp = stamps.get(f)
        if stamp is None:
            return None
        parts.append(f"{f}\0{stamp}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


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


# ----------------------------------------------------------------- listing
def _split_urls(url: str | Sequence[str]) -> list[str]:
    pieces = url.split(",") if isinstance(url, str) else list(url)
    out = [p.strip() for p in pieces if p and p.strip()]
    if not out:
        raise InputError(f"input must name at least one URL or path; got {url!r}")
    return out


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def _list_input(url: str | Sequence[str],
                storage_options: dict[str, Any] | None) -> tuple[Any, str, list[str], str, dict[str, str]]:
    """(filesystem, root path, sorted names relative to root, root URL, name -> size/stamp)."""
    urls = _split_urls(url)
    protocols = {_protocol(u) for u in urls}
    if len(protocols) > 1:
        raise InputError(f"input URLs must share one protocol; got {', '.join(sorted(protocols))}")
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
    names = sorted(_relative(p, root) for p in files)
    stamps = {_relative(p, root): st for p, info in files.items() if (st := _stamp(info)) is not None}
    first = urls[0]
    root_url = full_url(fs, root) if "://" not in first else _with_protocol(first, fs, root)
    return fs, root, names, root_url, stamps


def _expand(fs: Any, path: str, url: str) -> tuple[dict[str, dict[str, Any]], list[str], bool]:
    """(files -> their info, listed folders, whether it was a glob) for one URL: a folder, a file or a glob.

    A path that exists is taken as it is, even with ``*``, ``?`` or ``[`` in
    its name (a folder ``weird[1]``); only a path that does not exist is a
    glob pattern.
    """
    try:
        if _has_magic(path) and not fs.exists(path):
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
        if isinstance(e, OSError):
            raise InputError(f"cannot list input {url}: {type(e).__name__}: {e}") from e
        raise


def _has_magic(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


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


def _choose_layout(names: list[str], input_format: str, url: str) -> str:
    images = sum(1 for n in names if _is_image(n))
    tars = sum(1 for n in names if webdataset.is_tar(n) and not _hidden(n))
    tables = sum(1 for n in names if parquet_input.is_parquet(n) and not _hidden(n))
    found = {"images": images, "webdataset": tars, "parquet": tables}
    if input_format != "auto":
        if not found[input_format]:
            what = {"images": f"image files ({', '.join(IMAGE_EXTENSIONS)})",
                    "webdataset": ".tar shards", "parquet": ".parquet files"}[input_format]
            raise InputError(f"no {what} under {url}; found {len(names)} other file(s)")
        return input_format
    present = [k for k, v in found.items() if v]
    if not present:
        raise InputError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}), .tar shards or .parquet files under "
            f"{url}; found {len(names)} other file(s)"
        )
    if len(present) > 1:
        raise InputError(
            f"input {url} mixes layouts: {images} image file(s), {tars} .tar shard(s), "
            f"{tables} .parquet file(s); choose one with --input-format images|webdataset|parquet "
            "(files of the other layouts are then skipped)"
        )
    return present[0]


# ---------------------------------------------------------------- planning
def _plan_images(names: list[str], root_url: str, url: str, *, shard_size: int, limit: int | None,
                 labels: LabelsFile | None) -> list[ShardSpec]:
    images = [n for n in names if _is_image(n)]
    if limit is not None:
        images = images[:limit]
    mapping = labels.mapping if labels is not None else None
    if labels is not None:
        _check_labels(labels, [(m, join(root_url, m)) for m in images])
    shards = []
    for i in range(0, len(images), shard_size):
        members = tuple(images[i : i + shard_size])
        labs = (tuple(lookup(mapping, m, join(root_url, m)) for m in members)
                if mapping is not None else None)
        shards.append(ShardSpec(shard_id=f"{i // shard_size:05d}", kind="images", root=root_url,
                                members=members, count=len(members), labels=labs))
    return shards


def _check_labels(labels: LabelsFile, images: list[tuple[str, str]]) -> None:
    """Refuses a labels file that labels none of ``images`` ((id, source) pairs); warns if some miss.

    Raises:
        InputError: not one image id (or source URL) is a key of the file.
    """
    if not images:
        return
    missed = [image_id for image_id, source in images if lookup(labels.mapping, image_id, source) is None]
    if not missed:
        return
    n = len(images)
    if len(missed) == n:
        raise InputError(
            f"labels file {labels.url}: 0 of {n} image ids matched ({_file_ids(labels)}, image ids "
            f"e.g. {images[0][0]!r}); its path column must hold image ids or full URLs "
            f"({labels.describe()})"
        )
    log.warning("labels file %s: %d of %d image ids matched; the other %d get no label (e.g. %r)",
                labels.url, n - len(missed), n, len(missed), missed[0])


def _check_tar_labels(labels: LabelsFile, root_url: str, tars: list[str]) -> None:
    """Refuses a labels file none of whose keys can name a sample of ``tars``.

    Sample ids are only known once the tars are read, so this checks the prefixes
    (``<tar path>/`` or ``<tar URL>#``); a partial match shows only in the results.
    """
    if not tars:
        return
    prefixes = tuple(f"{t}/" for t in tars) + tuple(f"{join(root_url, t)}#" for t in tars)
    if any(k.startswith(prefixes) for k in labels.mapping):
        return
    raise InputError(
        f"labels file {labels.url}: 0 of its {len(labels.mapping)} ids name a sample of the "
        f"{len(tars)} .tar shard(s) ({_file_ids(labels)}, image ids look like "
        f"{tars[0] + '/<sample key>'!r}); its path column must hold image ids or full URLs "
        f"({labels.describe()})"
    )


def _file_ids(labels: LabelsFile) -> str:
    first = next(iter(labels.mapping), None)
    return f"file ids e.g. {first!r}" if first is not None else "the file has no labelled rows"


def _plan_tars(fs: Any, root: str, root_url: str, tars: list[str], *, limit: int | None,
               labels: str | None) -> list[ShardSpec]:
    shards = []
    left = limit
    for i, rel in enumerate(tars):
        count = None
        cap = None
        if left is not None:
            # --limit needs the counts: read just far enough to know them.
            path = posixpath.join(root, rel) if root else rel
            try:
                with open_input(fs, path, url=join(root_url, rel)) as f:
                    count = webdataset.count_samples(f, stop_at=left)
            except READ_ERRORS:  # unreadable: the decode task reports it as an error row
                count = None
            cap = left
        shards.append(ShardSpec(shard_id=f"{i:05d}", kind="webdataset", root=root_url, members=(rel,),
                                file=rel, count=count, max_samples=cap, labels_url=labels))
        if left is not None:
            left -= count if count is not None else 1
            if left <= 0:
                break
    return shards


def _plan_parquet(fs: Any, root: str, root_url: str, files: list[str], *, shard_size: int,
                  limit: int | None, image_column: str | None, label_column: str | None,
                  id_column: str | None, labels: str | None) -> list[ShardSpec]:
    def inspect(rel: str) -> parquet_input.ParquetLayout | BaseException:
        path = posixpath.join(root, rel) if root else rel
        url = join(root_url, rel)
        try:
            with open_input(fs, path, url=url, buffer_size=1 << 16) as f:
                return parquet_input.inspect_file(f, image_column=image_column,
                                                  label_column=label_column, id_column=id_column,
                                                  url=url)
        except InputError:
            raise
        except READ_ERRORS as e:  # unreadable footer: one error row for the file, at decode
            return e

    def read_ids(rel: str) -> list[Any]:
        path = posixpath.join(root, rel) if root else rel
        try:
            with open_input(fs, path, url=join(root_url, rel), buffer_size=1 << 16) as f:
                return parquet_input.read_ids(f, id_column)
        except READ_ERRORS:
            return []  # unreadable: that file becomes an error row at decode

    with ThreadPoolExecutor(max_workers=min(_FOOTER_THREADS, max(1, len(files)))) as pool:
        layouts = list(pool.map(inspect, files))
        if id_column is not None:
            _check_unique_ids(list(pool.map(read_ids, files)), files, id_column, limit)
    common = dict(kind="parquet", root=root_url, image_column=image_column,
                  label_column=label_column, id_column=id_column, labels_url=labels)
    shards: list[ShardSpec] = []
    left = limit
    for i, (rel, layout) in enumerate(zip(files, layouts, strict=True)):
        if left is not None and left <= 0:
            break
        if isinstance(layout, BaseException):
            shards.append(ShardSpec(shard_id=f"{i:05d}", members=(rel,), file=rel, count=1, **common))
            if left is not None:
                left -= 1
            continue
        groups = _group_row_groups(layout.row_group_rows, shard_size)
        pieces = []
        for groups_, first, n in groups:
            stop = first + n
            if left is not None:
                stop = min(stop, first + left)
                left -= stop - first
            pieces.append((groups_, first, stop))
            if left is not None and left <= 0:
                break
        for j, (groups_, first, stop) in enumerate(pieces):
            sid = f"{i:05d}" if len(groups) == 1 else f"{i:05d}-{j:04d}"
            shards.append(ShardSpec(
                shard_id=sid, members=tuple(f"{rel}#{r}" for r in range(first, stop)), file=rel,
                count=stop - first, row_groups=groups_, first_row=first, stop_row=stop, **common))
    return [s for s in shards if s.size > 0 or s.count is None]


def _check_unique_ids(ids: list[list[Any]], files: list[str], id_column: str, limit: int | None) -> None:
    """Refuses an ``id_column`` whose values repeat among the planned rows (ids name outputs).

    Raises:
        InputError: naming the repeated values, how often, and where.
    """
    where: dict[str, list[str]] = {}
    left = limit
    for rel, values in zip(files, ids, strict=True):
        for row, v in enumerate(values):
            if left is not None and left <= 0:
                break
            if v is not None:
                where.setdefault(str(v), []).append(f"{rel}#{row}")
            if left is not None:
                left -= 1
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    if repeated:
        shown = "; ".join(f"{k!r} {len(v)} times ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                          for k, v in list(repeated.items())[:3])
        raise InputError(
            f"--id-column {id_column!r} repeats values: {shown}; {len(repeated)} value(s) repeat in all. "
            "Image ids must be unique: choose a column of unique values, or drop --id-column "
            "(ids are then <file>#<row>)"
        )


def _group_row_groups(rows: tuple[int, ...], shard_size: int) -> list[tuple[tuple[int, ...], int, int]]:
    """Consecutive row groups gathered until they hold >= shard_size rows: (groups, first row, rows)."""
    out: list[tuple[tuple[int, ...], int, int]] = []
    cur: list[int] = []
    first = start = n = 0
    for g, r in enumerate(rows):
        if not cur:
            first = start
        cur.append(g)
        n += r
        start += r
        if n >= shard_size:
            out.append((tuple(cur), first, n))
            cur, n = [], 0
    if cur:
        out.append((tuple(cur), first, n))
    return out or [((), 0, 0)]


# ----------------------------------------------------------------- reading
def read_shard(spec: ShardSpec, storage_options: dict[str, Any] | None = None) -> Iterator[RawSample]:
    """Yields the shard's samples in order; unreadable ones carry an error."""
    if spec.kind == "webdataset":
        samples = _read_tar(spec, storage_options)
    elif spec.kind == "parquet":
        samples = _read_parquet(spec, storage_options)
    else:
        samples = _read_images(spec, storage_options)
    if spec.labels_url and spec.kind != "images":
        mapping = cached_labels(spec.labels_url, storage_options)
        for s in samples:
            yield RawSample(image_id=s.image_id, source=s.source, data=s.data, error=s.error,
                            label=lookup(mapping, s.image_id, s.source))
    else:
        yield from samples


def _read_images(spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
    fs, root = url_to_fs(spec.root, storage_options)
    paths = [posixpath.join(root, m) if root else m for m in spec.members]
    # One concurrent batch first (async backends such as s3fs fetch in parallel);
    # whatever failed is then read alone, with retries on transient errors.
    try:
        blobs = fs.cat(paths, on_error="return")
    except STORAGE_ERRORS as e:
        blobs = {p: e for p in paths}
    for k, (member, p) in enumerate(zip(spec.members, paths, strict=True)):
        source = join(spec.root, member)
        label = spec.labels[k] if spec.labels is not None else _label(member)
        data = blobs.get(p)
        if data is None:  # some backends key results without the protocol
            data = blobs.get(fs._strip_protocol(p))
        if data is None or isinstance(data, BaseException):
            try:
                data = read_bytes(fs, p, url=source)
            except StorageUnavailable:
                raise  # the store, not the image: the shard fails and is retried
            except STORAGE_ERRORS as e:
                yield RawSample(image_id=member, source=source, label=label,
                                error=f"cannot read {source}: {type(e).__name__}: {e}")
                continue
        yield RawSample(image_id=member, source=source, label=label, data=bytes(data))


def _read_tar(spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
    rel = spec.file or spec.members[0]
    url = join(spec.root, rel)
    fs, root = url_to_fs(spec.root, storage_options)
    path = posixpath.join(root, rel) if root else rel
    n = 0
    seen: dict[str, int] = {}
    try:
        with open_input(fs, path, url=url) as f:
            for sample in webdataset.iter_tar(f, max_samples=spec.max_samples):
                member, data = sample.image() or ("", b"")
                n += 1
                image_id = f"{rel}/{sample.key}"
                if sample.key in seen:
                    # A repeated key (not adjacent, or it would have joined the sample):
                    # its own id and an error row, so that ids stay unique (and npz keys too).
                    seen[sample.key] += 1
                    yield RawSample(
                        image_id=f"{image_id}#{seen[sample.key]}", source=f"{url}#{member}", label=None,
                        error=(f"sample key {sample.key!r} repeats in {url} (occurrence {seen[sample.key]}, "
                               f"member {member}); WebDataset keys must be unique: only the first is used"))
                    continue
                seen[sample.key] = 1
                yield RawSample(image_id=image_id, source=f"{url}#{member}", label=sample.label(), data=data)
    except StorageUnavailable:
        raise
    except READ_ERRORS as e:
        where = "cannot read" if n == 0 else f"stopped after {n} sample(s) reading"
        yield RawSample(image_id=rel, source=url, label=None,
                        error=f"{where} {url}: {type(e).__name__}: {e}")


def _read_parquet(spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
    rel = spec.file or spec.members[0]
    url = join(spec.root, rel)
    fs, root = url_to_fs(spec.root, storage_options)
    path = posixpath.join(root, rel) if root else rel
    done: set[int] = set()
    try:
        with open_input(fs, path, url=url, buffer_size=1 << 16) as f:
            for index, id_, data, img_path, label in parquet_input.iter_rows(
                f, row_groups=spec.row_groups, first_row=spec.first_row, stop_row=spec.stop_row,
                image_column=spec.image_column, label_column=spec.label_column,
                id_column=spec.id_column, url=url,
            ):
                done.add(index)
                image_id = id_ if id_ is not None else f"{rel}#{index}"
                source = f"{url}#{index}"
                if data is None and img_path:
                    yield _read_referenced(fs, url, img_path, image_id, source, label, storage_options)
                elif data is None:
                    yield RawSample(image_id=image_id, source=source, label=label,
                                    error=f"no image bytes in row {index} of {url}")
                else:
                    yield RawSample(image_id=image_id, source=source, label=label, data=bytes(data))
    except StorageUnavailable:
        raise
    except (InputError, *READ_ERRORS) as e:  # InputError: the file's columns changed since the plan
        message = f"cannot read {url}: {type(e).__name__}: {e}"
        pending = [m for m in spec.members if "#" in m and int(m.rsplit("#", 1)[1]) not in done]
        if pending:
            # The rows are known from the plan: one error row per image that was not read
            # (named <file>#<row>, as the plan names them, when the id column was not reached).
            for m in pending:
                yield RawSample(image_id=m, source=f"{url}#{m.rsplit('#', 1)[1]}", label=None, error=message)
        else:
            yield RawSample(image_id=rel if not done else f"{rel}#rest", source=url, label=None, error=message)


def _read_referenced(fs: Any, url: str, img_path: str, image_id: str, source: str, label: str | None,
                     storage_options: dict[str, Any] | None) -> RawSample:
    """A Hugging Face image struct with only a path: read that file (relative to the table)."""
    if "://" in img_path:
        target_url = img_path
        tfs, tpath = url_to_fs(img_path, storage_options)
    else:
        target_url = img_path if img_path.startswith("/") else join(posixpath.dirname(url), img_path)
        tfs, tpath = url_to_fs(target_url, storage_options)
    try:
        return RawSample(image_id=image_id, source=source, label=label,
                         data=read_bytes(tfs, tpath, url=target_url))
    except StorageUnavailable:
        raise
    except STORAGE_ERRORS as e:
        return RawSample(image_id=image_id, source=source, label=label,
                         error=f"cannot read {target_url} (image path of {source}): {type(e).__name__}: {e}")


def read_source(
    source: str,
    storage_options: dict[str, Any] | None = None,
    *,
    image_column: str | None = None,
) -> bytes:
    """The original image bytes behind a result row's ``source``, for every layout.

    ``source`` is an image URL, ``<tar URL>#<member>`` or ``<parquet URL>#<row>``.

    Raises:
        InputError: the tar member or Parquet row is not there.
        OSError: the object cannot be read (after retries), naming the URL.
    """
    base, _, frag = source.rpartition("#")
    if base and (webdataset.is_tar(base) or parquet_input.is_parquet(base)) and _is_file(source, storage_options):
        base = ""  # an image file named like a member (x.tar#0.png): a file is a file
    if base and webdataset.is_tar(base):
        fs, path = url_to_fs(base, storage_options)
        with open_input(fs, path, url=base) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if info.name == frag and info.isfile():
                    member = tar.extractfile(info)
                    return member.read() if member is not None else b""
        raise InputError(f"{frag!r} is not a member of {base}")
    if base and parquet_input.is_parquet(base) and frag.isdigit():
        fs, path = url_to_fs(base, storage_options)
        row = int(frag)
        with open_input(fs, path, url=base, buffer_size=1 << 16) as f:
            for index, _id, data, img_path, _label in parquet_input.iter_rows(
                f, row_groups=None, first_row=0, stop_row=row + 1, image_column=image_column,
                label_column=None, id_column=None, url=base,
            ):
                if index == row:
                    if data is None and img_path:
                        target = img_path if "://" in img_path or img_path.startswith("/") else (
                            join(posixpath.dirname(base), img_path))
                        tfs, tpath = url_to_fs(target, storage_options)
                        return read_bytes(tfs, tpath, url=target)
                    if data is None:
                        raise InputError(f"no image bytes in row {row} of {base}")
                    return bytes(data)
        raise InputError(f"{base} has no row {row}")
    fs, path = url_to_fs(source, storage_options)
    return read_bytes(fs, path, url=source)


def _is_file(url: str, storage_options: dict[str, Any] | None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    try:
        return bool(retry_call(lambda: fs.isfile(path), what=f"stat {url}"))
    except STORAGE_ERRORS:  # cannot tell: read it as the member it looks like
        return False


def decode_shard(
    spec: ShardSpec,
    *,
    resize_size: int | tuple[int, int],
    crop_size: int | tuple[int, int],
    interpolation: str = "bilinear",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: dict[str, Any] | None = None,
    **geometry: Any,
) -> DecodedShard:
    """Reads and decodes a whole shard; a bad sample becomes an error record.

    ``geometry``: the other keywords of :func:`decode_image` (resize mode,
    fill, channels, crop offset).
    """
    arrays: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    for sample in read_shard(spec, storage_options):
        rec: dict[str, Any] = {
            "image_id": sample.image_id,
            "source": sample.source,
            "label": sample.label,
            "index": -1,
            "error": sample.error,
            "geometry": None,
        }
        if sample.error is None:
            try:
                arr, geo = decode_image(
                    sample.data or b"",
                    resize_size=resize_size,
                    crop_size=crop_size,
                    interpolation=interpolation,
                    max_pixels=max_pixels,
                    **geometry,
                )
            except DecodeError as e:
                rec["error"] = f"{e} ({sample.source})"
            else:
                rec["index"] = len(arrays)
                rec["geometry"] = geo
                arrays.append(arr)
        records.append(rec)
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    images = (
        np.stack(arrays) if arrays else np.zeros((0, ch, cw, geometry.get("channels", 3)), dtype=np.uint8)
    )
    return DecodedShard(shard_id=spec.shard_id, images=images, records=records, content=spec.content)


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def _hidden(name: str) -> bool:
    base = posixpath.basename(name)
    return base.startswith((".", "_"))


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _label(member: str) -> str | None:
    parent = posixpath.dirname(member)
    return posixpath.basename(parent) if parent else None


def _with_protocol(url: str, fs: Any, root: str) -> str:
    protocol = url.split("://", 1)[0]
    return f"{protocol}://{root}" if protocol != "file" else root


__all__ = [
    "INPUT_FORMATS",
    "DecodeError",
    "DecodedShard",
    "Geometry",
    "RawSample",
    "ShardSpec",
    "decode_shard",
    "plan_shards",
    "read_shard",
    "read_source",
]
