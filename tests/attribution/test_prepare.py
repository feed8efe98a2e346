"""prepare_model: exact BatchNorm folding, layout, frozen copy, optional compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgcore.attribution import fold_batchnorm, prepare_model, smoothgrad


def test_bn_folding_is_exact(make_cnn, images, targets, seeds):
    model = make_cnn(3)
    folded = prepare_model(model, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-5, atol=1e-5)
    for aggregate in ("mean", "var"):
        want = smoothgrad(model, images, targets, seeds=seeds, n_samples=4, aggregate=aggregate)
        got = smoothgrad(folded, images, targets, seeds=seeds, n_samples=4, aggregate=aggregate)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_callers_model_untouched_and_copy_frozen(make_cnn):
    model = make_cnn(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_model(model, channels_last=True)
    assert prepared is not model
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in prepared.parameters())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous()
    conv = next(m for m in prepared.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_default_follows_convolutions(cnn):
    conv = next(m for m in prepare_model(cnn).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    mlp = prepare_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval())
    assert all(p.is_contiguous() for p in mlp.parameters())


def test_prepared_channels_last_maps_match(cnn, images, targets, seeds):
    want = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=3, base="guided_backprop")
    got = smoothgrad(prepare_model(cnn, channels_last=True), images, targets, seeds=seeds,
                     n_samples=3, base="guided_backprop")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_no_fold_keeps_batchnorm(cnn):
    prepared = prepare_model(cnn, fold_bn=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in prepared.modules()) == 2


def test_untraceable_model_warns_and_is_copied():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x)).mean(dim=(2, 3))

    model = Branchy().eval()
    with pytest.warns(RuntimeWarning, match="BatchNorm not folded: torch.fx cannot trace Branchy"):
        prepared = fold_batchnorm(model)
    assert prepared is not model and isinstance(prepared.bn, nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(fold_bn=1), TypeError, r"fold_bn must be a bool; got int"),
        (dict(compile="yes"), TypeError, r"compile must be a bool; got str"),
        (dict(channels_last="auto"), TypeError, r"channels_last must be a bool or None; got str"),
    ],
)
def test_bad_flags(cnn, kwargs, error, match):
    with pytest.raises(error, match=match):
        prepare_model(cnn, **kwargs)


def test_training_mode_refused(cnn):
    with pytest.raises(ValueError, match=r"fold_bn=True needs a model in eval mode .* call model.eval\(\) first"):
        prepare_model(cnn.train())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got dict"):
        prepare_model({})


@pytest.mark.slow
def test_compiled_model_gives_same_maps(cnn, images, targets, seeds):
    want = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4)
    compiled = prepare_model(cnn, compile=True)
    got = smoothgrad(compiled, images, targets, seeds=seeds, n_samples=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # The guided ReLUs are a torch function mode: the compiled graph must
    # honour it, and the plain gradient after it must be plain again.
    want = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4, base="guided_backprop")
    got = smoothgrad(compiled, images, targets, seeds=seeds, n_samples=4, base="guided_backprop")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, smoothgrad(compiled, images, targets, seeds=seeds, n_samples=4))


@pytest.mark.needs_cuda
def test_cuda_prepare_defaults_to_channels_last(make_cnn):
    model = make_cnn(0).cuda()
    prepared = prepare_model(model)
    conv = next(m for m in prepared.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16, device="cuda")
    t = torch.tensor([0, 1], device="cuda")
    want = smoothgrad(model, x, t, n_samples=4, precision="fp32")
    got = smoothgrad(prepared, x, t, n_samples=4, precision="fp32")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
