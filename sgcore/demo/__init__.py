"""The embedded demo: a deterministic shape dataset with object masks, and
the training of the small CNN shipped as ``sgcore/models/weights/demo.pt``, with
a planted shortcut (:data:`DEMO_SHORTCUT`) for the strategy audit to find.
"""

from sgcore.demo.dataset import (
    EVAL_SEED,
    HELDOUT_SEED,
    TRAIN_SEED,
    DemoSplit,
    ensure_demo_data,
    generate_dataset,
    make_split,
)
from sgcore.demo.shapes import DEMO_CLASSES, DEMO_SHORTCUT, Shortcut, render_sample
from sgcore.demo.train import TrainConfig, evaluate, save_demo_checkpoint, train_demo_model

__all__ = [
    "DEMO_CLASSES",
    "DEMO_SHORTCUT",
    "EVAL_SEED",
    "HELDOUT_SEED",
    "TRAIN_SEED",
    "DemoSplit",
    "Shortcut",
    "TrainConfig",
    "ensure_demo_data",
    "evaluate",
    "generate_dataset",
    "make_split",
    "render_sample",
    "save_demo_checkpoint",
    "train_demo_model",
]
