"""WebDataset ``.tar`` shards, streamed member by member (never unpacked to disk).

The WebDataset convention (Breuel et al., "WebDataset", github.com/webdataset):
consecutive tar members that share a key form one sample; the key is the
member path up to the first dot of its file name, the rest is the field
(``n01440764_10026.jpg`` + ``n01440764_10026.cls``). An image field
(jpg/jpeg/png/webp/bmp) makes the sample an image; ``.cls`` (text) or
``.json`` (its ``label``/``cls``/``class`` entry) gives the label.

A tar larger than one shard is read in ranges of samples: one header scan
(:class:`TarScan`, no member data read) counts the samples and notes where
every ``every``-th sample's first header starts, so a range of a plain tar is
read by seeking there (a compressed tar is streamed from its start, skipping
the samples before the range without extracting them).

Keys in ids and member names in sources are escaped with :func:`escape_key`
(``%`` -> ``%25``, ``#`` -> ``%23``; any other character as it is): ``#``
then only ever separates a repeat number or a member from what precedes it.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import IO

from sgcore.io.decode import IMAGE_EXTENSIONS

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


__all__ = ["TAR_EXTENSIONS", "TarSample", "TarScan", "escape_key", "is_tar", "iter_tar", "split_key",
           "unescape_key"]
