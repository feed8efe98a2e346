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
        ({"interpolation": "lanczos"}, r"interpolation must be one of bilinear, bicubic, nearest; got 'lanczos'"),
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
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bicubic",
    }
    assert Preprocess.from_dict(data) == pre


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
