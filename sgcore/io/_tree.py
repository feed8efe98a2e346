"""Listing one folder fast and compactly: a sorted ``os.scandir`` walk locally, a parallel fan-out on S3.

Both give exactly the names and stamps that ``fs.find(path, detail=True)``
gives (:mod:`sgcore.io.listing` forms them the same way), streamed into a
:class:`~sgcore.io.layouts.names.FileTable` instead of a dict of info dicts:
fsspec's local ``find`` holds a dict of ten fields per file and sorts at the
end (about a kilobyte and 50 us per file), and s3fs's ``find`` lists a prefix
as one sequential chain of 1,000-key pages.

Anything unusual (a name Arrow cannot hold, a versioned bucket, an error) gives
None, and the caller lists the input the general way, which also words the
errors.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from sgcore.io.layouts.names import FileTable

# S3: list requests in flight at once, and prefixes wanted before the deep listings start.
S3_CONCURRENCY = 32
# Keys per list request (S3's most).
S3_PAGE = 1000
_S3_FANOUT = 64
_S3_MAX_DEPTH = 4
# A flat prefix is cut at this many columns of its names at a time (blocks of 1, 10, 100 pages of numbers).
_S3_LEVELS = 3

# A listing longer than this prints how far it got, every PROGRESS_EVERY_S.
PROGRESS_EVERY_S = 5.0


def walk_local(root: str) -> FileTable | None:
    """Every file under the local folder ``root``, relative to it, sorted, with its stamp.

    The same files and stamps as fsspec's ``LocalFileSystem.find(root, detail=True)``:
    anything that is not a directory (a symlink included, not followed) is a file,
    its size the target's (0 for a dangling link), its mtime its own; a folder that
    cannot be read is left out. Entries are visited in sorted order (a folder
    ``b`` as ``b/``, after ``b.jpg``), so the names come out sorted with no sort
    and only one folder's entries are held at a time.
    """
    top = _scan(root)
    if top is None:
        return None
    try:
        return FileTable.build(_walk(top))
    except (UnicodeEncodeError, pa.ArrowException):
        return None  # an undecodable file name: the general listing handles it


def _walk(top: list[tuple[str, str | None, str | None]]) -> Iterator[tuple[str, str | None]]:
    stack: list[tuple[str, Iterator[tuple[str, str | None, str | None]]]] = [("", iter(top))]
    while stack:
        prefix, entries = stack[-1]
        for key, folder, stamp in entries:
            if folder is not None:
                stack.append((prefix + key, iter(_scan(folder) or ())))
                break
            yield prefix + key, stamp
        else:
            stack.pop()


def _scan(folder: str) -> list[tuple[str, str | None, str | None]] | None:
    """(sort key, path of a subfolder or None, stamp of a file) per entry, sorted; None: unreadable."""
    out: list[tuple[str, str | None, str | None]] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                    if e.is_dir(follow_symlinks=False):
                        out.append((e.name + "/", e.path, None))
                        continue
                    size = st.st_size
                    if e.is_symlink():
                        try:
                            size = e.stat(follow_symlinks=True).st_size
                        except OSError:
                            size = 0
                except FileNotFoundError:
                    continue  # gone since the folder was read
                out.append((e.name, None, f"{size}:{st.st_mtime}"))
    except OSError:
        return None  # fsspec's walk leaves out a folder it cannot list
    out.sort()  # by key: names are unique, so the rest of a tuple is never compared
    return out


@dataclass
class ListingStats:
    """What a listing cost: list requests, the most in flight at once, keys seen."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    keys: int = 0
    prefixes: int = 0
    prefixes_done: int = 0
    started: float = field(default_factory=time.monotonic)
    last_print: float = 0.0


# The stats of the last S3 listing in this process (read by the benchmark and the tests).
last_stats = ListingStats()


