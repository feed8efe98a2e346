"""The ``images`` layout: a prefix of image files.

A shard is a fixed-size group of files in sorted order; image id = the path
relative to the input root; label = the parent folder, or the ``--labels`` file
(looked up once, when planning).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from sgcore.io._fs import read_bytes
from sgcore.io._retry import StorageUnavailable
from sgcore.io.decode import IMAGE_EXTENSIONS
from sgcore.io.failures import STORAGE_ERRORS
from sgcore.io.labels import check_labels, lookup
from sgcore.io.layouts.base import Listing, PlanOptions, RawSample, Root, ShardSpec, read_url
from sgcore.io.layouts.names import FileTable


def is_image(name: str) -> bool:
    base = name[name.rfind("/") + 1 :]  # posixpath.basename, without its overhead (run per listed file)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def folder_label(member: str) -> str | None:
    """The label of an image without a labels file: its parent folder, if any."""
    parent = posixpath.dirname(member)
    return posixpath.basename(parent) if parent else None


class ImageFiles:
    """Image files (``.jpg``, ``.png``, ...), each one sample."""

    name = "images"
    found = f"image files ({', '.join(IMAGE_EXTENSIONS)})"
    counted = "image file(s)"

    def detects(self, name: str) -> bool:
        return is_image(name)

    def plan(self, listing: Listing, options: PlanOptions) -> list[ShardSpec]:
        # The images as one compact table (names and stamps), each shard a range of it.
        images = FileTable.of(listing.names, listing.stamps).select(is_image)
        n = len(images) if options.limit is None else min(len(images), options.limit)
        root = listing.root
        labels = options.labels
        if labels is not None:
            check_labels(labels, [(m, root.url_of(m)) for m in images.view(0, n)])
        size = options.shard_size
        shards = []
        for i in range(0, n, size):
            members = images.view(i, min(i + size, n))
            labs = (tuple(lookup(labels.mapping, m, root.url_of(m)) for m in members)
                    if labels is not None else None)
            shards.append(ShardSpec(shard_id=f"{i // size:05d}", kind=self.name, root=root.url,
                                    members=members, count=len(members), labels=labs))
        return shards

    def read(self, spec: ShardSpec, storage_options: dict[str, Any] | None) -> Iterator[RawSample]:
        root = Root.of(spec.root, storage_options)
        fs = root.fs
        paths = [root.path_of(m) for m in spec.members]
        # One concurrent batch first (async backends such as s3fs fetch in parallel);
        # whatever failed is then read alone, with retries on transient errors.
        try:
            blobs = fs.cat(paths, on_error="return")
        except STORAGE_ERRORS as e:
            blobs = {p: e for p in paths}
        for k, (member, p) in enumerate(zip(spec.members, paths, strict=True)):
            source = root.url_of(member)
            label = spec.labels[k] if spec.labels is not None else folder_label(member)
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

    def holds(self, source: str) -> bool:
        return False  # an image file is its own source

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        return read_url(source, storage_options)


__all__ = ["ImageFiles", "folder_label", "is_image"]
