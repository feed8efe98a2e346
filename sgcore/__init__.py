"""sgcore: SmoothGrad saliency maps for whole image datasets, on Ray.

Importing sgcore does no I/O, starts no Ray, picks no device, and does not
import torch until a kernel is used (a laptop that only submits jobs needs none).
"""

from typing import Any

from sgcore.errors import ConfigError, InputError

__version__ = "0.1.0"

_LAZY = {
    "smoothgrad": "sgcore.attribution",
    "reduce_channels": "sgcore.attribution",
    "clip_percentile": "sgcore.attribution",
    "prepare_model": "sgcore.attribution",
}

__all__ = [
    "ConfigError",
    "InputError",
    "__version__",
    "clip_percentile",
    "prepare_model",
    "reduce_channels",
    "smoothgrad",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgcore' has no attribute {name!r}")
