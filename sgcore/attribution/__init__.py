"""Pure torch attribution kernels: tensors in, tensors out (no I/O, no Ray)."""

from sgcore.attribution.postprocess import REDUCTIONS, clip_percentile, reduce_channels
from sgcore.attribution.smoothgrad import (
    AGGREGATES,
    BASES,
    PRECISIONS,
    default_max_batch,
    smoothgrad,
)

__all__ = [
    "AGGREGATES",
    "BASES",
    "PRECISIONS",
    "REDUCTIONS",
    "clip_percentile",
    "default_max_batch",
    "reduce_channels",
    "smoothgrad",
]
