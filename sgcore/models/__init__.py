"""Model registry, checkpoint loading and preprocessing.

``load_model("resnet50")`` builds a torchvision classifier with its DEFAULT
weights; ``load_model("demo")`` the small CNN shipped for the embedded demo.
"""

from sgcore.models.demo_net import DEMO_CATEGORIES, DEMO_PREPROCESS, DemoNet
from sgcore.models.preprocess import INTERPOLATIONS, Preprocess
from sgcore.models.registry import (
    DEMO_WEIGHTS_PATH,
    LoadedModel,
    list_models,
    load_model,
    resolve_preprocess,
)

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_PREPROCESS",
    "DEMO_WEIGHTS_PATH",
    "INTERPOLATIONS",
    "DemoNet",
    "LoadedModel",
    "Preprocess",
    "list_models",
    "load_model",
    "resolve_preprocess",
]
