import io

import numpy as np
import pytest
from PIL import Image

from sgcore.io import DecodeError, decode_image


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_mode_decodes_to_rgb(mode):
    img = Image.new("RGB", (30, 20), (200, 10, 10)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    arr, geo = decode_image(_png(img, fmt), resize_size=16, crop_size=16)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    assert (geo.orig_height, geo.orig_width) == (20, 30)


def test_resize_shorter_side_then_center_crop_geometry():
    img = Image.new("RGB", (100, 50))
    arr, geo = decode_image(_png(img), resize_size=32, crop_size=24)
    assert (geo.resized_height, geo.resized_width) == (32, 64)
    assert (geo.crop_top, geo.crop_left) == (4, 20)
    assert arr.shape == (24, 24, 3)


def test_geometry_maps_crop_back_onto_the_original():
    # A white square in the middle of a black image must land in the middle of the map.
    big = np.zeros((90, 120, 3), dtype=np.uint8)
    big[30:60, 45:75] = 255
    arr, geo = decode_image(_png(Image.fromarray(big)), resize_size=30, crop_size=30)
    ys, xs = np.nonzero(arr[..., 0] > 128)
    # map -> resized -> original
    oy = (ys + geo.crop_top + 0.5) * geo.orig_height / geo.resized_height
    ox = (xs + geo.crop_left + 0.5) * geo.orig_width / geo.resized_width
    assert 30 <= oy.min() and oy.max() <= 60
    assert 45 <= ox.min() and ox.max() <= 75


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 40, 5))  # white strip along the top
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _png(img, "JPEG", exif=exif.tobytes(), quality=95)
    arr, geo = decode_image(data, resize_size=20, crop_size=20)
    assert (geo.orig_height, geo.orig_width) == (40, 20)  # portrait after transpose
    # displayed rotated 90° clockwise: the top edge is now the right edge
    assert arr[:, -3:, 0].mean() > 200 and arr[:, :10, 0].mean() < 50


def test_tiny_image_is_upscaled():
    arr, _ = decode_image(_png(Image.new("RGB", (1, 1), (9, 9, 9))), resize_size=8, crop_size=8)
    assert arr.shape == (8, 8, 3) and int(arr[4, 4, 0]) == 9


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty file"),
        (b"hello, I am text", "not a recognised image format"),
    ],
)
def test_bad_bytes_raise_decode_error(data, match):
    with pytest.raises(DecodeError, match=match):
        decode_image(data, resize_size=8, crop_size=8)


def test_truncated_image_raises_decode_error():
    data = _png(Image.fromarray(np.full((64, 64, 3), 7, np.uint8)), "JPEG")
    with pytest.raises(DecodeError, match="cannot decode image"):
        decode_image(data[: len(data) // 2], resize_size=8, crop_size=8)


def test_pixel_limit_guards_memory():
    data = _png(Image.new("RGB", (100, 100)))
    with pytest.raises(DecodeError, match="over the limit of 5000"):
        decode_image(data, resize_size=8, crop_size=8, max_pixels=5000)
