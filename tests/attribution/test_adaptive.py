"""Adaptive sampling: reliable maps with as few samples as each image needs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgcore.attribution.adaptive import STOP_MARGIN, check_policy, smoothgrad_adaptive

POLICY = dict(target_reliability=0.9, min_samples=16, max_samples=64)


def test_maps_do_not_depend_on_batch_neighbours_order_or_max_batch(cnn, images, targets, seeds):
    whole = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, max_batch=64, **POLICY)
    assert whole.n_samples.min() >= 16 and whole.n_samples.max() <= 64
    for mb in (5, 16, 37):
        got = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, max_batch=mb, **POLICY)
        assert torch.equal(got.maps, whole.maps) and torch.equal(got.n_samples, whole.n_samples)
        assert torch.equal(got.reliability, whole.reliability)
        assert torch.equal(got.reproducibility, whole.reproducibility)
    order = torch.arange(images.shape[0] - 1, -1, -1)
    shuffled = smoothgrad_adaptive(cnn, images[order], targets[order], seeds=seeds[order], max_batch=7, **POLICY)
    assert torch.equal(shuffled.maps, whole.maps[order])
    alone = smoothgrad_adaptive(cnn, images[1:2], targets[1:2], seeds=seeds[1:2], max_batch=9, **POLICY)
    assert torch.equal(alone.maps[0], whole.maps[1]) and alone.n_samples[0] == whole.n_samples[1]


def test_more_samples_where_needed_and_the_target_is_met(cnn, images, targets, seeds):
    got = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, target_reliability=0.97,
                              min_samples=16, max_samples=256)
    stopped_early = got.n_samples < 256
    assert bool(stopped_early.any())
    # an image stops once its estimate clears the target by the estimate's own error at its n
    margin = STOP_MARGIN * (16 / got.n_samples[stopped_early].double()) ** 0.5
    assert bool((got.reliability[stopped_early].double() - margin >= 0.97).all())
    assert bool(((got.n_samples - 16) % 16 == 0).all())


def test_the_stop_margin_only_ever_adds_samples_and_zero_stops_at_the_bare_target(cnn, images, targets, seeds):
    bare = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, stop_margin=0.0, **POLICY)
    default = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, **POLICY)
    wide = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, stop_margin=0.2, **POLICY)
    assert bool((bare.n_samples <= default.n_samples).all()) and bool((default.n_samples <= wide.n_samples).all())
    assert int(wide.n_samples.sum()) > int(bare.n_samples.sum())  # the margin did hold images back
    early = bare.n_samples < 64
    assert bool((bare.reliability[early] >= 0.9).all())
    # the same image at the same n is the same map, whichever rule stopped it (contract 2)
    same = bare.n_samples == wide.n_samples
    assert torch.equal(bare.maps[same], wide.maps[same])


@pytest.mark.parametrize("margin", [-0.1, 1.0, "0.03", True])
def test_a_bad_stop_margin_is_refused(cnn, images, targets, margin):
    with pytest.raises(ValueError, match=r"stop_margin must be a number in \[0, 1\)"):
        smoothgrad_adaptive(cnn, images, targets, stop_margin=margin, **POLICY)


class Linear(nn.Module):
    """The gradient is the same everywhere: every map converges at once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Noise(nn.Module):
    """A gradient that is pure noise: the map never converges."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(torch.sin(40 * x) * x).sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3))], dim=1)


def test_converged_at_min_and_never_converged_at_max():
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(3, dtype=torch.int64)
    easy = smoothgrad_adaptive(Linear(), x, t, target_reliability=0.95, min_samples=16, max_samples=128)
    assert easy.n_samples.tolist() == [16, 16, 16]
    hard = smoothgrad_adaptive(Noise(), x, t, noise_level=0.5, target_reliability=0.99,
                               min_samples=16, max_samples=48)
    assert hard.n_samples.tolist() == [48, 48, 48]


@pytest.mark.parametrize(("policy", "message"), [
    (dict(target_reliability=1.5, min_samples=16, max_samples=64), r"target_reliability must be in \(0, 1\); got 1.5"),
    (dict(target_reliability=0.9, min_samples=128, max_samples=64), "min_samples must be <= max_samples; got 128 > 64"),
    (dict(target_reliability=0.9, min_samples=20, max_samples=64), "min_samples must be a multiple of 8"),
])
def test_bad_policy_is_refused(policy, message):
    with pytest.raises(ValueError, match=message):
        check_policy(**policy)
