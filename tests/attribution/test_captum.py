"""Statistical agreement with Captum's NoiseTunnel, an independent implementation.

Captum's ``stdevs`` is absolute, so each image goes through Captum alone with
its own σ = noise_level · (max − min). Both sides are Monte Carlo estimates of
the same expectation; with independent noise (sgcore seed 12345, Captum's
global RNG seeded 0) they agree to a few percent at n = 3000. With sgcore's seed
0, Captum's noise (``torch.normal`` on the global RNG after ``manual_seed(0)``)
happens to be the very same stream, and the maps agree to float rounding.
"""

from __future__ import annotations

import pytest
import torch

from sgcore.attribution import smoothgrad

captum_attr = pytest.importorskip("captum.attr")

N = 3000
OTHER_SEEDS = torch.full((3,), 12345)
NT_TYPES = {"mean": "smoothgrad", "square": "smoothgrad_sq", "var": "vargrad"}


def _captum(attr, images, targets, *, noise_level, nt_type, **kwargs):
    out = []
    for x, t in zip(images, targets.tolist(), strict=False):
        sigma = noise_level * float(x.max() - x.min())
        torch.manual_seed(0)
        nt = captum_attr.NoiseTunnel(attr)
        out.append(
            nt.attribute(
                x.unsqueeze(0), nt_type=nt_type, nt_samples=N, nt_samples_batch_size=N,
                stdevs=sigma, target=t, **kwargs,
            )[0].detach()
        )
    return torch.stack(out)


def _assert_agree(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    rel = (got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)
    print("relative L2 difference", rel.tolist())
    assert (rel < tol).all(), rel


@pytest.mark.parametrize("aggregate", ["mean", "square", "var"])
def test_saliency_matches_captum(cnn, images, targets, aggregate):
    want = _captum(
        captum_attr.Saliency(cnn), images, targets, noise_level=0.2, nt_type=NT_TYPES[aggregate], abs=False
    )
    got = smoothgrad(cnn, images, targets, seeds=OTHER_SEEDS, n_samples=N, noise_level=0.2, aggregate=aggregate)
    _assert_agree(got, want, 0.08)


def test_input_x_gradient_matches_captum(cnn, images, targets):
    want = _captum(captum_attr.InputXGradient(cnn), images, targets, noise_level=0.2, nt_type="smoothgrad")
    got = smoothgrad(cnn, images, targets, seeds=OTHER_SEEDS, n_samples=N, noise_level=0.2, base="input_x_gradient")
    _assert_agree(got, want, 0.08)


def test_guided_backprop_matches_captum(cnn, images, targets):
    want = _captum(captum_attr.GuidedBackprop(cnn), images, targets, noise_level=0.2, nt_type="smoothgrad")
    got = smoothgrad(cnn, images, targets, seeds=OTHER_SEEDS, n_samples=N, noise_level=0.2, base="guided_backprop")
    _assert_agree(got, want, 0.08)


def test_integrated_gradients_matches_captum(cnn, images, targets):
    want = _captum(
        captum_attr.IntegratedGradients(cnn), images, targets, noise_level=0.2, nt_type="smoothgrad",
        n_steps=4, method="gausslegendre", baselines=0.0, internal_batch_size=4 * N,
    )
    got = smoothgrad(
        cnn, images, targets, seeds=OTHER_SEEDS, n_samples=N, noise_level=0.2,
        base="integrated_gradients", ig_steps=4,
        max_batch=4 * N,
    )
    _assert_agree(got, want, 0.08)


@pytest.mark.parametrize("aggregate", ["mean", "var"])
def test_same_noise_stream_matches_captum_to_rounding(cnn, images, targets, aggregate):
    want = _captum(
        captum_attr.Saliency(cnn), images, targets, noise_level=0.2, nt_type=NT_TYPES[aggregate], abs=False
    )
    got = smoothgrad(cnn, images, targets, n_samples=N, noise_level=0.2, aggregate=aggregate)
    _assert_agree(got, want, 1e-4)


@pytest.mark.parametrize("base", ["gradient", "integrated_gradients"])
def test_noise_level_zero_equals_captum_exactly(cnn, images, targets, base):
    if base == "gradient":
        want = captum_attr.Saliency(cnn).attribute(images, target=targets, abs=False)
        kw = {}
    else:
        want = captum_attr.IntegratedGradients(cnn).attribute(
            images, target=targets, n_steps=16, method="gausslegendre"
        )
        kw = {"ig_steps": 16}
    got = smoothgrad(cnn, images, targets, noise_level=0.0, base=base, **kw)
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
