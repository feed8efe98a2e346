"""Builders of small test datasets in every input layout (images, WebDataset tars, Parquet)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    gen = np.random.default_rng(seed)
    return Image.fromarray(gen.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def huge_png_header(width: int = 8500, height: int = 8500) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (a decompression-bomb stand-in)."""
    data = bytearray(encode(Image.new("L", (4, 4))))
    ihdr = 8 + 8  # signature + IHDR length/type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def messy_images() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected error substring or None for a good image)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    pal = Image.new("P", (12, 10))
    pal.putpalette([i % 256 for i in range(768)])
    pal.info["transparency"] = 0
    good_jpeg = encode(rgb(1, (64, 64)), "JPEG", quality=90)
    return {
        "good/rgb.png": (encode(rgb(0)), None),
        "good/gray.png": (encode(rgb(2).convert("L")), None),
        "good/rgba.png": (encode(rgb(3).convert("RGBA")), None),
        "good/palette.png": (encode(pal, transparency=0), None),
        "good/cmyk.jpg": (encode(rgb(4).convert("CMYK"), "JPEG"), None),
        "good/deep16.png": (encode(Image.fromarray(np.full((9, 7), 40000, np.uint16))), None),
        "good/exif.jpg": (encode(rgb(5, (30, 16)), "JPEG", exif=exif.tobytes()), None),
        "good/tiny.png": (encode(Image.new("RGB", (1, 1), (5, 6, 7))), None),
        "good/photo.webp": (encode(rgb(6), "WEBP"), None),
        "bad/truncated.jpg": (good_jpeg[: len(good_jpeg) // 3], "cannot decode image"),
        "bad/empty.png": (b"", "empty file (0 bytes)"),
        "bad/text.jpg": (b"this is a text file with an image extension", "not a recognised image format"),
        "bad/bomb.png": (huge_png_header(), "over the limit"),
    }


def write_messy_prefix(root: Path) -> dict[str, str | None]:
    """Writes the messy images plus non-image files; returns image id -> expected error."""
    expected = {}
    for name, (data, err) in messy_images().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected[name] = err
    (root / "README.txt").write_text("not an image: skipped")
    (root / "good" / "meta.json").write_text("{}")
    return expected


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A WebDataset tar: each sample's fields as ``<key>.<ext>`` members, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def tar_samples(prefix: str, n: int, *, seed: int = 0,
                varied_sizes: bool = False) -> list[tuple[str, dict[str, bytes]]]:
    """Alternating ``png`` + ``cls`` and ``jpg`` + ``json`` samples (``varied_sizes``: each 4 px wider)."""
    out = []
    for i in range(n):
        img = rgb(seed + i, (24 + 4 * i, 20)) if varied_sizes else rgb(seed + i)
        fields: dict[str, bytes] = {"jpg" if i % 2 else "png": encode(img, "JPEG" if i % 2 else "PNG")}
        if i % 2:
            fields["json"] = json.dumps({"label": f"class{i % 3}"}).encode()
        else:
            fields["cls"] = str(i % 3).encode()
        out.append((f"{prefix}{i:04d}", fields))
    return out


def hf_schema_metadata(names: list[str]) -> dict[bytes, bytes]:
    info = {"info": {"features": {"image": {"_type": "Image"},
                                   "label": {"names": names, "_type": "ClassLabel"}}}}
    return {b"huggingface": json.dumps(info).encode()}


def write_parquet(path: Path, images: list[bytes | None], *, labels: list | None = None,
                  hf: bool = False, row_group_size: int | None = None,
                  ids: list[str] | None = None) -> None:
    """A Parquet table of images: ``image`` binary (or HF struct) + optional label/id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, pa.Array] = {}
    if hf:
        cols["image"] = pa.array(
            [None if b is None else {"bytes": b, "path": f"img{i}.png"} for i, b in enumerate(images)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    else:
        cols["image"] = pa.array(images, type=pa.binary())
    if labels is not None:
        cols["label"] = pa.array(labels)
    if ids is not None:
        cols["uid"] = pa.array(ids, type=pa.string())
    table = pa.table(cols)
    if hf and labels is not None:
        table = table.replace_schema_metadata(hf_schema_metadata(["cat", "dog", "fox"]))
    pq.write_table(table, path, row_group_size=row_group_size)
