"""The base maps and noise kinds are plug-ins: one class each, one table, used by both kernels."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import get_args

import pytest
import torch

from sgcore import settings
from sgcore.attribution import smoothgrad
from sgcore.attribution._noise import NOISE_TABLE, Gaussian
from sgcore.attribution.adaptive import smoothgrad_adaptive
from sgcore.attribution.bases import BASE_TABLE, Pointwise
from sgcore.attribution.reliability import half_mask

POLICY = dict(target_reliability=0.95, min_samples=16, max_samples=48)


def test_the_settings_choices_are_the_tables():
    # The job's config checks names against settings (no torch there); the
    # kernels run what the tables hold. Same names, same order.
    assert tuple(BASE_TABLE) == settings.BASES == get_args(settings.Base)
    assert tuple(NOISE_TABLE) == settings.NOISES == get_args(settings.Noise)
    assert all(cls.name == name for name, cls in BASE_TABLE.items())
    assert all(kind.name == name for name, kind in NOISE_TABLE.items())


class _DoubledGradient(Pointwise):
    """A toy base: twice the gradient, with hooks that count the calls they wrap."""

    name = "doubled_gradient"
    entered = 0

    def hooks(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def count() -> Iterator[None]:
            type(self).entered += 1
            yield

        return count()

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return 2 * grads


class _GradientTwice:
    """A toy base with two rows per sample: the gradient at x̃ twice, weighted 1/2 each."""

    name = "gradient_twice"
    pointwise = False

    def __init__(self, x: torch.Tensor, **options: object) -> None:
        self.steps = 2
        self.weights = torch.full((2,), 0.5, device=x.device)

    def hooks(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def rows(self, i: int, points: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return points

    def sample_maps(self, i: int, grads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return grads


def test_a_registered_base_runs_through_both_kernels(monkeypatch, cnn, images, targets, seeds):
    monkeypatch.setitem(BASE_TABLE, _DoubledGradient.name, _DoubledGradient)
    monkeypatch.setattr(_DoubledGradient, "entered", 0)
    kw = dict(seeds=seeds, n_samples=5, noise_level=0.2, max_batch=4)
    want = smoothgrad(cnn, images, targets, **kw)
    got = smoothgrad(cnn, images, targets, base="doubled_gradient", **kw)
    assert torch.equal(got, 2 * want)

    # The adaptive kernel: scaling by 2 is exact and changes no rank, so the same
    # reliabilities and sample counts, maps doubled.
    want = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, max_batch=20, **POLICY)
    got = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, max_batch=20, base="doubled_gradient",
                              **POLICY)
    assert torch.equal(got.n_samples, want.n_samples) and torch.equal(got.maps, 2 * want.maps)
    assert _DoubledGradient.entered == 2


def test_a_registered_base_with_several_rows_per_sample_runs_through_the_fixed_kernel(
        monkeypatch, cnn, images, targets, seeds):
    monkeypatch.setitem(BASE_TABLE, _GradientTwice.name, _GradientTwice)
    want = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=5, noise_level=0.2)
    # Odd chunks cut samples between their two rows (the kernel carries the partial sum).
    for max_batch in (3, 64):
        got = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=5, noise_level=0.2,
                         base="gradient_twice", max_batch=max_batch)
        # Other batch shapes round differently: equal to float32 rounding.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    # One row per sample is what adaptive sampling needs: it names the bases it takes.
    with pytest.raises(ValueError, match="base must be one of gradient, input_x_gradient, guided_backprop; "
                                         "got 'gradient_twice'"):
        smoothgrad_adaptive(cnn, images, targets, base="gradient_twice", **POLICY)


def test_the_adaptive_kernel_refuses_integrated_gradients(cnn, images, targets):
    with pytest.raises(ValueError, match="base must be one of gradient, input_x_gradient, guided_backprop; "
                                         "got 'integrated_gradients'"):
        smoothgrad_adaptive(cnn, images, targets, base="integrated_gradients", **POLICY)


class _GaussianPairs(Gaussian):
    """A toy noise kind: the Gaussian draws, kept in pairs in the split halves."""

    name = "gaussian_pairs"

    def group_size(self, *, blocked: bool) -> int:
        return 2


def test_a_registered_noise_kind_runs_through_both_kernels_and_the_split(monkeypatch, cnn, images, targets,
                                                                         seeds):
    monkeypatch.setitem(NOISE_TABLE, _GaussianPairs.name, _GaussianPairs())
    cpu = torch.device("cpu")
    assert half_mask(0, 6, "gaussian_pairs", blocked=False, device=cpu).tolist() == [
        True, True, False, False, True, True]
    kw = dict(seeds=seeds, n_samples=8, noise_level=0.2, return_reliability=True)
    want = smoothgrad(cnn, images, targets, **kw)
    got = smoothgrad(cnn, images, targets, noise="gaussian_pairs", **kw)
    assert torch.equal(got.maps, want.maps)  # the same noise
    assert torch.isfinite(got.reliability).all() and not torch.equal(got.reliability, want.reliability)
    want = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, **POLICY)
    got = smoothgrad_adaptive(cnn, images, targets, seeds=seeds, noise="gaussian_pairs", **POLICY)
    assert torch.isfinite(got.reliability).all() and got.maps.shape == want.maps.shape
    first = smoothgrad_adaptive(cnn, images[:1], targets[:1], seeds=seeds[:1], noise="gaussian_pairs",
                                target_reliability=0.5, min_samples=16, max_samples=16)
    plain = smoothgrad_adaptive(cnn, images[:1], targets[:1], seeds=seeds[:1],
                                target_reliability=0.5, min_samples=16, max_samples=16)
    assert torch.equal(first.maps, plain.maps)  # 16 samples of the same draws
