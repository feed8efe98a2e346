"""What one image may cost is bounded before it is decoded or resized: one error row, not a failed shard.

A 372-byte 1 x 100000 PNG passed the pixel guard (100 000 pixels) and its resize
to 256 on the shorter side asked for 256 x 25.6 M pixels (~26 GB): the
``MemoryError`` failed its whole shard on every attempt, naming no file. The
tests cap this process's address space while they run, so that code which still
allocated would fail here with a ``MemoryError`` instead of swapping the machine.
"""

import io
import re
import resource
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgcore.io import DecodeError, decode_array, decode_image, decode_shard, plan_shards
from sgcore.io.decode import DEFAULT_MAX_RESIZED_PIXELS, resize_and_crop
from tests.io.datasets import encode, rgb

CAP = 2 << 30  # address space the tests may add: far below the ~26 GB the old resize asked for


@pytest.fixture
def memory_cap():
    """Caps the address space at what the process maps now plus 2 GiB, while the test runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmSize:"))
    limit = mapped + CAP if hard == resource.RLIM_INFINITY else min(hard, mapped + CAP)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def thin_png(width: int = 1, height: int = 100_000) -> bytes:
    data = encode(Image.new("L", (width, height), 128), optimize=True)
    assert Image.open(io.BytesIO(data)).size == (width, height)
    return data


def test_the_tiny_thin_png_is_refused_by_its_aspect_ratio(memory_cap):
    data = thin_png()
    assert len(data) < 1000  # the file is tiny; the pixel guard (100 000 pixels) passes it
    for mode in ("center_crop", "squash", "letterbox"):
        with pytest.raises(DecodeError, match=re.escape(
                "image is 1x100000, an aspect ratio of 1e+05:1, over the limit of 100:1")):
            decode_image(data, resize_size=256, crop_size=224, mode=mode)
    with pytest.raises(DecodeError, match="over the limit of 100:1"):  # the Ray Data path too
        decode_array(np.zeros((100_000, 1), np.uint8), resize_size=256, crop_size=224)


def test_a_resize_to_too_many_pixels_is_refused_before_it_is_allocated(memory_cap):
    data = encode(Image.new("RGB", (64, 48)))  # an ordinary image, with an absurd resize target
    with pytest.raises(DecodeError, match=re.escape(
            "image is 64x48, which resizes to 13653x10240 = 139806720 pixels, over the limit of "
            f"{DEFAULT_MAX_RESIZED_PIXELS}")):
        decode_image(data, resize_size=10240, crop_size=224)
    with pytest.raises(DecodeError, match="which resizes to 13653x10240"):
        resize_and_crop(Image.new("RGB", (64, 48)), resize_size=10240, crop_size=224)
    # The limit is the output of the resize: 85 x 64 = 5440 pixels at 64 on the shorter side.
    with pytest.raises(DecodeError, match=r"resizes to 85x64 = 5440 pixels, over the limit of 5439$"):
        decode_image(data, resize_size=64, crop_size=32, max_resized_pixels=5439)
    arr, geo = decode_image(data, resize_size=64, crop_size=32, max_resized_pixels=5440)
    assert arr.shape == (32, 32, 3) and (geo.resized_height, geo.resized_width) == (64, 85)


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (2400, 240), (240, 2400), (100, 1), (1, 1)])
def test_sane_shapes_pass(size, memory_cap):
    # Photos both ways round, 10:1 panoramas, a 100:1 strip (the limit) and one pixel: all decode.
    arr, _ = decode_image(encode(Image.new("RGB", size, (9, 9, 9))), resize_size=256, crop_size=224)
    assert arr.shape == (224, 224, 3) and int(arr[112, 112, 0]) == 9


def test_a_shard_with_the_thin_png_has_one_error_row_naming_it(tmp_path, memory_cap):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(7):
        (root / f"img{i}.png").write_bytes(encode(rgb(i, (300, 200))))
    (root / "img3b.png").write_bytes(thin_png())
    (shard,) = plan_shards(str(root), shard_size=8)
    decoded = decode_shard(shard, resize_size=256, crop_size=224)
    errors = {r.image_id: r.error for r in decoded.records if r.error}
    assert errors == {"img3b.png": f"image is 1x100000, an aspect ratio of 1e+05:1, over the limit of 100:1 "
                                   f"({root}/img3b.png)"}
    assert decoded.num_ok == 7 and decoded.images.shape == (7, 224, 224, 3)
    assert [r.image_id for r in decoded.records] == sorted(f"img{i}.png" for i in range(7)) [:4] + [
        "img3b.png"] + [f"img{i}.png" for i in range(4, 7)]
