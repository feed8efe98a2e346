"""The per-image histogram survives values equal up to rounding."""

from __future__ import annotations

import numpy as np
import pytest

from sgcore.audit.plots import histogram


@pytest.mark.parametrize("values", [
    np.array([1.0, 1.0 - 2.2e-16, 1.0, 0.9999999999999998]),  # every map unchanged
    np.array([0.5]),
    np.array([np.nan, 0.2, 0.7]),
    np.array([]),
])
def test_histogram_renders(values):
    png = histogram(values, xlabel="spearman", title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
