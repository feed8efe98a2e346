"""Former home of the base maps' helpers, kept as an import path.

The base maps are :mod:`sgcore.attribution.bases` (one module each);
``prefers_channels_last`` is :mod:`sgcore.attribution.prepare`'s.
"""

from sgcore.attribution.prepare import prefers_channels_last

__all__ = ["prefers_channels_last"]
