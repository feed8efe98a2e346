"""sgcore: SmoothGrad saliency maps for whole image datasets, on Ray.

Importing sgcore does no I/O, starts no Ray and picks no device.
"""

from sgcore.attribution import clip_percentile, reduce_channels, smoothgrad
from sgcore.errors import ConfigError, InputError

__version__ = "0.1.0"

__all__ = ["ConfigError", "InputError", "__version__", "clip_percentile", "reduce_channels", "smoothgrad"]
