"""DemoNet: the small CNN that ships with sgcore for the embedded demo.

A VGG-style stack of conv-BatchNorm-ReLU blocks (Simonyan & Zisserman 2015,
arXiv:1409.1556; BatchNorm: Ioffe & Szegedy 2015, arXiv:1502.03167) with
three pooling stages, global average pooling and a linear head, sized for
64x64 RGB input. About 280k parameters; its float32 state_dict is ~1.1 MB.
"""

from __future__ import annotations

import torch
from torch import nn

from sgcore.models.preprocess import Preprocess

# Class names of the demo dataset, by class index (sgcore.demo draws them).
DEMO_CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

# The demo's own preprocessing: images are drawn at 64x64, so resize and crop
# are the identity; mean/std map [0, 1] pixels to roughly [-2, 2].
DEMO_PREPROCESS = Preprocess(
    resize_size=64,
    crop_size=64,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    interpolation="bilinear",
)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class DemoNet(nn.Module):
    """Small conv-BN-ReLU classifier for 64x64 RGB images.

    Args:
        num_classes: size of the linear head (4 for the demo shapes).
        width: channels of the first block; later stages double it.

    Input ``(B, 3, H, W)`` normalized images (any H, W >= 8 thanks to global
    average pooling); output ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = len(DEMO_CATEGORIES), *, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        w = width
        # Only one cheap block at full resolution: on the CPU the per-pixel
        # BatchNorm/ReLU traffic there costs more than the convolutions.
        self.features = nn.Sequential(
            *_block(3, w),
            nn.MaxPool2d(2),  # 32x32
            *_block(w, 2 * w),
            nn.MaxPool2d(2),  # 16x16
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.MaxPool2d(2),  # 8x8
            *_block(4 * w, 8 * w),
            *_block(8 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
