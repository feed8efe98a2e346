"""Guided backprop through ReLU6 (MobileNet, EfficientNet-Lite): nn.ReLU6, F.relu6 and hardtanh with floor 0
are guided ReLUs; a hardtanh with another floor is not."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgcore.attribution import smoothgrad


class _GuidedReLU6(torch.autograd.Function):
    """The reference: ReLU6 forward, backward (0 < x < 6) * max(grad, 0)."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < 6)).to(grad.dtype)


class _Net(nn.Module):
    def __init__(self, act: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)
        self.act = act
        self.module = nn.ReLU6(inplace=act == "module_inplace")

    def _a(self, x: torch.Tensor) -> torch.Tensor:
        if self.act.startswith("module"):
            return self.module(x)
        if self.act == "F.relu6":
            return F.relu6(x)
        if self.act == "hardtanh":
            return F.hardtanh(x, min_val=0.0, max_val=6.0)
        if self.act == "reference":
            return _GuidedReLU6.apply(x)
        return F.hardtanh(x)  # floor -1: not a ReLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scaled so that some pre-activations pass 6 and the upper clamp matters.
        return self.head(self._a(self.c2(self._a(4.0 * self.c1(x)))).mean(dim=(2, 3)))


def _reference(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    net = _Net("reference").eval()
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).gather(1, targets[:, None]).sum(), x)
    return g


@pytest.mark.parametrize("act", ["module", "module_inplace", "F.relu6", "hardtanh"])
def test_guided_backprop_treats_relu6_as_a_relu(act):
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 4])
    net = _Net(act).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ReLU6 network: no "no ReLU ran" warning
        got = smoothgrad(net, images, targets, n_samples=1, noise_level=0.0, base="guided_backprop")
    torch.testing.assert_close(got, _reference(images, targets), rtol=1e-5, atol=1e-7)
    plain = smoothgrad(net, images, targets, n_samples=1, noise_level=0.0)
    assert not torch.allclose(got, plain)


def test_a_hardtanh_with_a_negative_floor_is_not_guided():
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 3])
    net = _Net("hardtanh_minus_one").eval()
    with pytest.warns(RuntimeWarning, match="guided_backprop: no ReLU ran in _Net"):
        got = smoothgrad(net, images, targets, n_samples=1, noise_level=0.0, base="guided_backprop")
    torch.testing.assert_close(got, smoothgrad(net, images, targets, n_samples=1, noise_level=0.0))
