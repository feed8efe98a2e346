import dataclasses
import json

import pytest
import torch
from torchvision.transforms import functional as TF

from sgcore.errors import ConfigError
from sgcore.models import Preprocess
from sgcore.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess


def _pre(**overrides):
    fields = {"resize_size": 256, "crop_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return Preprocess(**{**fields, **overrides})


def test_normalize_matches_torchvision_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=g)
    before = images.clone()
    pre = _pre()
    out = pre.normalize(images)
    assert out.shape == (2, 3, 5, 7)
    assert out.dtype == torch.float32
    assert out.is_contiguous()
    expected = TF.normalize(images.permute(0, 3, 1, 2).float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(images, before)


def test_normalize_exact_values():
    pre = _pre(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    images = torch.tensor([[[[255, 0, 51]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    out = pre.normalize(images)
    torch.testing.assert_close(out.flatten(), torch.tensor([2.0, -1.0, -0.3]))


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(1, 4, 4, 3), TypeError, r"images must be uint8; got torch\.float32"),
        ([[1, 2, 3]], TypeError, r"images must be a torch\.Tensor; got list"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ValueError, r"images must have shape \(B, H, W, 3\); got \(1, 3, 4, 4\)"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), ValueError, r"got \(4, 4, 3\)"),
    ],
)
def test_normalize_rejects_bad_input(images, error, match):
    with pytest.raises(error, match=match):
        _pre().normalize(images)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"resize_size": 0}, r"resize_size must be a positive integer; got 0"),
        ({"crop_size": 22.5}, r"crop_size must be a positive integer; got 22\.5"),
        ({"mean": (0.5, 0.5)}, r"mean must be 3 finite numbers \(one per RGB channel\); got \(0\.5, 0\.5\)"),
        ({"mean": 0.5}, r"mean must be 3 numbers \(one per RGB channel\); got 0\.5"),
        ({"std": (0.2, 0.0, 0.2)}, r"std must be > 0 for every channel; got \(0\.2, 0\.0, 0\.2\)"),
        ({"interpolation": "spline"}, r"interpolation must be one of bilinear, bicubic, nearest, lanczos, box, hamming; got 'spline'"),
        ({"resize_mode": "stretch"}, r"resize_mode must be one of center_crop, squash, letterbox; got 'stretch'"),
        ({"crop_size": (224, 0)}, r"crop_size must be a positive integer or \[height, width\]; got \(224, 0\)"),
        ({"crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]; got 1\.5"),
        ({"channels": 2}, r"channels must be 1 \(greyscale\) or 3 \(RGB\); got 2"),
        ({"channels": 1}, r"mean must be 1 finite numbers \(one per channel, 1\)"),
        ({"scale": 0}, r"scale must be a positive number"),
        ({"fill": (0, 0, 300)}, r"fill must be 3 integers in \[0, 255\]; got \(0, 0, 300\)"),
    ],
)
def test_preprocess_validates_fields(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _pre(**overrides)


def test_to_dict_is_json_and_round_trips():
    pre = _pre(interpolation="bicubic")
    data = json.loads(json.dumps(pre.to_dict()))
    assert data == {
        "resize_size": 256,
        "crop_size": 224,
        "resize_mode": "center_crop",
        "crop_pct": None,
        "interpolation": "bicubic",
        "channels": 3,
        "scale": 1 / 255,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "fill": None,
        "crop_offset": "round",
    }
    assert Preprocess.from_dict(data) == pre
    wide = _pre(crop_size=(160, 320), resize_mode="letterbox", crop_pct=0.875, resize_size=None)
    assert wide.resize_size == (182, 365) and wide.map_shape == (160, 320)
    assert Preprocess.from_dict(json.loads(json.dumps(wide.to_dict()))) == wide


def test_old_manifest_dict_still_reads():
    old = {"resize_size": 256, "crop_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
           "interpolation": "bilinear"}
    assert Preprocess.from_dict(old) == imagenet_preprocess()


def test_overrides_replace_fields_and_keep_the_resize_margin():
    pre = imagenet_preprocess()
    assert pre.with_overrides(None) is pre
    assert pre.with_overrides({"crop_size": 112}).resize_size == 128
    assert pre.with_overrides({"crop_pct": 0.95}).resize_size == 235
    both = pre.with_overrides({"crop_size": [96, 128], "resize_mode": "squash", "resize_size": [96, 128]})
    assert both.map_shape == (96, 128) and both.resize_mode == "squash"
    grey = pre.with_overrides({"channels": 1, "mean": [0.5], "std": [0.25], "scale": 1.0})
    x = grey.normalize(torch.tensor([[[[1]]]], dtype=torch.uint8))
    torch.testing.assert_close(x.flatten(), torch.tensor([2.0]))
    with pytest.raises(ConfigError, match=r"unknown preprocess field\(s\) size; choose from crop_size, mean"):
        pre.with_overrides({"size": 3})


def test_letterbox_fill_is_the_mean_colour():
    pre = _pre(resize_mode="letterbox")
    assert pre.pad_fill() == (124, 116, 104)  # round(255 * mean), as timm's "border" mode
    assert _pre().pad_fill() == (0, 0, 0)
    assert _pre(fill=(1, 2, 3)).pad_fill() == (1, 2, 3)


def test_from_dict_reports_missing_keys():
    with pytest.raises(ConfigError, match=r"preprocess is missing mean, std; got keys \['crop_size', 'resize_size'\]"):
        Preprocess.from_dict({"resize_size": 8, "crop_size": 8})
    with pytest.raises(ConfigError, match=r"preprocess must be a dict; got list"):
        Preprocess.from_dict([])


def test_preprocess_is_frozen_and_hashable():
    pre = imagenet_preprocess()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.crop_size = 10
    assert hash(pre) == hash(imagenet_preprocess())
    assert pre.mean == IMAGENET_MEAN and isinstance(pre.mean, tuple)


def test_scaled_keeps_the_resize_ratio():
    pre = _pre(resize_size=232, crop_size=224)
    assert pre.scaled(None) is pre
    small = pre.scaled(112)
    assert (small.resize_size, small.crop_size) == (116, 112)
    assert (small.mean, small.std, small.interpolation) == (pre.mean, pre.std, pre.interpolation)
    with pytest.raises(ConfigError, match=r"image_size must be a positive integer; got 0"):
        pre.scaled(0)
