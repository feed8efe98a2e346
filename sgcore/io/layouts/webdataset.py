"""The ``webdataset`` layout: ``.tar`` shards, streamed member by member (never unpacked to disk).

The format (Breuel et al., "WebDataset", github.com/webdataset): consecutive
tar members that share a key form one sample; the key is the member path up
to the first dot of its file name, the rest is the field
(``n01440764_10026.jpg`` + ``n01440764_10026.cls``). An image field
(jpg/jpeg/png/webp/bmp) makes the sample an image; ``.cls`` (text) or
``.json`` (its ``label``/``cls``/``class``/``category`` entry) gives the label.

Shards: a tar of at most ``--shard-size`` image samples is one shard (id
``<n>``, the tar's index in the listing); a larger one is cut into ranges of
``--shard-size`` samples (ids ``<n>-<k>``), planned from one scan of its
headers (:class:`TarScan`: no member data is read, and the plan keeps per
shard only the range and the byte offset where its first header starts), so
a range of a plain tar is read by seeking there (a compressed tar is streamed
from its start, skipping the samples before the range without extracting
them), and a shard's decode memory is bounded by the shard size whatever the tar.

Ids: image id = ``<tar path>/<sample key>``; source = ``<tar URL>#<member>``;
label = the sample's ``.cls``/``.json`` field, or the ``--labels`` file (read by
the decode task, as sample keys are only known then). A key that repeats later
in its tar gets ``<tar path>/<key>#<occurrence>`` (``#2``, ...) and an error
row. Keys and members are escaped (:func:`escape_key`: ``%`` -> ``%25``, ``#``
-> ``%23``, nothing else), so a key ``x#2`` is ``x%232`` and never meets the
second ``x``, and every source reads back with :meth:`WebDataset.read_source`;
keys without ``%``/``#`` keep the ids they always had. Ids and seeds do not
depend on how a tar is cut.

The rows of ``ray.data.read_webdataset(url, decoder=None)``
(:meth:`WebDataset.read_batch`) become the same :class:`TarSample` objects, so
the image field, label, id and source follow the same rules.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import numpy as np

from sgcore.errors import ConfigError, InputError
from sgcore.io._retry import StorageUnavailable
from sgcore.io.decode import IMAGE_EXTENSIONS
from sgcore.io.failures import READ_ERRORS
from sgcore.io.labels import LabelsFile
from sgcore.io.layouts.base import (
    Batch,
    BatchOptions,
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
    batch_source,
    hidden,
    missing,
    open_url,
    range_id,
    relative_id,
    scalar,
    shard_file,
)

# ------------------------------------------------------------------ the format
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
_IMAGE_FIELDS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_KEY_RE = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
_JSON_LABEL_KEYS = ("label", "cls", "class", "category")
_ESCAPED = re.compile("%2[35]")


def escape_key(key: str) -> str:
    """A sample key (or member name) as ids and sources spell it: ``%`` -> ``%25``, ``#`` -> ``%23``.

    A key without ``%`` or ``#`` is unchanged, so ids of such keys are what they
    always were. Escaped, a key holds no ``#``: a ``#`` in an id marks a repeated
    key's occurrence (``<key>#2``), and in a source the member after the tar URL.
    """
    if "%" not in key and "#" not in key:
        return key
    return key.replace("%", "%25").replace("#", "%23")


def unescape_key(text: str) -> str:
    """The inverse of :func:`escape_key`."""
    return _ESCAPED.sub(lambda m: "#" if m.group() == "%23" else "%", text)


class TarSample:
    """One grouped sample: its key, member names and field bytes."""

    __slots__ = ("fields", "key", "members")

    def __init__(self, key: str):
        self.key = key
        self.fields: dict[str, bytes] = {}
        self.members: dict[str, str] = {}

    def image(self) -> tuple[str, bytes] | None:
        """(member name, bytes) of the first image field, or None."""
        for ext, data in self.fields.items():
            if _is_image_field(ext):
                return self.members[ext], data
        return None

    def label(self) -> str | None:
        """The ``cls`` field's text, else the ``label``/``cls``/``class``/``category`` entry of ``json``."""
        if "cls" in self.fields:
            text = self.fields["cls"].decode("utf-8", "replace").strip()
            return text or None
        if "json" in self.fields:
            try:
                meta = json.loads(self.fields["json"])
            except (ValueError, UnicodeDecodeError):
                return None
            if isinstance(meta, dict):
                for k in _JSON_LABEL_KEYS:
                    if meta.get(k) is not None:
                        return str(meta[k])
        return None

    def ids(self, rel: str, url: str) -> tuple[str, str]:
        """(image id, source) of this sample of the tar ``rel`` at ``url``: ``<tar path>/<key>``
        and ``<tar URL>#<image member>``, escaped (:func:`escape_key`)."""
        member = self.image()
        return f"{rel}/{escape_key(self.key)}", f"{url}#{escape_key(member[0] if member else '')}"


