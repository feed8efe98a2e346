"""Pure torch attribution kernels: tensors in, tensors out (no I/O, no Ray)."""

from sgcore.attribution.postprocess import REDUCTIONS, clip_percentile, reduce_channels
from sgcore.attribution.prepare import fold_batchnorm, prepare_model
from sgcore.attribution.reliability import split_half_reliability, step_up
from sgcore.attribution.smoothgrad import (
    AGGREGATES,
    BASES,
    NOISES,
    PRECISIONS,
    SmoothGradResult,
    default_max_batch,
    smoothgrad,
)

__all__ = [
    "AGGREGATES",
    "BASES",
    "NOISES",
    "PRECISIONS",
    "REDUCTIONS",
    "SmoothGradResult",
    "clip_percentile",
    "default_max_batch",
    "fold_batchnorm",
    "prepare_model",
    "reduce_channels",
    "smoothgrad",
    "split_half_reliability",
    "step_up",
]
