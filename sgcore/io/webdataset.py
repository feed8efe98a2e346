"""WebDataset ``.tar`` shards, streamed member by member (never unpacked to disk).

The WebDataset convention (Breuel et al., "WebDataset", github.com/webdataset):
consecutive tar members that share a key form one sample; the key is the
member path up to the first dot of its file name, the rest is the field
(``n01440764_10026.jpg`` + ``n01440764_10026.cls``). An image field
(jpg/jpeg/png/webp/bmp) makes the sample an image; ``.cls`` (text) or
``.json`` (its ``label``/``cls``/``class`` entry) gives the label.
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
            if ext.rsplit(".", 1)[-1] in _IMAGE_FIELDS:
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


def iter_tar(fileobj: IO[bytes], *, max_samples: int | None = None) -> Iterator[TarSample]:
    """Streams a tar (plain or gzip) and yields its samples in order.

    Only the fields a sample needs are kept in memory (image, cls, json), one
    sample at a time. Members that are not regular files, or whose names carry
    no field, are skipped.

    Raises:
        tarfile.TarError, OSError, EOFError: the stream is not a tar or ends early
            (a plain tar cut at a block boundary is caught by its missing
            end-of-archive blocks); the samples before the damage have been yielded.
    """
    current: TarSample | None = None
    emitted = 0
    stream = _Tail(fileobj)
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
        for info in tar:
            if not info.isfile():
                continue
            parts = split_key(info.name)
            if parts is None:
                continue
            key, ext = parts
            if current is not None and key != current.key:
                if current.image() is not None:
                    yield current
                    emitted += 1
                    if max_samples is not None and emitted >= max_samples:
                        return
                current = None
            if current is None:
                current = TarSample(key)
            wanted = ext in ("cls", "json") or ext.rsplit(".", 1)[-1] in _IMAGE_FIELDS
            if wanted:
                f = tar.extractfile(info)
                current.fields[ext] = f.read() if f is not None else b""
                current.members[ext] = info.name
    if current is not None and current.image() is not None:
        if max_samples is None or emitted < max_samples:
            yield current
    # tarfile takes a stream that stops at a header boundary for a complete
    # archive; a plain tar must end in zero blocks, so check that.
    stream.drain()
    if not stream.head.startswith(_COMPRESSED_MAGIC) and stream.tail.strip(b"\0"):
        raise tarfile.ReadError("the tar ends without its end-of-archive blocks (truncated?)")


def count_samples(fileobj: IO[bytes], *, stop_at: int | None = None) -> int:
    """Number of image samples in a tar, reading no further than ``stop_at`` samples."""
    n = 0
    for _ in iter_tar(fileobj, max_samples=stop_at):
        n += 1
    return n


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


__all__ = ["TAR_EXTENSIONS", "TarSample", "count_samples", "is_tar", "iter_tar", "split_key"]
