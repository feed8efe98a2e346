import io

import numpy as np
import pytest
from PIL import Image

from sgcore.io import DecodeError, decode_image

# Pixel tests decode at the image's own size (16 x 16): no resampling, so each
# pixel that comes out is the converted pixel that went in.
N = 16


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    arr, _ = decode_image(data, resize_size=N, crop_size=N)
    assert arr.shape == (N, N, 3) and arr.dtype == np.uint8
    return arr


# (200, 10, 10) in each mode, and the RGB that must come back.
# L (ITU-R 601-2 luma, PIL's rule): (200·299 + 10·587 + 10·114) / 1000 = 66.8 -> 67.
# CMYK: PIL stores RGB as C = 255 − R, M = 255 − G, Y = 255 − B, K = 0 and reads it
# back as R = (255 − C)(255 − K) / 255, so (55, 245, 245, 0) -> (200, 10, 10).
# I;16 holding 67 is 67 of 65535: black (its bit depth decides, not its values).
@pytest.mark.parametrize("mode, fmt, want", [
    ("RGB", "PNG", (200, 10, 10)),
    ("L", "PNG", (67, 67, 67)),
    ("LA", "PNG", (67, 67, 67)),
    ("RGBA", "PNG", (200, 10, 10)),
    ("CMYK", "JPEG", (200, 10, 10)),
    ("I;16", "PNG", (0, 0, 0)),
])
def test_every_mode_decodes_to_rgb(mode, fmt, want):
    img = Image.new("RGB", (N, N), (200, 10, 10)).convert(mode)
    data = _png(img, fmt, quality=95) if fmt == "JPEG" else _png(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == mode  # the file really is in that mode
    arr = _decode(data).astype(int)
    assert np.abs(arr - np.array(want)).max() <= 2, (arr.min((0, 1)), arr.max((0, 1)))


def test_cmyk_with_black_follows_pils_rule():
    c, m, y, k = 0, 200, 100, 55
    img = Image.new("CMYK", (N, N), (c, m, y, k))
    want = [round((255 - v) * (255 - k) / 255) for v in (c, m, y)]  # (200, 43, 122)
    arr = _decode(_png(img, "JPEG", quality=95)).astype(int)
    assert np.abs(arr - np.array(want)).max() <= 2, arr[0, 0]


def test_alpha_is_composited_on_white():
    rgba = np.zeros((N, N, 4), np.uint8)
    rgba[:, :4] = (10, 20, 30, 0)  # fully transparent: white, whatever the colour
    rgba[:, 4:8] = (0, 0, 0, 128)  # half-transparent black
    rgba[:, 8:12] = (200, 100, 0, 64)  # quarter-opaque orange
    rgba[:, 12:] = (200, 10, 10, 255)  # opaque: unchanged
    arr = _decode(_png(Image.fromarray(rgba, "RGBA"))).astype(int)
    a = 128 / 255
    np.testing.assert_allclose(arr[:, :4], 255)
    np.testing.assert_allclose(arr[:, 4:8], 255 * (1 - a), atol=1)  # 127
    b = 64 / 255
    want = [v * b + 255 * (1 - b) for v in (200, 100, 0)]  # (241, 216, 191)
    np.testing.assert_allclose(arr[:, 8:12], np.broadcast_to(want, (N, 4, 3)), atol=1)
    np.testing.assert_allclose(arr[:, 12:], np.broadcast_to((200, 10, 10), (N, 4, 3)))


def test_grey_with_alpha_is_composited_on_white():
    la = np.zeros((N, N, 2), np.uint8)
    la[:, : N // 2] = (0, 0)  # transparent black -> white
    la[:, N // 2 :] = (90, 255)
    arr = _decode(_png(Image.fromarray(la, "LA"))).astype(int)
    assert (arr[:, : N // 2] == 255).all() and (arr[:, N // 2 :] == 90).all()


def test_16_bit_grey_is_scaled_from_the_full_16_bit_range():
    values = np.array([0, 1000, 40000, 65535], np.uint16)
    img = Image.fromarray(np.tile(np.repeat(values, N // 4), (N, 1)))
    data = _png(img)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    arr = _decode(data).astype(float)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    want = np.repeat(values / 65535 * 255, N // 4)  # 40000 -> 155.6
    np.testing.assert_allclose(arr[0, :, 0], want, atol=1)
    assert 154 <= arr[0, 2 * N // 4, 0] <= 156


def test_palette_pixels_take_the_palette_colour():
    palette = [10, 20, 30, 200, 100, 50] + [0] * (768 - 6)
    img = Image.new("P", (N, N), 0)
    img.putpalette(palette)
    img.paste(1, (N // 2, 0, N, N))
    arr = _decode(_png(img))
    assert (arr[:, : N // 2] == (10, 20, 30)).all() and (arr[:, N // 2 :] == (200, 100, 50)).all()
    # With index 0 transparent, its pixels are composited on white.
    arr = _decode(_png(img, transparency=0))
    assert (arr[:, : N // 2] == 255).all() and (arr[:, N // 2 :] == (200, 100, 50)).all()


def test_bilevel_image_is_black_and_white():
    img = Image.new("1", (N, N), 0)
    img.paste(1, (0, 0, N, N // 2))
    arr = _decode(_png(img))
    assert (arr[: N // 2] == 255).all() and (arr[N // 2 :] == 0).all()


# Quadrants of a 16 x 16 JPEG (8 x 8 blocks, no chroma subsampling: colours survive).
_TL, _TR, _BL, _BR = (230, 20, 20), (20, 230, 20), (20, 20, 230), (240, 240, 240)


@pytest.mark.parametrize("orientation, want", [
    (1, (_TL, _TR, _BL, _BR)),  # as stored
    (3, (_BR, _BL, _TR, _TL)),  # rotated 180°
    (6, (_BL, _TL, _BR, _TR)),  # shown rotated 90° clockwise: the left column becomes the top row
    (8, (_TR, _BR, _TL, _BL)),  # shown rotated 90° counter-clockwise
])
def test_exif_orientation_moves_the_right_pixel_to_the_corner(orientation, want):
    quads = np.zeros((N, N, 3), np.uint8)
    h = N // 2
    quads[:h, :h], quads[:h, h:], quads[h:, :h], quads[h:, h:] = _TL, _TR, _BL, _BR
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(Image.fromarray(quads), "JPEG", exif=exif.tobytes(), quality=95, subsampling=0)
    arr = _decode(data).astype(int)
    got = (arr[:h, :h], arr[:h, h:], arr[h:, :h], arr[h:, h:])
    for name, block, colour in zip(("top-left", "top-right", "bottom-left", "bottom-right"),
                                   got, want, strict=True):
        assert np.abs(block - np.array(colour)).max() <= 12, (orientation, name, block[0, 0])
    assert tuple(arr[0, 0]) == pytest.approx(want[0], abs=12)


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
