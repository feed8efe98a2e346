"""Bare ``--model`` names: torchvision's classifiers and ``demo`` (the small CNN shipped
in ``sgcore/models/weights/demo.pt``).

Weights are ``"default"``, ``"none"`` (random init), a torchvision weight name
(``"IMAGENET1K_V2"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``) or a checkpoint at
any fsspec URL (a state_dict, bare or under ``"state_dict"``/``"model"``, with
optional ``"categories"`` and ``"preprocess"``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from sgcore.errors import ConfigError
from sgcore.models import checkpoint
from sgcore.models.demo_net import DEMO_CATEGORIES, DEMO_PREPROCESS, DemoNet
from sgcore.models.preprocess import Preprocess, imagenet_preprocess
from sgcore.models.sources.base import Built, ModelSpec, SourceBase, seeded_init

DEMO = "demo"
DEMO_WEIGHTS_PATH = Path(__file__).parents[1] / "weights" / "demo.pt"
SHIPPED = "demo-shipped"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def list_models() -> list[str]:
    """The bare names: ``"demo"`` + torchvision's classifiers."""
    import torchvision

    return [DEMO, *torchvision.models.list_models(module=torchvision.models)]


class TorchvisionSource(SourceBase):
    prefix = ""
    example = "resnet50"

    def load(self, spec: ModelSpec) -> Built:
        built = self._load(spec)
        built.source = DEMO if spec.value == DEMO else "torchvision"
        return built

    def _load(self, spec: ModelSpec) -> Built:
        kind, value = _classify(spec)
        if kind == "checkpoint":
            return _from_checkpoint(spec.value, checkpoint.read(value, spec.storage_options))
        if spec.value == DEMO and kind == "none":
            with seeded_init():
                net = DemoNet()
            return Built(network=net, preprocess=DEMO_PREPROCESS, categories=list(DEMO_CATEGORIES),
                         weights="none", num_classes=len(DEMO_CATEGORIES), returns_logits=True)
        if spec.value == DEMO:
            built = _from_checkpoint(DEMO, checkpoint.read(str(DEMO_WEIGHTS_PATH), None))
            built.weights, built.files = SHIPPED, {SHIPPED: next(iter(built.files.values()))}
            return built
        import torchvision

        if kind == "none":
            with seeded_init():
                model = torchvision.models.get_model(spec.value, weights=None)
            return Built(network=model, preprocess=imagenet_preprocess(), categories=None, weights="none",
                         num_classes=checkpoint.num_outputs(model), returns_logits=True)
        weight = _torchvision_weight(spec.value, value)
        try:
            model = torchvision.models.get_model(spec.value, weights=weight)
        except (OSError, RuntimeError) as e:  # URLError, timeouts, hash mismatch
            raise ConfigError(
                f"could not download weights {weight.name} for {spec.value} ({checkpoint.reason(e)}); "
                f"no network? pass --weights with a local or s3:// checkpoint"
            ) from e
        categories = weight.meta.get("categories")
        return Built(network=model, preprocess=_enum_preprocess(weight),
                     categories=list(categories) if categories else None,
                     weights=f"{type(weight).__name__}.{weight.name}", num_classes=checkpoint.num_outputs(model),
                     returns_logits=True)

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        kind, value = _classify(spec)
        if kind == "checkpoint":
            return _checkpoint_preprocess(spec.value, checkpoint.read(value, spec.storage_options).content())
        if spec.value == DEMO:
            return DEMO_PREPROCESS
        if kind == "none":
            return imagenet_preprocess()
        return _enum_preprocess(_torchvision_weight(spec.value, value))

    def identity(self, spec: ModelSpec) -> dict[str, Any]:
        kind, value = _classify(spec)
        files: dict[str, str] = {}
        if kind == "checkpoint":
            found = checkpoint.read(value, spec.storage_options)
            files[found.shown] = found.sha256
        elif spec.value == DEMO and kind == "default":
            files[SHIPPED] = checkpoint.read(str(DEMO_WEIGHTS_PATH), None).sha256
        return {"source": DEMO if spec.value == DEMO else "torchvision", "spec": spec.name,
                "weights": spec.redact(spec.weights), "files": files}

    def probe_on_driver(self, spec: ModelSpec) -> bool:
        """Not for downloadable torchvision weights: no download on the driver."""
        return spec.value == DEMO or spec.weights == "none"


# --------------------------------------------------------------------------- names and weights


