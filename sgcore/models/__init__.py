"""Model registry, checkpoint loading and preprocessing.

``load_model("resnet50")`` builds a torchvision classifier with its DEFAULT
weights; ``load_model("demo")`` the small CNN shipped for the embedded demo;
``load_model("timm:resnet50")``, ``"hf:DIR"``, ``"torchscript:URL"``,
``"export:URL"`` and ``"py:MODULE:CALLABLE"`` the other sources
(:mod:`sgcore.models.sources`, one module per prefix; a package adds its own
with :func:`register_source`). Weights files are read once per process, through
:mod:`sgcore.io`, by :mod:`sgcore.models.checkpoint`.
"""

from sgcore.models.demo_net import DEMO_CATEGORIES, DEMO_PREPROCESS, DemoNet
from sgcore.models.outputs import SCORES, logits_of, with_score
from sgcore.models.preprocess import INTERPOLATIONS, RESIZE_MODES, Preprocess
from sgcore.models.registry import (
    DEMO_WEIGHTS_PATH,
    LoadedModel,
    check_base,
    list_models,
    load_model,
    model_identity,
    probe_on_driver,
    resolve_preprocess,
)
from sgcore.models.sources import ModelSource, ModelSpec, register_source

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_PREPROCESS",
    "DEMO_WEIGHTS_PATH",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "SCORES",
    "DemoNet",
    "LoadedModel",
    "ModelSource",
    "ModelSpec",
    "Preprocess",
    "check_base",
    "list_models",
    "load_model",
    "logits_of",
    "model_identity",
    "probe_on_driver",
    "register_source",
    "resolve_preprocess",
    "with_score",
]
