"""Every resize mode on tall and wide real photographs: the geometry columns put
each crop pixel back on the original, and ``overlay`` draws a map where it belongs."""

import io

import numpy as np
import pytest
from PIL import Image

from sgcore.io import decode_image
from sgcore.models import Preprocess
from sgcore.render import overlay

skdata = pytest.importorskip("skimage.data")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (name, preprocess): every mode, square and non-square inputs, both crop roundings.
MODES = [
    ("center", Preprocess(crop_size=64, resize_size=73, mean=MEAN, std=STD)),
    ("center-hw", Preprocess(crop_size=(48, 80), crop_pct=0.875, mean=MEAN, std=STD, interpolation="bicubic")),
    ("squash", Preprocess(crop_size=64, resize_size=64, resize_mode="squash", mean=MEAN, std=STD)),
    ("squash-crop", Preprocess(crop_size=(56, 40), crop_pct=0.8, resize_mode="squash", mean=MEAN, std=STD,
                               crop_offset="floor")),
    ("letterbox", Preprocess(crop_size=64, resize_mode="letterbox", mean=MEAN, std=STD)),
    ("letterbox-hw", Preprocess(crop_size=(64, 48), resize_mode="letterbox", crop_pct=0.9, mean=MEAN, std=STD)),
    ("grey", Preprocess(crop_size=(40, 64), resize_mode="squash", channels=1, mean=(0.5,), std=(0.5,))),
]


def _photos() -> dict[str, np.ndarray]:
    coffee = skdata.coffee()  # 400 x 600, wide
    return {"wide": coffee, "tall": np.ascontiguousarray(np.rot90(skdata.chelsea()))}  # 451 x 300


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _back_projected(photo: np.ndarray, geo, shape: tuple[int, int], channels: int) -> np.ndarray:
    """The original sampled at each crop pixel's centre, through the geometry columns."""
    h, w = shape
    sy = geo.orig_height / geo.resized_height
    sx = geo.orig_width / geo.resized_width
    ys = ((np.arange(h) + geo.crop_top + 0.5) * sy - 0.5).round().astype(int)
    xs = ((np.arange(w) + geo.crop_left + 0.5) * sx - 0.5).round().astype(int)
    src = np.asarray(Image.fromarray(photo).convert("L" if channels == 1 else "RGB"), np.float32)
    src = src.reshape(*src.shape[:2], channels)
    inside = (ys[:, None] >= 0) & (ys[:, None] < geo.orig_height) & (xs[None] >= 0) & (xs[None] < geo.orig_width)
    out = src[ys.clip(0, geo.orig_height - 1)][:, xs.clip(0, geo.orig_width - 1)]
    return out, inside


@pytest.mark.parametrize(("mode", "pre"), MODES, ids=[m for m, _ in MODES])
@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_geometry_maps_every_crop_pixel_back_onto_the_original(mode, pre, orientation):
    photo = _photos()[orientation]
    arr, geo = decode_image(_png(photo), **pre.decode_kwargs())
    assert arr.shape == (*pre.map_shape, pre.channels)
    assert (geo.orig_height, geo.orig_width) == photo.shape[:2]
    back, inside = _back_projected(photo, geo, pre.map_shape, pre.channels)
    assert inside.mean() > 0.5
    crop = arr.astype(np.float32)
    mad = np.abs(back - crop)[inside].mean()
    # A nearest sample of the original is a few grey levels off a filtered resize;
    # a geometry off by one crop pixel on either axis is far worse.
    for dy, dx in ((1, 0), (0, 1)):
        shifted = np.abs(np.roll(back, (dy, dx), axis=(0, 1)) - crop)[inside].mean()
        assert mad < 0.75 * shifted, (mode, orientation, mad, shifted)
    if pre.resize_mode == "letterbox":
        assert not inside.all()  # the padding is where the geometry says
        np.testing.assert_array_equal(arr[~inside], np.broadcast_to(pre.pad_fill(), arr[~inside].shape))
    if pre.resize_mode == "squash" and pre.map_shape == pre.resize_size:
        assert (geo.resized_height, geo.resized_width) == pre.map_shape  # both axes scaled on their own


@pytest.mark.parametrize(("mode", "pre"), MODES, ids=[m for m, _ in MODES])
@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_overlay_puts_a_map_block_where_the_geometry_says(mode, pre, orientation):
    photo = _photos()[orientation]
    data = _png(photo)
    _, geo = decode_image(data, **pre.decode_kwargs())
    h, w = pre.map_shape
    r0, r1, c0, c1 = h // 4, h // 2, w // 2, 3 * w // 4
    m = np.zeros((h, w), np.float32)
    m[r0:r1, c0:c1] = 1.0
    row = {"image_id": "x", "status": "ok", "source": "x.png", "saliency": m, "map_height": h, "map_width": w,
           **{k: getattr(geo, k) for k in ("orig_height", "orig_width", "resized_height", "resized_width",
                                          "crop_top", "crop_left")}}
    # The gray view draws the map alone (black where it is 0), at the original's size.
    out = np.asarray(overlay(row, image=data, view="gray", colorbar=False), np.int32)
    assert out.shape == photo.shape
    changed = out.sum(-1) > 0
    ys, xs = np.nonzero(changed)
    sy = geo.orig_height / geo.resized_height
    sx = geo.orig_width / geo.resized_width
    want = ((r0 + geo.crop_top) * sy, (r1 + geo.crop_top) * sy, (c0 + geo.crop_left) * sx, (c1 + geo.crop_left) * sx)
    got = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    tol = 2 * max(sy, sx) + 1  # the bilinear edge of one map pixel
    assert all(abs(g - e) <= tol for g, e in zip(got, want, strict=True)), (mode, orientation, got, want)
