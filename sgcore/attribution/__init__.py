"""Pure torch attribution kernels: tensors in, tensors out (no I/O, no Ray)."""

from sgcore.attribution.postprocess import REDUCTIONS, clip_percentile, reduce_channels
from sgcore.attribution.prepare import fold_batchnorm, prepare_model
from sgcore.attribution.smoothgrad import (
    AGGREGATES,
    BASES,
    NOISES,
    PRECISIONS,
    default_max_batch,
    smoothgrad,
)

__all__ = [
    "AGGREGATES",
    "BASES",
    "NOISES",
    "PRECISIONS",
    "REDUCTIONS",
    "clip_percentile",
    "default_max_batch",
    "fold_batchnorm",
    "prepare_model",
    "reduce_channels",
    "smoothgrad",
]
