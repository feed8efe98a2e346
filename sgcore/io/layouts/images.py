"""The ``images`` layout: a prefix of image files.

A shard is a fixed-size group of files in sorted order; image id = the path
relative to the input root; label = the parent folder, or the ``--labels`` file
(looked up once, when planning). Files of other types (``notes.txt``) are no
inputs: the plan skips them, and so does :meth:`ImageFiles.read_batch` for the
rows of ``ray.data.read_binary_files``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

from sgcore.io._fs import read_bytes
from sgcore.io._retry import StorageUnavailable
from sgcore.io.decode import IMAGE_EXTENSIONS
from sgcore.io.failures import STORAGE_ERRORS
from sgcore.io.labels import check_labels, lookup
from sgcore.io.layouts.base import (
    Batch,
    BatchOptions,
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
    batch_source,
    missing,
    read_url,
    relative_id,
)
from sgcore.io.layouts.names import FileTable

# The image columns of Ray Data's file readers: read_binary_files (bytes), read_images (pixels).
FILE_COLUMNS = ("bytes", "image")


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

    def takes(self, batch: Batch) -> bool:
        # Exactly what read_binary_files / read_images give with include_paths=True.
        return any(set(batch.columns) == {"path", c} for c in FILE_COLUMNS)

    def read_batch(self, batch: Batch, options: BatchOptions) -> Iterator[tuple[int, RawSample]]:
        column = options.image_column or next((c for c in FILE_COLUMNS if c in batch.columns), FILE_COLUMNS[0])
        images = batch.column(column, "image_column")
        paths = batch.column(options.id_column, "id_column")
        for i in range(batch.size):
            value = "" if missing(paths[i]) else str(paths[i])
            member, error = relative_id(value, options.root)
            if not is_image(member):
                continue  # the job lists only image files: no row for notes.txt
            source = batch_source(options.root, member) if error is None else value
            data = images[i]
            if isinstance(data, Mapping):  # a Hugging Face image struct
                data = data.get("bytes")
            yield i, RawSample(image_id=member, source=source, label=folder_label(member),
                               data=None if error else data, error=error)

    def holds(self, source: str) -> bool:
        return False  # an image file is its own source

    def read_source(self, source: str, storage_options: dict[str, Any] | None, *,
                    image_column: str | None = None) -> bytes:
        return read_url(source, storage_options)


__all__ = ["FILE_COLUMNS", "ImageFiles", "folder_label", "is_image"]
