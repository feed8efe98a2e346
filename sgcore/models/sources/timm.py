"""``timm:NAME``: a timm model, pretrained (``--weights default``), random (``none``)
or from a checkpoint (.pth/.pt/.safetensors), with timm's own data config."""

from __future__ import annotations

import difflib
from typing import Any

import torch

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from sgcore.models.sources.base import Built, ModelSpec, SourceBase, need, seeded_init, short


def timm_preprocess(cfg: dict[str, Any]) -> Preprocess:
    """A :class:`Preprocess` equal to ``timm.data.create_transform(**cfg)`` (eval)."""
    c, h, w = (int(v) for v in cfg["input_size"])
    mode = {"center": "center_crop", "squash": "squash", "border": "letterbox"}.get(cfg.get("crop_mode") or "center")
    if mode is None:
        raise ConfigError(f"timm crop_mode {cfg.get('crop_mode')!r} is not supported (center, squash, border)")
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation == "random":
        interpolation = "bilinear"
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if c == 1 and len(mean) == 3:  # timm keeps RGB stats for 1-channel models; it averages them
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocess(crop_size=h if h == w else (h, w), crop_pct=float(cfg.get("crop_pct") or 0.875),
                      resize_mode=mode, interpolation=interpolation, channels=c, mean=mean, std=std)


def _timm(name: str) -> Any:
    spec = f"timm:{name}"
    timm = need("timm", "timm", spec)
    if timm.is_model(name):
        return timm
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown timm model {name!r} (--model {spec}){hint}")


def resolve_timm_preprocess(name: str) -> Preprocess:
    """timm's data config of ``name`` without building its weights (on the meta device)."""
    timm = _timm(name)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return timm_preprocess(timm.data.resolve_model_data_config(model))


class TimmSource(SourceBase):
    prefix = "timm"
    example = "timm:resnet50"

    def load(self, spec: ModelSpec) -> Built:
        name = spec.value
        timm = _timm(name)
        files: dict[str, str] = {}
        categories = None
        lowered = spec.weights.lower()
        if lowered == "none":
            with seeded_init():
                model = timm.create_model(name, pretrained=False)
            shown = "none"
        elif lowered == "default":
            try:
                model = timm.create_model(name, pretrained=True)
            except Exception as e:  # no network, no pretrained tag, hub errors
                raise ConfigError(
                    f"could not get timm's pretrained weights for {name} ({short(e)}); "
                    "no network? pass --weights CHECKPOINT (a .pth/.pt/.safetensors URL or path)"
                ) from None
            shown = f"timm-pretrained:{model.pretrained_cfg.get('hf_hub_id') or name}"
            info = getattr(timm.data, "ImageNetInfo", None)
            if info is not None and model.num_classes == 1000:
                categories = list(info().label_descriptions())
        else:
            found = checkpoint.read(spec.weights, spec.storage_options)
            shown = found.shown
            files[shown] = found.sha256
            state, extras = checkpoint.split_checkpoint(shown, found.content(),
                                                        keys=("state_dict", "model", "state_dict_ema"))
            with seeded_init():
                model = timm.create_model(name, pretrained=False)
            default = checkpoint.num_outputs(model)
            n = checkpoint.infer_num_classes(model, state, default)
            if n is not None and n != default:
                with seeded_init():
                    model = timm.create_model(name, pretrained=False, num_classes=n)
            checkpoint.load_strict(model, state, f"checkpoint {shown} does not fit timm:{name}")
            categories = checkpoint.categories_of(extras)
        pre = timm_preprocess(timm.data.resolve_model_data_config(model))
        return Built(network=model, preprocess=pre, categories=categories, weights=shown, files=files)

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        return resolve_timm_preprocess(spec.value)
