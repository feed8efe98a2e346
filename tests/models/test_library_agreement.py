"""sgcore's model input equals timm's and Hugging Face's own preprocessing on real
photographs (scikit-image's bundled samples), to within 1/255 mean absolute difference."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sgcore.io import decode_image
from sgcore.models.sources import hf_preprocess, timm_preprocess

skdata = pytest.importorskip("skimage.data")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1 / 255  # mean absolute difference in [0, 1] pixel units (the bar)
# Where both sides resize with PIL (timm; transformers' "pil" backend) the inputs are
# equal; transformers' "torchvision" backend resizes tensors with torchvision's own
# antialiased filters: measured at most 0.20/255 on these photographs.
EXACT = 1e-6


def _photos() -> dict[str, np.ndarray]:
    return {
        "coffee-wide": skdata.coffee(),
        "chelsea-tall": np.ascontiguousarray(np.rot90(skdata.chelsea())),
        "astronaut-square": skdata.astronaut(),
        "rocket-wide": skdata.rocket(),
    }


def _ours(photo: np.ndarray, pre) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    arr, _ = decode_image(buf.getvalue(), **pre.decode_kwargs())
    return pre.normalize(torch.from_numpy(arr[None]))[0]


def _mad(a: torch.Tensor, b: torch.Tensor, std) -> float:
    """Mean |a - b| in [0, 1] pixel units (undoing the std division)."""
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(((a - b).abs() * s).mean())


TIMM_CFGS = [
    {"input_size": (3, 176, 176), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": (3, 160, 224), "interpolation": "bilinear", "crop_pct": 0.9, "crop_mode": "center"},
    {"input_size": (3, 192, 192), "interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "squash"},
    {"input_size": (3, 160, 200), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "border"},
    {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "border"},
]


@pytest.mark.parametrize("cfg", TIMM_CFGS, ids=lambda c: f"{c['crop_mode']}-{c['input_size'][1]}x{c['input_size'][2]}")
def test_matches_timm_create_transform(cfg):
    cfg = {**cfg, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    pre = timm_preprocess(cfg)
    transform = timm.data.create_transform(**cfg, is_training=False)
    for name, photo in _photos().items():
        theirs = transform(Image.fromarray(photo))
        mad = _mad(_ours(photo, pre), theirs, cfg["std"])
        assert mad <= EXACT, (name, mad)


def test_matches_timm_for_a_model_config():
    model = timm.create_model("test_vit", pretrained=False)
    cfg = timm.data.resolve_model_data_config(model)
    pre = timm_preprocess(cfg)
    transform = timm.data.create_transform(**cfg, is_training=False)
    for name, photo in _photos().items():
        mad = _mad(_ours(photo, pre), transform(Image.fromarray(photo)), cfg["std"])
        assert mad <= EXACT, (name, mad)


def _hf_processors(tmp_path):
    vit = transformers.ViTImageProcessor(size={"height": 224, "width": 224})
    convnext = transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875)
    convnext_big = transformers.ConvNextImageProcessor(size={"shortest_edge": 384})
    deit = transformers.DeiTImageProcessor(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224})
    out = {}
    for name, proc in {"vit": vit, "convnext": convnext, "convnext384": convnext_big, "deit": deit}.items():
        proc.save_pretrained(tmp_path / name)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
def test_matches_hugging_face_image_processors(tmp_path, backend):
    import json

    for name, directory in _hf_processors(tmp_path).items():
        cfg = json.loads((directory / "preprocessor_config.json").read_text())
        pre = hf_preprocess(cfg, f"hf:{name}")
        proc = transformers.AutoImageProcessor.from_pretrained(directory, backend=backend)
        for photo_name, photo in _photos().items():
            theirs = proc(images=Image.fromarray(photo), return_tensors="pt")["pixel_values"][0]
            mad = _mad(_ours(photo, pre), theirs, cfg["image_std"])
            assert mad <= (EXACT if backend == "pil" else TOLERANCE), (name, backend, photo_name, mad)
