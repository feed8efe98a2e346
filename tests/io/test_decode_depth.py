"""Deep pixels (16-bit, 32-bit integer, float) are scaled by their format's white level.

A 16-bit image with max 250 is a dark image (250 of 65535), not one to stretch to
full contrast; one with max 300 is not black either: 65535 is white, whatever the
image holds.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sgcore.io import DecodeError, decode_array, decode_image

N = 16


def _save(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _grey16(values: np.ndarray) -> bytes:
    data = _save(Image.fromarray(np.ascontiguousarray(values, dtype=np.uint16)))
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # a real 16-bit greyscale PNG
    return data


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-sample RGB PNG (colour type 2, bit depth 16), written by hand: PIL cannot write one."""
    h, w, _ = pixels.shape
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _grey(data: bytes) -> np.ndarray:
    """The decoded grey values at the image's own size (no resampling), one channel."""
    arr, _ = decode_image(data, resize_size=N, crop_size=N)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    return arr[..., 0].astype(int)


@pytest.mark.parametrize("top", [250, 300])
def test_dark_16_bit_grey_stays_dark(top):
    # Old code: max 250 came out at full contrast (250 -> 250), max 300 divided by 65535 (black).
    values = np.tile(np.linspace(0, top, N).round().astype(np.uint16), (N, 1))
    grey = _grey(_grey16(values))
    assert grey.max() <= 2, grey[0]  # 300 / 257 = 1.2
    np.testing.assert_array_equal(grey[0], np.rint(values[0] / 257).astype(int))


def test_16_bit_ramp_keeps_its_levels_and_white_is_255():
    values = np.tile(np.linspace(0, 65535, N).round().astype(np.uint16), (N, 1))
    grey = _grey(_grey16(values))
    np.testing.assert_array_equal(grey[0], np.rint(values[0] / 257).astype(int))  # 257·v <-> v
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and (np.diff(grey[0]) > 0).all()


def test_16_bit_grey_from_ray_data_arrays_is_scaled_the_same_way():
    values = np.tile(np.array([0, 250, 32896, 65535], np.uint16).repeat(N // 4), (N, 1))
    arr, _ = decode_array(values, resize_size=N, crop_size=N)
    assert arr[0, :: N // 4, 0].tolist() == [0, 1, 128, 255]
    np.testing.assert_array_equal(arr, decode_image(_grey16(values), resize_size=N, crop_size=N)[0])


def test_32_bit_integer_grey_within_16_bits_is_scaled_by_65535():
    # PIL opens a 16-bit PGM (maxval 65535) as mode "I" (32-bit integers).
    values = np.array([0, 250, 32896, 65535], ">u2").repeat(N // 4)
    data = f"P5\n{N} {N}\n65535\n".encode() + np.tile(values, N).tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert _grey(data)[0, :: N // 4].tolist() == [0, 1, 128, 255]


def test_32_bit_integer_grey_beyond_16_bits_is_refused():
    data = _save(Image.fromarray(np.full((N, N), 70000, np.int32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    with pytest.raises(DecodeError, match=r"^I pixels span 70000\.\.70000, outside the 16-bit range 0\.\.65535"):
        decode_image(data, resize_size=N, crop_size=N)


def test_16_bit_rgb_is_read_by_its_high_byte():
    # PIL decodes 16-bit RGB PNGs as 8-bit RGB itself (the high byte of each sample).
    pixels = np.zeros((N, N, 3), np.uint16)
    pixels[:, : N // 2] = (250, 300, 65535)
    pixels[:, N // 2 :] = (65535, 32896, 0)
    data = _png_rgb16(pixels)
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    arr, _ = decode_image(data, resize_size=N, crop_size=N)
    assert tuple(arr[0, 0]) == (0, 1, 255) and tuple(arr[0, -1]) == (255, 128, 0)


def test_float_grey_in_unit_range_is_scaled_by_one():
    # Old code stretched every float image to its own min..max (0.25..0.5 -> 0..255).
    values = np.tile(np.linspace(0.25, 0.5, N, dtype=np.float32), (N, 1))
    data = _save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    np.testing.assert_array_equal(_grey(data)[0], np.rint(values[0].astype(np.float64) * 255).astype(int))


@pytest.mark.parametrize("value, span", [(3.0, r"3\.\.3"), (-0.5, r"-0\.5\.\.-0\.5"), (np.nan, "non-finite values")])
def test_float_grey_outside_the_unit_range_is_refused(value, span):
    data = _save(Image.fromarray(np.full((N, N), value, np.float32)), "TIFF")
    with pytest.raises(DecodeError, match=rf"^float pixels span {span}, outside \[0, 1\]"):
        decode_image(data, resize_size=N, crop_size=N)