def list_s3(fs: Any, path: str, *, name: Callable[[str], str], stamp: Callable[[dict[str, Any]], str | None],
            shown: str, concurrency: int = S3_CONCURRENCY, stream: TextIO | None = None,
            key_prefix: str = "") -> FileTable | None:
    """Every object under the S3 folder ``path`` as (``name(bucket/key)``, ``stamp(info)``), sorted.

    ``key_prefix``: only the keys of the folder whose name starts with it (``part-``).

    The folder is listed with delimiter ``/`` level by level until there are
    enough sub-prefixes (or none), and each sub-prefix is then listed whole,
    ``concurrency`` requests at a time; every key is listed exactly once. The
    info given to ``stamp`` is what s3fs's ``find`` gives (``size``, ``ETag``,
    ``LastModified``, ...). Prints ``[sgcore] listing ...: N keys so far`` to
    ``stream`` (stderr) every few seconds once a listing is long.

    Returns None for a versioned bucket, an empty folder or on any error: the
    caller then lists it with ``fs.find``, which words the errors.
    """
    if getattr(fs, "version_aware", False):
        return None
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    if not bucket:
        return None
    global last_stats
    stats = last_stats = ListingStats()
    prefix = (key.strip("/") + "/" if key.strip("/") else "") + key_prefix
    try:
        chunks = sync(fs.loop, _fan_out, fs, bucket, prefix, name, stamp, stats, concurrency,
                      shown, stream or sys.stderr)
    except Exception:  # the general listing retries and words it
        return None
    if stats.keys == 0:
        return None
    names = pa.chunked_array([c[0] for c in chunks], pa.string())
    stamps = pa.chunked_array([c[1] for c in chunks], pa.string())
    order = pc.sort_indices(names)  # UTF-8 byte order: the code point order of sorted()
    return FileTable(names.take(order), stamps.take(order))


