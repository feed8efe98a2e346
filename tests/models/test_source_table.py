"""The --model source table: one entry per prefix, and register_source() for a user's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgcore.errors import ConfigError
from sgcore.models import (
    check_base,
    load_model,
    model_identity,
    register_source,
    resolve_preprocess,
)
from sgcore.models.preprocess import Preprocess
from sgcore.models.sources import SOURCES, Built, ModelSpec, SourceBase


class ToySource(SourceBase):
    """``toy:N``: a linear classifier of N classes."""

    prefix = "toy"
    example = "toy:3"

    def load(self, spec: ModelSpec) -> Built:
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, int(spec.value)))
        return Built(network=net, preprocess=self.preprocess(spec), categories=None, weights="(toy)")

    def preprocess(self, spec: ModelSpec) -> Preprocess:
        return Preprocess(crop_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)

    def check_base(self, spec: ModelSpec, base: str) -> None:
        if base == "guided_backprop":
            raise ConfigError("toy models refuse guided_backprop")


@pytest.fixture
def toy():
    register_source(ToySource())
    yield
    SOURCES.pop("toy", None)


def test_the_table_holds_one_source_per_prefix():
    assert sorted(SOURCES) == ["", "export", "hf", "py", "timm", "torchscript"]
    assert all(prefix == source.prefix for prefix, source in SOURCES.items())


def test_a_registered_source_serves_every_public_function(toy):
    loaded = load_model("toy:5")
    assert loaded.num_classes == 5 and loaded.source == "toy" and loaded.model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    assert resolve_preprocess("toy:5", image_size=16).crop_size == 16
    assert model_identity("toy:5") == {"source": "toy", "spec": "toy:5", "weights": "default", "files": {}}
    with pytest.raises(ConfigError, match="toy models refuse guided_backprop"):
        check_base("toy:5", "guided_backprop")
    with pytest.raises(ConfigError, match=r"names no model after 'toy:'; e.g. toy:3"):
        load_model("toy:")


def test_a_taken_prefix_is_refused_unless_clobbered(toy):
    with pytest.raises(ValueError, match=r"model source 'toy' is already registered \(ToySource\); pass clobber=True"):
        register_source(ToySource())
    register_source(ToySource(), clobber=True)
    with pytest.raises(TypeError, match="source must implement ModelSource"):
        register_source(object())