def split_key(name: str) -> tuple[str, str] | None:
    """``"a/b.c.jpg" -> ("a/b", "c.jpg")``; None for names without a field (or hidden)."""
    m = _KEY_RE.match(name)
    if not m:
        return None
    return m.group(1), m.group(2).lower()


def _is_image_field(ext: str) -> bool:
    return ext.rsplit(".", 1)[-1] in _IMAGE_FIELDS


class _Tail:
    """Passes reads through, remembering the first bytes and the last 1 KiB."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.head = b""
        self.tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if not self.head:
            self.head = data[:4]
        self.tail = (self.tail + data)[-1024:]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def iter_tar(fileobj: IO[bytes], *, first: int = 0, stop: int | None = None,
             offset: int | None = None) -> Iterator[TarSample]:
    """Streams a tar (plain or gzip) and yields its samples ``first`` to ``stop`` (exclusive), in order.

    Only the fields a sample needs are kept in memory (image, cls, json), one
    sample at a time. Members that are not regular files, or whose names carry
    no field, are skipped.

    Args:
        first, stop: the range of samples (image samples, counted from the
            tar's first); ``stop=None`` reads to the end and checks that the
            tar ends as a tar does; otherwise reading stops at ``stop``.
        offset: where sample ``first``'s first header starts in a plain tar
            (from :class:`TarScan`): the reader seeks there. Without it, the
            samples before ``first`` are streamed past without their data.

    Raises:
        tarfile.TarError, OSError, EOFError: the stream is not a tar or ends early
            (a plain tar cut at a block boundary is caught by its missing
            end-of-archive blocks); the samples before the damage have been yielded.
    """
    current: TarSample | None = None
    index = 0  # of the next image sample
    if offset is not None:
        fileobj.seek(offset)
        index = first
    stream = _Tail(fileobj)
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
        for info in _headers(tar):
            parts = split_key(info.name)
            if parts is None:
                continue
            key, ext = parts
            if current is not None and key != current.key:
                if current.image() is not None:
                    if index >= first:
                        yield current
                    index += 1
                    if stop is not None and index >= stop:
                        return
                current = None
            if current is None:
                current = TarSample(key)
            if index < first:  # before the range: its image field only marks it a sample
                if _is_image_field(ext):
                    current.members[ext] = info.name
                    current.fields[ext] = b""
                continue
            if ext in ("cls", "json") or _is_image_field(ext):
                f = tar.extractfile(info)
                current.fields[ext] = f.read() if f is not None else b""
                current.members[ext] = info.name
    if current is not None and current.image() is not None and index >= first:
        if stop is None or index < stop:
            yield current
    # tarfile takes a stream that stops at a header boundary for a complete
    # archive; a plain tar must end in zero blocks, so check that.
    # (Read from an offset, the tar is a plain one: TarScan gives none for a compressed one.)
    stream.drain()
    plain = offset is not None or not stream.head.startswith(_COMPRESSED_MAGIC)
    if plain and stream.tail.strip(b"\0"):
        raise tarfile.ReadError("the tar ends without its end-of-archive blocks (truncated?)")


def _headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The regular-file members of an open tar, without keeping them all (TarFile lists every one)."""
    while True:
        info = tar.next()
        tar.members.clear()  # only ``next`` is used: the list would grow with the tar
        if info is None:
            return
        if info.isfile():
            yield info


_BLOCK = tarfile.BLOCKSIZE
_SPECIAL_TYPES = frozenset(b"xgLKS")  # pax, GNU long names, sparse: parsed by tarfile
_FILE_TYPES = frozenset(b"0\x007")  # tarfile.REGULAR_TYPES less sparse (that one goes to tarfile)


def _plain_headers(tar: tarfile.TarFile, f: IO[bytes]) -> Iterator[tuple[str, int]]:
    """(name, header offset) of each regular file of a plain tar opened with ``tarfile.open(mode="r:")``.

    A plain ustar/GNU header is parsed here, with its checksum checked, ~10x
    faster than tarfile's general parser (which a planner scanning 10^5 headers
    notices); anything else (pax and GNU long-name headers, base-256 sizes, a bad
    checksum) is read by ``tar`` itself, from the same offset, with its rules.
    """
    tar.firstmember = None  # read by open(); it is read again below, from offset 0
    offset = 0
    while True:
        f.seek(offset)
        buf = f.read(_BLOCK)
        if len(buf) < _BLOCK or not buf.strip(b"\0"):
            return  # the end-of-archive block, or a cut tar: its reader reports the damage
        kind = buf[156]
        fast = kind not in _SPECIAL_TYPES and not buf[124] & 0x80 and _checksum_ok(buf)
        if fast:
            name = _text(buf[0:100])
            prefix = _text(buf[345:500])
            if prefix:
                name = f"{prefix}/{name}"
            size = int(buf[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            if kind in _FILE_TYPES and not (kind == 0 and name.endswith("/")):
                yield name, offset
            offset += _BLOCK + -(-size // _BLOCK) * _BLOCK
            continue
        f.seek(offset)  # where tarfile expects to be (at offset 0 it would otherwise stop)
        tar.offset = offset
        info = tar.next()
        tar.members.clear()
        if info is None:
            return
        if info.isfile():
            yield info.name, info.offset
        offset = tar.offset


def _checksum_ok(buf: bytes) -> bool:
    try:
        stored = int(buf[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == 256 + sum(buf) - sum(buf[148:156])


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class TarScan:
    """One pass over a tar's headers (no member data read): its samples and where ranges start.

    Attributes:
        samples: image samples seen (up to ``stop_at``).
        offsets: the header offset of samples 0, ``every``, 2·``every``, ... (the
            first member of each; offsets in the uncompressed stream).
        repeats: (sample index, occurrence) of each sample whose key came before.
        compressed: the tar is gzip/bzip2/xz (offsets cannot be sought in the file).
        complete: the scan reached the tar's end (not ``stop_at``).

    :meth:`run` fills these as it goes: after it raises (a damaged tar), they
    describe the samples before the damage.
    """

    def __init__(self, *, every: int, stop_at: int | None = None):
        self.every = every
        self.stop_at = stop_at
        self.samples = 0
        self.offsets: list[int] = []
        self.repeats: list[tuple[int, int]] = []
        self.compressed = False
        self.complete = False
        self._seen: dict[str, int] = {}

    def run(self, fileobj: IO[bytes]) -> TarScan:
        try:
            return self._run(fileobj)
        finally:
            self._seen = {}  # the keys are needed only during the scan

    def _run(self, fileobj: IO[bytes]) -> TarScan:
        head = fileobj.read(4)
        fileobj.seek(0)
        self.compressed = head.startswith(_COMPRESSED_MAGIC)
        key = ""
        start = 0
        image = False
        with tarfile.open(fileobj=fileobj, mode="r|*" if self.compressed else "r:") as tar:
            # A plain tar: read each header and seek past the data; a compressed one is streamed.
            headers = (_plain_headers(tar, fileobj) if not self.compressed
                       else ((i.name, i.offset) for i in _headers(tar)))
            for name, offset in headers:
                parts = split_key(name)
                if parts is None:
                    continue
                if parts[0] != key:
                    if image and self._sample(key, start):
                        return self
                    key, start, image = parts[0], offset, False
                image = image or _is_image_field(parts[1])
        if image and self._sample(key, start):
            return self
        self.complete = True
        return self

    def _sample(self, key: str, start: int) -> bool:
        """Counts one image sample; True once ``stop_at`` samples are counted."""
        if self.samples % self.every == 0:
            self.offsets.append(start)
        n = self._seen.get(key, 0) + 1
        self._seen[key] = n
        if n > 1:
            self.repeats.append((self.samples, n))
        self.samples += 1
        return self.stop_at is not None and self.samples >= self.stop_at


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


# ------------------------------------------------------------------ the layout
_SCAN_BUFFER = 1 << 16  # the header scan seeks past member data: small reads
_SCAN_THREADS = 16


class WebDataset:
    """WebDataset tars: consecutive members sharing a key are one sample."""

    name = "webdataset"
    found = ".tar shards"
    counted = ".tar shard(s)"

    def detects(self, name: str) -> bool:
        return is_tar(name) and not hidden(name)

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        root = listing.root
        tars = [n for n in listing.names if is_tar(n)]
        size = options.shard_size
        shards: list[ShardSpec] = []
        left = options.limit

        def scan(rel: str, stop_at: int | None) -> TarScan | None:
            found = TarScan(every=size, stop_at=stop_at)
            try:
                with root.open(rel, buffer_size=_SCAN_BUFFER) as f:
                    return found.run(f)
            except StorageUnavailable:
                return None  # the store, not the tar: its decode task reads (and retries) it whole
            except READ_ERRORS:  # damaged: plan what is before the damage (its reader reports it)
                return found if found.samples > size else None

        if left is None:  # the scans are independent: run them side by side
            with ThreadPoolExecutor(max_workers=min(_SCAN_THREADS, max(1, len(tars)))) as pool:
                scans: Iterator[TarScan | None] = pool.map(lambda rel: scan(rel, None), tars)
                for i, (rel, found) in enumerate(zip(tars, scans, strict=True)):
                    shards += self._cut(i, rel, found, root, options, cap=None)
        else:  # --limit: scan just far enough, tar after tar
            for i, rel in enumerate(tars):
                found = scan(rel, left)
                shards += self._cut(i, rel, found, root, options, cap=left)
                left -= found.samples if found is not None else 1
                if left <= 0:
                    break
        if options.labels is not None:
            _check_labels(options.labels, root, list(dict.fromkeys(shard_file(s) for s in shards)))
        return shards

    def _cut(self, i: int, rel: str, found: TarScan | None, root: Root, options: PlanOptions, *,
             cap: int | None) -> list[ShardSpec]:
        """The shards of tar number ``i``: the whole tar, or ranges of ``shard_size`` samples."""
        common = dict(kind=self.name, root=root.url, members=(rel,), file=rel, labels_url=options.labels_url)
        size = options.shard_size
        if found is None or found.samples <= size:
            # One shard, read whole as it always was (an unreadable tar: one error row at decode).
            count = found.samples if found is not None else None
            stop = cap if cap is not None and (count is None or count >= cap) else None
            return [ShardSpec(shard_id=f"{i:05d}", count=count, stop_row=stop, **common)]
        n = found.samples
        out = []
        for k, first in enumerate(range(0, n, size)):
            stop = min(first + size, n)
            # The last range reads to the end (and checks the end-of-archive), unless --limit cuts it.
            last = stop == n and not (found.stop_at is not None and n >= found.stop_at)
            repeats = tuple((j, m) for j, m in found.repeats if first <= j < stop)
            out.append(ShardSpec(
                shard_id=f"{i:05d}-{k:04d}", count=stop - first, first_row=first,
                stop_row=None if last else stop, offset=None if found.compressed else found.offsets[k],
                repeats=repeats, split=True, **common))
        return out

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        root = Root.of(spec.root, storage_options)
        rel = shard_file(spec)
        url = root.url_of(rel)
        n = 0
        index = spec.first_row
        # A whole tar's reader finds its repeated keys; a range is told them by the plan.
        seen: dict[str, int] | None = {} if spec.repeats is None else None
        repeats = dict(spec.repeats or ())
        try:
            with root.open(rel) as f:
                for sample in iter_tar(f, first=spec.first_row, stop=spec.stop_row, offset=spec.offset):
                    member, data = sample.image() or ("", b"")
                    n += 1
                    image_id, source = sample.ids(rel, url)
                    if seen is not None:
                        occurrence = seen[sample.key] = seen.get(sample.key, 0) + 1
                    else:
                        occurrence = repeats.get(index, 1)
                    index += 1
                    if occurrence > 1:
                        # A repeated key (not adjacent, or it would have joined the sample): its
                        # own id and an error row, so that ids stay unique (and npz keys too).
                        yield RawSample(
                            image_id=f"{image_id}#{occurrence}", source=source, label=None,
                            error=(f"sample key {sample.key!r} repeats in {url} (occurrence "
                                   f"{occurrence}, member {member}); WebDataset keys must be "
                                   "unique: only the first is used"))
                        continue
                    yield RawSample(image_id=image_id, source=source, label=sample.label(), data=data)
        except StorageUnavailable:
            raise
        except READ_ERRORS as e:
            where = "cannot read" if n == 0 else f"stopped after {n} sample(s) reading"
            # A range of a split tar has its own id for this row: ids stay unique when several fail.
            error_id = range_id(rel, spec.first_row, spec.stop_row, spec.size) if spec.split else rel
            yield RawSample(image_id=error_id, source=url, label=None,
                            error=f"{where} {url}: {type(e).__name__}: {e}")

    def takes(self, batch: Batch) -> bool:
        return _KEY in batch.columns  # read_webdataset's rows

    def read_batch(self, batch: Batch, options: BatchOptions) -> Iterator[tuple[int, RawSample]]:
        columns = batch.columns
        keys = batch.column(_KEY, "the WebDataset key column")
        urls = batch.column(options.id_column if options.id_column in columns else _URL, "id_column")
        # A row's fields as a tar sample's (image fields, cls, json), in column order; the
        # sample then gives the image, label, id and source by the rules of read().
        if options.image_column is not None:  # one of the image fields: the job knows no other images
            batch.column(options.image_column, "image_column")
            if not _is_image_field(options.image_column.lower()):
                raise ConfigError(f"image_column {options.image_column!r} is no image field of a WebDataset "
                                  f"sample ({', '.join(_IMAGE_FIELDS)}, or a name ending in one)")
            images = [options.image_column]
        else:
            images = [c for c in columns if not c.startswith("__") and _is_image_field(c.lower())]
        labels = {"cls": "cls", "json": "json"}
        if options.label_column is not None:
            batch.column(options.label_column, "label_column")
            labels = {"json" if options.label_column.lower() == "json" else "cls": options.label_column}
        for i in range(batch.size):
            sample = TarSample(str(keys[i]))
            for c in images:
                if not missing(columns[c][i]):
                    sample.fields[c.lower()] = columns[c][i]
                    sample.members[c.lower()] = f"{sample.key}.{c}"
            if sample.image() is None:
                continue  # read() yields no sample without an image
            for field, c in labels.items():
                if c in columns and not missing(columns[c][i]):
                    sample.fields[field] = _field_bytes(columns[c][i])
            value = str(urls[i])
            rel, error = relative_id(value, options.root)
            image_id, source = sample.ids(rel, batch_source(options.root, rel) if error is None else value)
            member, data = sample.image() or ("", None)
            yield i, RawSample(image_id=image_id, source=source, label=sample.label(),
                               data=None if error else data, error=error)

    def holds(self, source: str) -> bool:
        base = source.rpartition("#")[0]
        return bool(base) and is_tar(base)

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        # The member is escaped (no "#" in it): the last "#" ends the tar URL, whatever it holds.
        base, _, escaped = source.rpartition("#")
        member = unescape_key(escaped)
        with open_url(base, storage_options) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if info.name == member and info.isfile():
                    data = tar.extractfile(info)
                    return data.read() if data is not None else b""
        raise InputError(f"{member!r} is not a member of {base}")


def _check_labels(labels: LabelsFile, root: Root, tars: list[str]) -> None:
    """Refuses a labels file none of whose keys can name a sample of ``tars``.

    Sample ids are only known once the tars are read, so this checks the prefixes
    (``<tar path>/`` or ``<tar URL>#``); a partial match shows only in the results.
    """
    if not tars:
        return
    prefixes = tuple(f"{t}/" for t in tars) + tuple(f"{root.url_of(t)}#" for t in tars)
    if any(k.startswith(prefixes) for k in labels.mapping):
        return
    raise InputError(
        f"labels file {labels.url}: 0 of its {len(labels.mapping)} ids name a sample of the "
        f"{len(tars)} .tar shard(s) ({labels.describe_ids()}, image ids look like "
        f"{tars[0] + '/<sample key>'!r}); its path column must hold image ids or full URLs "
        f"({labels.describe()})"
    )


_KEY, _URL = "__key__", "__url__"  # read_webdataset's key and tar columns


def _field_bytes(value: Any) -> bytes:
    """A label field of a batch row as the tar holds it (``decoder=None`` keeps the bytes)."""
    value = scalar(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    if isinstance(value, Mapping | list):  # decoded JSON
        return json.dumps(value).encode()
    return str(value).encode()


__all__ = ["TAR_EXTENSIONS", "TarSample", "TarScan", "WebDataset", "escape_key", "is_tar", "iter_tar",
           "split_key", "unescape_key"]
