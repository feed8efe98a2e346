"""Model registry, checkpoint loading and preprocessing.

``load_model("resnet50")`` builds a torchvision classifier with its DEFAULT
weights; ``load_model("demo")`` the small CNN shipped for the embedded demo;
``load_model("timm:resnet50")``, ``"hf:DIR"``, ``"torchscript:URL"``,
``"export:URL"`` and ``"py:MODULE:CALLABLE"`` the other sources
(:mod:`sgcore.models.sources`).
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
    resolve_preprocess,
)

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_PREPROCESS",
    "DEMO_WEIGHTS_PATH",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "SCORES",
    "DemoNet",
    "LoadedModel",
    "Preprocess",
    "check_base",
    "list_models",
    "load_model",
    "logits_of",
    "model_identity",
    "resolve_preprocess",
    "with_score",
]
