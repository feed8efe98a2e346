"""A second trained model for calibration: a small CNN on scikit-learn's digits.

The 1 797 handwritten digits of ``sklearn.datasets.load_digits`` (8×8, 17 grey
levels, bundled with scikit-learn: no download) are upsampled bilinearly to
``size`` px and standardised; a four-layer CNN trains on them in seconds on one
CPU core. It differs from the demo net in data (real handwriting), input
(one channel) and architecture (max pooling, a dense head, no BatchNorm), which is what a
second calibration point needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class DigitsNet(nn.Module):
    """conv-ReLU-maxpool ×3, flatten, linear (10 classes), for 32 px inputs."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@dataclass(frozen=True, kw_only=True)
class DigitsData:
    """Standardised upsampled digits ``(N, 1, size, size)`` and labels ``(N,)``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_data(*, size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """The digits, upsampled to ``size`` px, split reproducibly into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits model needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    y = torch.from_numpy(bunch.target).long()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = int(x.shape[0] * (1 - test_fraction))
    tr, te = order[:cut], order[cut:]
    return DigitsData(train_x=x[tr], train_y=y[tr], test_x=x[te], test_y=y[te])


def train_digits_model(data: DigitsData | None = None, *, epochs: int = 3, seed: int = 0) -> DigitsNet:
    """Trains ``DigitsNet`` (Adam, batch 64) deterministically; returns it in eval mode."""
    data = data or load_digits_data()
    torch.manual_seed(seed)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(data.train_x.shape[0], generator=gen)
        for start in range(0, order.numel(), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


DIGITS_WEIGHTS_PATH = Path(__file__).with_name("digits.pt")


def load_digits_model() -> DigitsNet:
    """The shipped ``digits.pt`` (``train_digits_model()`` with its defaults), in eval mode."""
    model = DigitsNet()
    model.load_state_dict(torch.load(DIGITS_WEIGHTS_PATH, map_location="cpu", weights_only=True))
    return model.eval()
