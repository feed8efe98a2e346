"""Cascading model-parameter randomization (Adebayo et al. 2018)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.audit.metrics import spearman
from sgcore.audit.sanity import (
    MapSettings,
    cascading_randomization,
    randomization_order,
    randomize_layer,
)

EXACT = MapSettings(n_samples=1, noise_level=0.0)


class HeadFirst(nn.Module):
    """Declares the head before the body: the order must follow the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_randomization_order_follows_forward_pass_top_first() -> None:
    model = HeadFirst().eval()
    order = randomization_order(model, torch.zeros(2, 3, 12, 12))
    assert order == ["head", "body.3", "body.0"]  # BatchNorm keeps its parameters


def _archives(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The model as the job loads each kind of archive (a TorchScript module, an exported graph)."""
    import warnings

    from sgcore.models.outputs import Classifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    exported = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    return {"module": Classifier(model), "torchscript": Classifier(scripted),
            "export": Classifier(exported.module(), frozen_mode=True)}


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_archives_cascade_in_the_modules_order_with_the_same_numbers(kind) -> None:
    # An archive calls no hookable modules: the order comes from the backward pass,
    # and randomizing its parameters in place gives the nn.Module's figures.
    torch.manual_seed(2)
    model = HeadFirst().eval()
    x = torch.randn(3, 3, 12, 12)
    models = _archives(model, x)
    archive = models[kind].eval()
    order = randomization_order(archive, x)
    assert order == randomization_order(models["module"], x) == ["inner.head", "inner.body.3", "inner.body.0"]
    assert all(p.requires_grad for p in archive.parameters())  # flags as they were
    state = {k: v.clone() for k, v in archive.state_dict().items()}
    t, seeds = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 6])
    settings = MapSettings(n_samples=3, noise_level=0.1)
    got = cascading_randomization(archive, x, t, settings=settings, seeds=seeds, seed=3)
    want = cascading_randomization(models["module"], x, t, settings=settings, seeds=seeds, seed=3)
    assert got.layers == want.layers
    np.testing.assert_allclose(got.spearman_abs, want.spearman_abs, atol=1e-6)
    np.testing.assert_allclose(got.spearman_signed, want.spearman_signed, atol=1e-6)
    np.testing.assert_allclose(got.ssim, want.ssim, atol=1e-6)
    assert got.spearman_abs[-1].mean() < 0.9  # the randomization reached the archive's maps
    for k, v in archive.state_dict().items():
        assert torch.equal(v, state[k])


def test_randomize_layer_is_seeded_and_changes_weights() -> None:
    a, b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    before = a.weight.detach().clone()
    randomize_layer(a, torch.Generator().manual_seed(5))
    randomize_layer(b, torch.Generator().manual_seed(5))
    assert not torch.equal(a.weight, before)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    bound = 1 / np.sqrt(3 * 3 * 3)
    assert float(a.weight.detach().abs().max()) <= bound


def test_randomize_layer_rejects_norm_layers() -> None:
    with pytest.raises(ValueError, match="module must have a weight of 2 or more dimensions; got BatchNorm2d"):
        randomize_layer(nn.BatchNorm2d(3), torch.Generator())


def test_linear_model_hand_case() -> None:
    """For logits = W x the gradient map of class c is W[c]: the cascade's numbers are known."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    targets = torch.tensor([1, 3])
    res = cascading_randomization(model, x, targets, settings=EXACT, seed=7)
    assert res.layers == ["1"]
    # Rebuild the random weights the cascade drew (seed 7, step 0) and the maps by hand.
    twin = nn.Linear(3 * 12 * 12, 4)
    randomize_layer(twin, torch.Generator().manual_seed(7 * 1_000_003))
    for i, c in enumerate(targets.tolist()):
        trained = model[1].weight[c].view(3, 12, 12).detach().numpy()
        rand = twin.weight[c].view(3, 12, 12).detach().numpy()
        assert res.spearman_abs[0, i] == pytest.approx(spearman(np.abs(trained).sum(0), np.abs(rand).sum(0)))
        assert res.spearman_signed[0, i] == pytest.approx(spearman(trained.sum(0), rand.sum(0)))
    # Independent random weights: no rank agreement left.
    assert np.all(np.abs(res.spearman_signed) < 0.3)


def test_cascade_leaves_the_model_alone_and_is_deterministic() -> None:
    torch.manual_seed(1)
    model = HeadFirst().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 1, 2])
    settings = MapSettings(n_samples=4, noise_level=0.1)
    seeds = torch.tensor([1, 2, 3])
    a = cascading_randomization(model, x, t, settings=settings, seeds=seeds, seed=3)
    b = cascading_randomization(model, x, t, settings=settings, seeds=seeds, seed=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert a.spearman_abs.shape == (3, 3) and a.ssim.shape == (3, 3)
    np.testing.assert_array_equal(a.spearman_abs, b.spearman_abs)
    np.testing.assert_array_equal(a.ssim, b.ssim)
    # Chunking images differently gives the same numbers (per-image seeds).
    c = cascading_randomization(model, x[:1], t[:1], settings=settings, seeds=seeds[:1], seed=3)
    np.testing.assert_allclose(c.spearman_abs[:, 0], a.spearman_abs[:, 0], atol=1e-9)


def test_cascade_errors() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match=r"layers must name modules of the model; got unknown \['nope'\]"):
        cascading_randomization(model, x, torch.tensor([0]), settings=EXACT, layers=["nope"])
    with pytest.raises(ValueError, match="model has no weight layers to randomize"):
        cascading_randomization(nn.Sequential(nn.Flatten()), x, torch.tensor([0]), settings=EXACT)