async def _fan_out(fs: Any, bucket: str, prefix: str, name: Callable[[str], str],
                   stamp: Callable[[dict[str, Any]], str | None], stats: ListingStats, concurrency: int,
                   shown: str, stream: TextIO) -> list[tuple[pa.Array, pa.Array]]:
    gate = asyncio.Semaphore(concurrency)
    chunks: list[tuple[pa.Array, pa.Array]] = []

    async def request(kwargs: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                return await fs._call_s3("list_objects_v2", **kwargs)
            finally:
                stats.in_flight -= 1

    def record(contents: list[dict[str, Any]]) -> None:
        if contents:
            names, stamps = [], []
            for c in contents:
                info = dict(c, type="file", size=c["Size"], name=f"{bucket}/{c['Key']}")
                names.append(name(info["name"]))
                stamps.append(stamp(info))
            chunks.append((pa.array(names, pa.string()), pa.array(stamps, pa.string())))
            stats.keys += len(contents)
        _progress(stats, shown, stream)

    async def span(r: KeyRange) -> None:
        await pages(r, "")
        stats.prefixes_done += 1

    async def pages(r: KeyRange, delimiter: str) -> list[str]:
        """Lists range ``r`` page by page into ``chunks``; returns its sub-prefixes (with a delimiter).

        The first full page of a prefix that goes on (and, with a delimiter, has
        no sub-prefixes: a flat folder) hands the rest to :func:`key_ranges`.
        """
        kwargs = dict(Bucket=bucket, Prefix=r.prefix, MaxKeys=1 if r.probe else S3_PAGE, **fs.req_kw)
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if r.after is not None:
            kwargs["StartAfter"] = r.after
        sub: list[str] = []
        while True:
            out = await request(kwargs)
            sub.extend(c["Prefix"] for c in out.get("CommonPrefixes", []))
            contents = out.get("Contents", [])
            kept = [c for c in contents if r.holds(c["Key"])]
            record(kept)
            if len(kept) < len(contents) and r.hi is not None and contents[-1]["Key"] >= r.hi:
                return sub  # past the range's end
            if not out.get("IsTruncated"):
                return sub
            if r.splits and not sub and len(contents) == kwargs["MaxKeys"] and contents:
                pieces = key_ranges(r.prefix, [c["Key"] for c in contents])
                if pieces:
                    stats.prefixes += len(pieces)
                    await asyncio.gather(*(span(p) for p in pieces))
                    return sub
            kwargs["MaxKeys"] = S3_PAGE
            kwargs["ContinuationToken"] = out["NextContinuationToken"]

    frontier = [prefix]
    for _ in range(_S3_MAX_DEPTH):
        if not frontier or len(frontier) >= _S3_FANOUT:
            break
        levels = await asyncio.gather(*(pages(KeyRange(p), "/") for p in frontier))
        frontier = [p for level in levels for p in level]
    stats.prefixes += len(frontier)
    await asyncio.gather(*(span(KeyRange(p)) for p in frontier))
    return chunks


# Keys above any a range boundary is followed by (a StartAfter of ``R + c + _TOP`` skips the keys
# ``R + c...``, which a range of their own lists; the rare key past it is filtered out by ``lo``).
_TOP = "\U0010ffff"
_CLASSES = ("0123456789", "abcdef", "ABCDEF", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class KeyRange:
    """The keys under ``prefix`` that are after ``after`` (exclusive) and in [``lo``, ``hi``).

    ``probe``: the range is expected empty, its first request asks for one key.
    ``splits``: after a full first page, the rest is cut into ranges listed in parallel.
    """

    prefix: str
    after: str | None = None
    lo: str | None = None
    hi: str | None = None
    probe: bool = False
    splits: bool = True

    def holds(self, key: str) -> bool:
        return (self.lo is None or key >= self.lo) and (self.hi is None or key < self.hi)


def key_ranges(q: str, keys: list[str]) -> list[KeyRange]:
    """Disjoint ranges that hold exactly the keys under prefix ``q`` after ``keys[-1]``.

    ``keys`` (sorted, all under ``q``) is a listing's first page. Its last key
    ``k`` and the column ``j`` where the page's keys start to differ say how the
    names count: the rest is the keys under ``k[:j]`` after ``k``, then, at each
    column ``i`` from ``j - 1`` up to ``m = max(len(q), j - 3)``, one range per likely next
    character ``c > k[i]`` (``k[:i] + c``: a plain prefix listing, no key outside it
    sent) and the gaps between them (another character: probed with one key), and
    the keys of ``q`` past ``k[:m]`` (cut again after its first page). The
    likely characters are those of ``k[i]``'s class (digits, hex, letters) and
    of the page's first differing column. Which characters exist changes only
    how the work is cut, never which keys are listed.

    Empty where the rest looks no longer than two pages: the listing goes on page by page.
    """
    k = keys[-1]
    lcp = os.path.commonprefix([keys[0], k])
    j = max(len(lcp), len(q) + 1)
    if j > len(k):
        return []
    varying = {key[len(lcp)] for key in keys if len(key) > len(lcp)}
    if len(lcp) <= len(q):  # the page spans q's first column: what is left of it is likely small
        left = sum(c > k[len(q)] for c in _alphabet(k[len(q)], varying)) * len(keys) / max(len(varying), 1)
        if left <= 2 * len(keys):
            return []
    out = [KeyRange(k[:j], after=k)]
    m = max(len(q), j - _S3_LEVELS)
    if m > len(q) and ord(k[m - 1]) < 0x10FFFF:  # the rest of q, past k[:m]: one range, cut after its first page
        out.append(KeyRange(q, after=k[:m] + _TOP, lo=k[: m - 1] + chr(ord(k[m - 1]) + 1)))
    else:
        m = len(q)
    for i in range(j - 1, m - 1, -1):
        r, c0 = k[:i], k[i]
        alphabet = {c for c in _alphabet(c0, varying) if c > c0}
        prev = c0
        for c in sorted(alphabet):
            if ord(c) != ord(prev) + 1:
                out.append(_gap(r, prev, hi=r + c))
            out.append(KeyRange(r + c))
            prev = c
        out.append(_gap(r, prev, hi=None))
    return out


def _gap(r: str, prev: str, *, hi: str | None) -> KeyRange:
    """The keys under ``r`` whose next character is after ``prev`` (and before ``hi``'s)."""
    lo = r + chr(ord(prev) + 1) if ord(prev) + 1 < 0x110000 else r + prev + _TOP
    after = r + prev + _TOP
    try:
        after.encode()
    except UnicodeEncodeError:  # prev next to the surrogates: start at r, the filter drops the rest
        after = r
    return KeyRange(r, after=after, lo=lo, hi=hi, probe=True, splits=False)


def _alphabet(c0: str, varying: set[str]) -> set[str]:
    out = {c0} | varying
    for c in (c0, *varying):
        for cls in _CLASSES:
            if c in cls:
                out.update(cls)
                break
    return out


def _progress(stats: ListingStats, shown: str, stream: TextIO) -> None:
    now = time.monotonic()
    if now - stats.started < PROGRESS_EVERY_S or now - stats.last_print < PROGRESS_EVERY_S:
        return
    stats.last_print = now
    done = f", {stats.prefixes_done} of {stats.prefixes} prefixes done" if stats.prefixes else ""
    print(f"[sgcore] listing {shown}: {stats.keys:,} keys so far ({stats.requests:,} requests{done}, "
          f"{now - stats.started:.0f} s)", file=stream, flush=True)


__all__ = ["ListingStats", "list_s3", "walk_local"]
