"""The benchmarks run on the kernels' tiny CNN."""

from __future__ import annotations

import pytest
from torch import nn

from tests.attribution.conftest import make_cnn


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn(0)