def test_map_settings_errors() -> None:
    with pytest.raises(ValueError, match=r"noise_level must be in \[0, 1\]; got 1.5"):
        MapSettings(noise_level=1.5)
    with pytest.raises(ValueError, match="n_samples must be a positive integer; got 0"):
        MapSettings(n_samples=0)


def test_map_settings_from_a_job_with_overrides() -> None:
    job = {"n_samples": 20, "noise_level": 0.3, "aggregate": "var", "base": "guided_backprop", "noise": "sobol",
           "reduction": "sum", "precision": "bf16", "max_batch": None, "ig_steps": 8, "model": "demo"}
    s = MapSettings.from_job(job, n_samples=None, reduction="max_abs")
    assert (s.n_samples, s.noise_level, s.aggregate, s.base, s.noise) == (20, 0.3, "var", "guided_backprop", "sobol")
    assert (s.reduction, s.precision, s.ig_steps, s.max_batch) == ("max_abs", "bf16", 8, None)
    assert MapSettings.from_job({}) == MapSettings()  # nothing recorded: the defaults
    with pytest.raises(TypeError, match=r"overrides must be MapSettings fields; got \['model'\]"):
        MapSettings.from_job(job, model="other")
    with pytest.raises(ValueError, match="base must be one of gradient, .*; got 'lrp'"):
        MapSettings.from_job({"base": "lrp"})


def _wrapped(name: str) -> nn.Module:
    """A network as the audit's replica holds it: loaded by sgcore (random weights), wrapped for its score."""
    from sgcore.models import load_model, with_score

    return with_score(load_model(name, "none").model.eval(), "logit")


def _short(names: list[str]) -> list[str]:
    """The names without the wrappers' common prefix (``inner.`` and the like)."""
    prefix = os.path.commonprefix(names)
    prefix = prefix[: prefix.rfind(".") + 1]
    return [n[len(prefix):] for n in names]


def test_block_cascade_walks_the_stages_of_timm_and_torchvision_networks() -> None:
    from sgcore.audit.sanity import BLOCKS_ABOVE, cascade_steps

    effnet = _wrapped("timm:tf_efficientnet_lite0")
    order = randomization_order(effnet, torch.rand(1, 3, 224, 224))
    steps = cascade_steps(effnet, order, "auto")  # 50 weight layers: blocks
    names = _short([name for name, _ in steps])
    assert len(order) > BLOCKS_ABOVE
    assert names == ["classifier", "conv_head", *[f"blocks.{i}" for i in range(6, -1, -1)], "conv_stem"], names
    assert sorted(m for _, members in steps for m in members) == sorted(order)  # every layer, once
    assert [m for _, members in steps for m in members] == order  # in the cascade's order
    resnet = _wrapped("resnet18")
    order = randomization_order(resnet, torch.rand(1, 3, 64, 64))
    assert cascade_steps(resnet, order, "auto") == [(n, [n]) for n in order]  # 21 layers: one step each
    names = _short([name for name, _ in cascade_steps(resnet, order, "block")])
    assert names == ["fc", "layer4", "layer3", "layer2", "layer1", "conv1"], names


def test_a_block_cascade_randomizes_a_whole_stage_per_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1)), nn.Flatten(), nn.Linear(4 * 12 * 12, 3)).eval()
    x, t = torch.rand(2, 3, 12, 12), torch.tensor([0, 1])
    settings = MapSettings(n_samples=2, noise_level=0.1)
    layers = cascading_randomization(model, x, t, settings=settings, seeds=torch.tensor([1, 2]), granularity="layer")
    blocks = cascading_randomization(model, x, t, settings=settings, seeds=torch.tensor([1, 2]), granularity="block")
    assert layers.layers == ["3", "1.2", "1.0", "0"]
    assert blocks.layers == ["3", "1", "0"] and blocks.spearman_abs.shape == (3, 2)
    # The first step randomizes the same layer either way, from the same generator: the same maps.
    np.testing.assert_allclose(blocks.spearman_abs[0], layers.spearman_abs[0])
    # The last step has every layer randomized either way.
    assert np.isfinite(blocks.spearman_abs).all()