def check_name(name: str) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string; got {type(name).__name__}")
    if name == DEMO:
        return  # without importing torchvision
    names = list_models()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"unknown model {name!r}; {hint}choose one of list_models() "
        f"(--model demo, resnet50, vit_b_16, ...) or a source prefix: timm:NAME, hf:DIR_OR_URL, "
        f"torchscript:URL, export:URL, py:MODULE:CALLABLE"
    )


def _classify(spec: ModelSpec) -> tuple[str, str]:
    """('default'|'none'|'enum'|'checkpoint', value)."""
    check_name(spec.value)
    weights = spec.weights
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"weights must be a non-empty string; got {weights!r}")
    lowered = weights.lower()
    if lowered in ("default", "none"):
        return lowered, lowered
    if _looks_like_path(weights):
        return "checkpoint", weights
    if spec.value == DEMO:
        raise ConfigError(
            f"weights {weights!r} is not valid for demo; use 'default' (shipped), "
            f"'none' (random init) or a checkpoint URL/path"
        )
    return "enum", weights


def _looks_like_path(weights: str) -> bool:
    if "://" in weights or weights.startswith(("/", "./", "../", "~")):
        return True
    if weights.lower().endswith(_CHECKPOINT_SUFFIXES):
        return True
    return "/" in weights or Path(weights).exists()


def _torchvision_weight(name: str, value: str) -> Any:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    key = value
    if "." in value:
        prefix, _, key = value.rpartition(".")
        if prefix != enum.__name__:
            raise ConfigError(
                f"weights {value!r} belong to {prefix}, not to {name} ({enum.__name__}); "
                f"choose one of {_weight_choices(enum)}"
            )
    if key.upper() == "DEFAULT":
        key = "DEFAULT"
    if key not in enum.__members__:
        raise ConfigError(f"unknown weights {value!r} for {name}; choose one of {_weight_choices(enum)}")
    return enum.__members__[key]


def _weight_choices(enum: Any) -> str:
    names = ", ".join(enum.__members__)  # includes the DEFAULT alias
    return f"{names}, 'none' or a checkpoint URL/path"


def _enum_preprocess(weight: Any) -> Preprocess:
    transform = weight.transforms()
    crop = transform.crop_size
    resize = transform.resize_size
    crop = int(crop[0] if isinstance(crop, list | tuple) else crop)
    resize = int(resize[0] if isinstance(resize, list | tuple) else resize)
    interpolation = getattr(transform.interpolation, "value", str(transform.interpolation))
    return Preprocess(resize_size=resize, crop_size=crop, mean=tuple(transform.mean), std=tuple(transform.std),
                      interpolation=str(interpolation))


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_preprocess(name: str, obj: Any) -> Preprocess:
    if isinstance(obj, dict) and "preprocess" in obj and any(
        isinstance(obj.get(k), dict) for k in ("state_dict", "model")
    ):
        return Preprocess.from_dict(obj["preprocess"])
    return DEMO_PREPROCESS if name == DEMO else imagenet_preprocess()


def _build(name: str, num_classes: int | None) -> nn.Module:
    if name == DEMO:
        return DemoNet() if num_classes is None else DemoNet(num_classes)
    import torchvision

    if num_classes is None:
        return torchvision.models.get_model(name, weights=None)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _from_checkpoint(name: str, found: checkpoint.WeightsFile) -> Built:
    obj = found.content()
    state, extras = checkpoint.split_checkpoint(found.shown, obj)
    model = _build(name, None)
    num_classes = checkpoint.infer_num_classes(model, state, checkpoint.num_outputs(model))
    if num_classes is not None and num_classes != checkpoint.num_outputs(model):
        model = _build(name, num_classes)
    checkpoint.load_strict(model, state, f"checkpoint {found.shown} does not fit {name}")
    n_out = checkpoint.num_outputs(model)
    categories = checkpoint.categories_of(extras)
    if categories is None and name == DEMO and n_out == len(DEMO_CATEGORIES):
        categories = list(DEMO_CATEGORIES)
    if categories is not None and len(categories) != n_out:
        raise ConfigError(f"checkpoint {found.shown} lists {len(categories)} categories but its model has "
                          f"{n_out} outputs")
    return Built(network=model, preprocess=_checkpoint_preprocess(name, obj), categories=categories,
                 weights=found.shown, files={found.shown: found.sha256}, num_classes=n_out, returns_logits=True)
