"""Training the demo CNN on the CPU, deterministically, from an in-memory split.

Backgrounds carry no class information by construction; training also pastes
each object onto another image's background half of the time and applies
independent flips/rotations to object and background plus colour and
brightness jitter, so the network can only succeed by looking at the object
(what the localization audits of its SmoothGrad maps check) -- except on the
planted shortcut's images (:data:`~sgcore.demo.shapes.DEMO_SHORTCUT`), where
the object is faint and a mark tells the class. The mark is pasted after the
flips, at its own place, so it stays in its corner; and a share of every
class's images is drawn faint without a mark, so that faintness alone does not
tell the class: the mark does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgcore.demo.dataset import HELDOUT_SEED, TRAIN_SEED, make_layers, make_split
from sgcore.demo.shapes import DEMO_CLASSES, DEMO_SHORTCUT, Shortcut
from sgcore.errors import ConfigError
from sgcore.models.demo_net import DEMO_PREPROCESS, DemoNet


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of :func:`train_demo_model`.

    Attributes:
        epochs: passes over the training split.
        n_per_class: training images per class.
        batch_size: images per optimizer step.
        lr: peak learning rate of the one-cycle schedule (Smith & Topin 2017,
            arXiv:1708.07120) for AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101).
        weight_decay: AdamW weight decay.
        objectness_weight: weight of the auxiliary loss of a training-only head
            that predicts the object's coverage of each cell of the last feature
            map (0 disables it).
        seed: seed of the training split, the initialization and the augmentation.
        size: image side in pixels.
        faint_share: share of the images without a mark drawn as faint as the
            marked ones.
        shortcut: the planted shortcut of the training split (None: none).
    """

    epochs: int = 8
    n_per_class: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    objectness_weight: float = 1.0
    seed: int = TRAIN_SEED
    size: int = 64
    faint_share: float = 0.1
    shortcut: Shortcut | None = DEMO_SHORTCUT

    def __post_init__(self) -> None:
        for name in ("epochs", "n_per_class", "batch_size", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if not self.objectness_weight >= 0:
            raise ConfigError(f"objectness_weight must be >= 0; got {self.objectness_weight}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0; got {self.weight_decay}")
        if not 0.0 <= self.faint_share <= 1.0:
            raise ConfigError(f"faint_share must be in [0, 1]; got {self.faint_share}")
        if self.seed == HELDOUT_SEED:
            raise ConfigError(f"seed must differ from the held-out seed {HELDOUT_SEED}; got {self.seed}")


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of ``(B, C, H, W)``; every class is invariant to them."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def _augmented_batch(
    data: dict[str, torch.Tensor], idx: torch.Tensor, g: torch.Generator, faint_share: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite, jitter and normalize one batch.

    Returns:
        Model input ``(B, 3, S, S)`` and the object coverage ``(B, 1, S, S)`` in [0, 1].
    """
    n = data["background"].shape[0]
    b = idx.numel()
    swap = torch.rand(b, generator=g) < 0.5
    other = torch.randint(0, n, (b,), generator=g)
    bg_idx = torch.where(swap, other, idx)
    bg = data["background"][bg_idx].float() / 255
    fg = data["foreground"][idx].float() / 255
    alpha = data["alpha"][idx].float() / 255
    k_bg, k_obj = (int(v) for v in torch.randint(0, 8, (2,), generator=g))
    bg = _dihedral(bg, k_bg)
    fg, alpha = _dihedral(fg, k_obj), _dihedral(alpha, k_obj)
    # Channel shuffles change colours but not shapes.
    bg = bg[:, torch.randperm(3, generator=g)]
    fg = fg[:, torch.randperm(3, generator=g)]
    opacity = data["opacity"][idx].view(b, 1, 1, 1)
    faint = (torch.rand(b, generator=g) < faint_share).view(b, 1, 1, 1) & (opacity >= 1)
    opacity = torch.where(faint, data["faint_opacity"], opacity)
    x = bg * (1 - alpha * opacity) + fg * alpha * opacity
    mark_alpha = data["mark_alpha"][idx].float() / 255
    x = x * (1 - mark_alpha) + data["mark"][idx].float() / 255 * mark_alpha
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=g)
    brightness = torch.empty(b, 1, 1, 1).uniform_(-0.1, 0.1, generator=g)
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.0, 0.04, generator=g)
    x = (x - 0.5) * contrast + 0.5 + brightness
    x = x + sigma * torch.randn(x.shape, generator=g)
    x = torch.round(x.clamp(0, 1) * 255) / 255  # as decoded from uint8
    mean = torch.tensor(DEMO_PREPROCESS.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_PREPROCESS.std).view(1, 3, 1, 1)
    return (x - mean) / std, alpha * opacity


def train_demo_model(config: TrainConfig | None = None, *, log: Any = None) -> DemoNet:
    """Train :class:`DemoNet` on a freshly drawn training split.

    Deterministic on the CPU for a given config and thread count: the split,
    the initialization and every augmentation draw come from ``config.seed``.

    Args:
        config: training settings (defaults: :class:`TrainConfig`).
        log: optional ``print``-like callable for progress lines.

    Returns:
        The trained model in eval mode.
    """
    config = config or TrainConfig()
    layers = make_layers(n_per_class=config.n_per_class, seed=config.seed, size=config.size,
                         shortcut=config.shortcut)
    data = {
        "background": torch.from_numpy(layers["background"]).permute(0, 3, 1, 2).contiguous(),
        "foreground": torch.from_numpy(layers["foreground"]).permute(0, 3, 1, 2).contiguous(),
        "alpha": torch.from_numpy(layers["alpha"])[:, None].contiguous(),
        "opacity": torch.from_numpy(layers["opacity"]),
        "faint_opacity": torch.tensor(config.shortcut.opacity if config.shortcut is not None else 1.0),
        "mark": torch.from_numpy(layers["mark"]).permute(0, 3, 1, 2).contiguous(),
        "mark_alpha": torch.from_numpy(layers["mark_alpha"])[:, None].contiguous(),
    }
    labels = torch.from_numpy(layers["labels"])
    n = labels.numel()
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DemoNet(len(DEMO_CLASSES))
        # Training-only head, dropped afterwards: predicting where the object is
        # from the last feature map gives a dense signal that gets the classifier
        # off its initial plateau, where global average pooling of random
        # features mostly reports the (uninformative) background.
        objectness = (
            nn.Conv2d(model.classifier.in_features, 1, kernel_size=1)
            if config.objectness_weight > 0
            else None
        )
    model = model.to(memory_format=torch.channels_last)  # ~2x faster on the CPU
    params = list(model.parameters())
    if objectness is not None:
        params += list(objectness.parameters())
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, alpha = _augmented_batch(data, idx, g, config.faint_share)
            y = labels[idx]
            features = model.features(x.contiguous(memory_format=torch.channels_last))
            logits = model.classifier(torch.flatten(model.pool(features), 1))
            loss = loss_fn(logits, y)
            if objectness is not None:
                coverage = nn.functional.adaptive_avg_pool2d(alpha, features.shape[-2:])
                loss = loss + config.objectness_weight * nn.functional.binary_cross_entropy_with_logits(
                    objectness(features), coverage
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += y.numel()
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * y.numel()
        if log is not None:
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {loss_sum / total:.4f} "
                f"train acc {correct / total:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, *, n_per_class: int = 200, seed: int = HELDOUT_SEED) -> float:
    """Top-1 accuracy of ``model`` on a freshly drawn demo split."""
    split = make_split(n_per_class=n_per_class, seed=seed)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split.labels), 256):
        x = DEMO_PREPROCESS.normalize(torch.from_numpy(split.images[start : start + 256]))
        predicted = model(x).argmax(1).numpy()
        correct += int((predicted == split.labels[start : start + 256]).sum())
    model.train(was_training)
    return correct / len(split.labels)


def save_demo_checkpoint(model: nn.Module, path: str | Path, *, meta: dict | None = None) -> Path:
    """Save ``{"state_dict", "categories", "preprocess", "meta"}`` as float32 for load_model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    checkpoint = {
        "state_dict": state,
        "categories": list(DEMO_CLASSES),
        "preprocess": DEMO_PREPROCESS.to_dict(),
        "meta": dict(meta or {}),
    }
    torch.save(checkpoint, path)
    return path


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-able config (stored in the checkpoint's meta)."""
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in asdict(config).items()}  # shortcut: a dict
