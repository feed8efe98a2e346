"""Fixtures for the attribution kernels: tiny models, images and a naive reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from sgcore.attribution._noise import standard_noise


class TinyCNN(nn.Module):
    """conv-BN-ReLU ×2, average pool, linear: small enough for n in the thousands."""

    def __init__(self, num_classes: int = 5, width: int = 6, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=inplace),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def make_cnn(seed: int = 0, *, inplace: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyCNN(inplace=inplace)
    # Non-trivial running statistics, so that BatchNorm is not the identity.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(name="make_cnn")
def _make_cnn() -> Callable[..., nn.Module]:
    return make_cnn


@pytest.fixture
def cnn() -> nn.Module:
    return make_cnn(0)


@pytest.fixture
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, 6, 6, generator=gen)


@pytest.fixture
def targets() -> torch.Tensor:
    return torch.tensor([0, 3, 1])


@pytest.fixture
def seeds() -> torch.Tensor:
    return torch.tensor([11, 22, 33])


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _GuidedReLUModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x)


def _guided_copy(model: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    for parent in clone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, _GuidedReLUModule())
    return clone


def _grad(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    score = model(x.unsqueeze(0))[0, target]
    (g,) = torch.autograd.grad(score, x)
    return g


def naive_smoothgrad(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    seeds: torch.Tensor,
    *,
    n_samples: int,
    noise_level: float,
    aggregate: str = "mean",
    base: str = "gradient",
    noise: str = "gaussian",
    ig_steps: int = 8,
    ig_baseline: float = 0.0,
) -> torch.Tensor:
    """One image, one sample, one integration step at a time, in float64 sums."""
    net = _guided_copy(model) if base == "guided_backprop" else model
    nodes, weights = np.polynomial.legendre.leggauss(ig_steps)
    alphas, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    out = []
    for x, t, s in zip(images, targets.tolist(), seeds.tolist(), strict=False):
        sigma = noise_level * float(x.max() - x.min())
        eps = standard_noise(n_samples, tuple(x.shape), s, device=x.device, kind=noise)
        maps = []
        for k in range(n_samples):
            xt = x + sigma * eps[k]
            if base in ("gradient", "guided_backprop"):
                m = _grad(net, xt, t)
            elif base == "input_x_gradient":
                m = xt * _grad(net, xt, t)
            else:
                ref = torch.full_like(x, ig_baseline)
                total = torch.zeros_like(x, dtype=torch.float64)
                for a, w in zip(alphas, weights, strict=False):
                    total += float(w) * _grad(net, ref + float(a) * (xt - ref), t).double()
                m = (total * (xt - ref).double()).float()
            maps.append(m.double())
        stack = torch.stack(maps)
        if aggregate == "mean":
            out.append(stack.mean(0))
        elif aggregate == "square":
            out.append(stack.square().mean(0))
        else:
            out.append(stack.var(0, unbiased=False))
    return torch.stack(out).float()


@pytest.fixture
def naive() -> Callable[..., torch.Tensor]:
    return naive_smoothgrad
