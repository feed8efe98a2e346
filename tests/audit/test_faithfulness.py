"""Deletion / insertion curves (Petsiuk et al. 2018) on models whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.audit.faithfulness import (
    blur,
    deletion_insertion,
    perturbation_curve,
    random_order,
    saliency_order,
)


class SumModel(nn.Module):
    """Logits (sum of channel 0 over a pixel mask, 0): probability of class 0 is sigmoid(sum)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.mask).sum(dim=(1, 2))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_saliency_order_hand_case() -> None:
    m = torch.tensor([[[0.1, -3.0], [2.0, 0.0]]])
    assert saliency_order(m).tolist() == [[1, 2, 0, 3]]


def test_perturbation_curve_matches_hand_computation() -> None:
    model = SumModel(torch.ones(2, 2))
    start = torch.ones(1, 1, 2, 2)
    end = torch.zeros(1, 1, 2, 2)
    order = torch.tensor([[3, 0, 1, 2]])
    curve = perturbation_curve(model, start, end, torch.tensor([0]), order, steps=4)
    # Step k removes k pixels: sum = 4 - k, probability = sigmoid(4 - k).
    expected = 1 / (1 + np.exp(-(4.0 - np.arange(5))))
    np.testing.assert_allclose(curve[0], expected, rtol=1e-6)
    # Two steps over four pixels: 0, 2, 4 removed.
    curve2 = perturbation_curve(model, start, end, torch.tensor([0]), order, steps=2, max_batch=1)
    np.testing.assert_allclose(curve2[0], expected[[0, 2, 4]], rtol=1e-6)


def test_saliency_order_beats_random_when_the_map_is_right() -> None:
    h = w = 8
    mask = torch.zeros(h, w)
    mask[2:4, 5:7] = 1.0  # the model only looks at these 4 pixels
    model = SumModel(mask * 2.0).eval()
    images = torch.zeros(4, 3, h, w)
    images[:, :, 2:4, 5:7] = 1.5  # a small bright object: blurring spreads it out
    maps = mask.expand(4, h, w).clone() + 0.01 * torch.rand(4, h, w, generator=torch.Generator().manual_seed(0))
    res = deletion_insertion(model, images, torch.zeros(4, dtype=torch.int64), maps, steps=16, seed=1)
    aucs = res.aucs()
    assert res.deletion.shape == (4, 17)
    assert np.all(aucs["deletion_auc"] < aucs["deletion_auc_random"])
    assert np.all(aucs["insertion_auc"] > aucs["insertion_auc_random"])
    # Deleting the 4 salient pixels (step 1 of 16 = 4 pixels) leaves sigmoid(0) = 0.5.
    np.testing.assert_allclose(res.deletion[:, 1], 0.5, rtol=1e-6)


def test_random_order_is_a_seeded_permutation() -> None:
    a = random_order(3, 10, torch.Generator().manual_seed(4))
    b = random_order(3, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert all(sorted(r.tolist()) == list(range(10)) for r in a)


def test_blur_keeps_constants_and_smooths() -> None:
    const = torch.full((1, 3, 9, 9), 0.7)
    torch.testing.assert_close(blur(const, 2.0), const)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    out = blur(spike, 1.0)
    assert float(out.max()) < 0.2 and float(out.sum()) == pytest.approx(1.0, abs=1e-5)


def test_faithfulness_errors() -> None:
    model = SumModel(torch.ones(2, 2))
    x = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([0])
    with pytest.raises(ValueError, match=r"maps must have shape \(1, 2, 2\) to match images; got \(1, 3, 3\)"):
        deletion_insertion(model, x, t, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match=r"order must have shape \(1, 4\); got \(1, 3\)"):
        perturbation_curve(model, x, x, t, torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="steps must be a positive integer; got 0"):
        perturbation_curve(model, x, x, t, torch.zeros(1, 4, dtype=torch.int64), steps=0)
    with pytest.raises(ValueError, match="sigma must be > 0; got 0"):
        blur(x, 0)
    with pytest.raises(ValueError, match=r"maps must have shape \(B, H, W\); got \(4,\)"):
        saliency_order(torch.zeros(4))
