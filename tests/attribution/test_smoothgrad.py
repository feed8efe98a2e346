"""The SmoothGrad kernel against a naive per-sample loop, and its properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgcore.attribution import AGGREGATES, BASES, NOISES, default_max_batch, smoothgrad


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_matches_naive_reference(cnn, images, targets, seeds, naive, base, aggregate):
    kw = dict(n_samples=6, noise_level=0.2, aggregate=aggregate, base=base)
    # max_batch=5 cuts samples (and IG steps) across chunk boundaries.
    got = smoothgrad(cnn, images, targets, seeds=seeds, max_batch=5, ig_steps=4, **kw)
    want = naive(cnn, images, targets, seeds, ig_steps=4, **kw)
    assert got.dtype == torch.float32 and got.shape == images.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("noise", NOISES)
def test_noise_kinds_match_naive_reference(cnn, images, targets, seeds, naive, noise):
    got = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=7, noise=noise, max_batch=4)
    want = naive(cnn, images, targets, seeds, n_samples=7, noise_level=0.15, noise=noise)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_baseline_tensor(cnn, images, targets, seeds, naive):
    got = smoothgrad(
        cnn, images, targets, seeds=seeds, n_samples=3, base="integrated_gradients",
        ig_steps=5, ig_baseline=torch.tensor(-0.5), max_batch=7,
    )
    want = naive(
        cnn, images, targets, seeds, n_samples=3, noise_level=0.15,
        base="integrated_gradients", ig_steps=5, ig_baseline=-0.5,
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_completeness(cnn, images, targets):
    # Sundararajan et al.'s axiom: attributions sum to S(x) − S(x').
    ig = smoothgrad(cnn, images, targets, noise_level=0.0, base="integrated_gradients", ig_steps=64)
    with torch.no_grad():
        gap = cnn(images).gather(1, targets[:, None])[:, 0] - cnn(torch.zeros_like(images)).gather(
            1, targets[:, None]
        )[:, 0]
    torch.testing.assert_close(ig.sum(dim=(1, 2, 3)), gap, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("base", BASES)
def test_noise_level_zero_is_the_base_map(cnn, images, targets, naive, base):
    got = smoothgrad(cnn, images, targets, noise_level=0.0, base=base, n_samples=9, ig_steps=4)
    want = naive(cnn, images, targets, torch.zeros(3, dtype=torch.int64), n_samples=1,
                 noise_level=0.0, base=base, ig_steps=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_noise_level_zero_equals_plain_gradient_exactly(cnn, images, targets):
    x = images.clone().requires_grad_(True)
    cnn(x).gather(1, targets[:, None]).sum().backward()
    got = smoothgrad(cnn, images, targets, noise_level=0.0)
    assert torch.equal(got, x.grad)


@pytest.mark.parametrize("base", ["gradient", "integrated_gradients"])
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_independent_of_batch_composition_order_and_max_batch(cnn, images, targets, seeds, base, aggregate):
    kw = dict(n_samples=5, aggregate=aggregate, base=base, ig_steps=3)
    whole = smoothgrad(cnn, images, targets, seeds=seeds, max_batch=64, **kw)
    for mb in (1, 2, 7):
        torch.testing.assert_close(
            smoothgrad(cnn, images, targets, seeds=seeds, max_batch=mb, **kw), whole, rtol=1e-5, atol=1e-7
        )
    order = torch.tensor([2, 0, 1])
    shuffled = smoothgrad(cnn, images[order], targets[order], seeds=seeds[order], max_batch=4, **kw)
    torch.testing.assert_close(shuffled, whole[order], rtol=1e-5, atol=1e-7)
    alone = smoothgrad(cnn, images[1:2], targets[1:2], seeds=seeds[1:2], **kw)
    torch.testing.assert_close(alone[0], whole[1], rtol=1e-5, atol=1e-7)


def test_same_seed_same_map_other_seed_other_map(cnn, images, targets, seeds):
    a = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4)
    b = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4)
    c = smoothgrad(cnn, images, targets, seeds=seeds + 1, n_samples=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_input_and_model_state_untouched(make_cnn, images, targets):
    model = make_cnn(1, inplace=True).train()
    model.features[0].weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = images.clone()
    for base in BASES:
        smoothgrad(model, images, targets, n_samples=3, base=base, ig_steps=2)
    assert torch.equal(images, before)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    for k, v in model.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, state[k]), k
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("ig_steps", [1, 2, 3])
def test_integrated_gradients_with_few_steps(cnn, images, targets, seeds, naive, ig_steps):
    # One step is the midpoint rule, (x̃ − x') ⊙ ∇S(x' + (x̃ − x')/2), not the plain gradient.
    kw = dict(n_samples=3, noise_level=0.1, base="integrated_gradients")
    got = smoothgrad(cnn, images, targets, seeds=seeds, ig_steps=ig_steps, max_batch=2, **kw)
    want = naive(cnn, images, targets, seeds, ig_steps=ig_steps, **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, smoothgrad(cnn, images, targets, seeds=seeds, n_samples=3, noise_level=0.1),
                              atol=1e-6)


def test_guided_backprop_warns_when_no_relu_ran(images, targets, seeds, make_cnn):
    torch.manual_seed(0)
    gelu_net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    with pytest.warns(RuntimeWarning, match="guided_backprop: no ReLU ran in Sequential, so its maps are plain"):
        got = smoothgrad(gelu_net, images, targets, seeds=seeds, n_samples=2, base="guided_backprop")
    torch.testing.assert_close(got, smoothgrad(gelu_net, images, targets, seeds=seeds, n_samples=2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ReLU net, module or functional: no warning
        smoothgrad(make_cnn(0), images, targets, seeds=seeds, n_samples=2, base="guided_backprop")
        smoothgrad(_FunctionalReLUNet(make_cnn(0), "F.relu").eval(), images, targets, seeds=seeds, n_samples=2,
                   base="guided_backprop")


def test_guided_backprop_leaves_nothing_behind_after_error(make_cnn, images, targets, seeds):
    model = make_cnn(0)
    plain = smoothgrad(model, images, targets, seeds=seeds, n_samples=2)
    with pytest.raises(ValueError, match="below num_classes=5"):
        smoothgrad(model, images, torch.tensor([0, 9, 1]), base="guided_backprop", n_samples=2)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    # Were the guided ReLUs still active, the plain gradient would change.
    assert torch.equal(smoothgrad(model, images, targets, seeds=seeds, n_samples=2), plain)
    guided = smoothgrad(model, images, targets, seeds=seeds, n_samples=2, base="guided_backprop")
    assert not torch.allclose(guided, plain)


class _FunctionalReLUNet(nn.Module):
    """TinyCNN's layers, with each ReLU called a different functional way."""

    def __init__(self, net: nn.Module, style: str) -> None:
        super().__init__()
        self.net, self.style = net, style

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "F.relu":
            return F.relu(x)
        if self.style == "F.relu_inplace":
            return F.relu(x, inplace=True)
        if self.style == "torch.relu":
            return torch.relu(x)
        if self.style == "Tensor.relu":
            return x.relu()
        x.relu_()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, bn1, _, conv2, bn2, _ = self.net.features
        h = self._relu(bn1(conv1(x)))
        h = self._relu(bn2(conv2(h)))
        return self.net.head(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("style", ["F.relu", "F.relu_inplace", "torch.relu", "Tensor.relu", "Tensor.relu_"])
def test_guided_backprop_sees_functional_relus(make_cnn, images, targets, seeds, naive, style):
    model = _FunctionalReLUNet(make_cnn(4), style).eval()
    got = smoothgrad(model, images, targets, seeds=seeds, n_samples=3, base="guided_backprop")
    want = naive(make_cnn(4), images, targets, seeds, n_samples=3, noise_level=0.15, base="guided_backprop")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    plain = smoothgrad(model, images, targets, seeds=seeds, n_samples=3)
    assert not torch.allclose(got, plain)


def test_guided_backprop_with_inplace_relu(make_cnn, images, targets, seeds, naive):
    model = make_cnn(2, inplace=True)
    got = smoothgrad(model, images, targets, seeds=seeds, n_samples=3, base="guided_backprop")
    want = naive(make_cnn(2), images, targets, seeds, n_samples=3, noise_level=0.15, base="guided_backprop")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_square_and_var_never_negative(cnn, images, targets):
    sq = smoothgrad(cnn, images, targets, n_samples=8, aggregate="square")
    var = smoothgrad(cnn, images, targets, n_samples=8, aggregate="var", max_batch=3)
    assert (sq >= 0).all() and (var >= 0).all()


def test_var_numerically_safe_with_large_mean():
    # Gradient = 1e4 + tiny noise-dependent part: naive E[g²] − E[g]² cancels
    # catastrophically in float32; Chan's update does not.
    class Offset(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = 1e4 * x.sum(dim=(1, 2, 3)) + 1e-2 * (x**2).sum(dim=(1, 2, 3))
            return torch.stack([s, -s], dim=1)

    x = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    got = smoothgrad(Offset(), x, torch.tensor([0]), n_samples=64, aggregate="var", max_batch=5)
    sigma = 0.15 * 2.0
    # g = 1e4 + 2e-2·(x + σε): variance (2e-2·σ)² per element, up to sampling error.
    assert (got >= 0).all()
    torch.testing.assert_close(got.mean(), torch.tensor((2e-2 * sigma) ** 2), rtol=0.35, atol=0)


def test_oom_backoff_gives_the_same_maps(cnn, images, targets, seeds):
    calls: list[int] = []

    class Fussy(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            if x.shape[0] > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
            return self.inner(x)

    want = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=5, aggregate="var", max_batch=15)
    got = smoothgrad(Fussy(cnn), images, targets, seeds=seeds, n_samples=5, aggregate="var", max_batch=15)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert calls[:3] == [15, 7, 3] and max(calls[3:]) <= 3


def test_oom_at_one_row_is_raised(images, targets):
    class AlwaysOOM(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    with pytest.raises(torch.cuda.OutOfMemoryError, match="test"):
        smoothgrad(AlwaysOOM(), images, targets, max_batch=4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_close_to_fp32(cnn, images, targets, seeds, precision):
    # CPU autocast really runs in bf16 / fp16: the maps differ from float32, but little.
    # (TF32 exists only on CUDA: test_cuda_precisions_and_default_chunk covers it.)
    ref = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4)
    got = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4, precision=precision)
    assert got.dtype == torch.float32
    assert not torch.equal(got, ref)  # the low-precision path ran
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1))
    assert (cos > 0.98).all()


def test_tf32_is_plain_float32_off_cuda(cnn, images, targets, seeds):
    ref = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4)
    got = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4, precision="tf32")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_channels_last_model_gives_same_maps(make_cnn, cnn, images, targets, seeds):
    ref = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=3)
    nhwc = make_cnn(0).to(memory_format=torch.channels_last)
    got = smoothgrad(nhwc, images, targets, seeds=seeds, n_samples=3)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_default_max_batch_cpu_bounds():
    assert default_max_batch(torch.device("cpu"), (3, 8, 8)) == 256
    assert default_max_batch(torch.device("cpu"), (3, 2048, 2048)) == 1
    assert 1 <= default_max_batch(torch.device("cpu"), (3, 224, 224)) <= 256


@pytest.mark.needs_cuda
@pytest.mark.parametrize("base", BASES)
def test_cuda_matches_cpu_statistically(make_cnn, base):
    model = make_cnn(0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 2])
    cpu = smoothgrad(model, x, t, n_samples=2000, base=base, ig_steps=4)
    gpu = smoothgrad(model.cuda(), x.cuda(), t.cuda(), n_samples=2000, base=base, ig_steps=4).cpu()
    cos = torch.nn.functional.cosine_similarity(cpu.flatten(1), gpu.flatten(1))
    assert (cos > 0.97).all()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_cuda_precisions_and_default_chunk(make_cnn, precision):
    model = make_cnn(0).cuda()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    t = torch.tensor([0, 1, 2, 3], device="cuda")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    ref = smoothgrad(model, x, t, n_samples=8, max_batch=5)
    got = smoothgrad(model, x, t, n_samples=8, precision=precision)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1))
    assert got.is_cuda and (cos > 0.98).all()
    assert default_max_batch(x.device, (3, 16, 16)) >= 1


# --------------------------------------------------------------------------- #
# Bad arguments: every message names the argument, the allowed values and what came.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(n_samples=0), ValueError, r"n_samples must be >= 1; got 0"),
        (dict(n_samples=2.5), TypeError, r"n_samples must be an int; got float"),
        (dict(n_samples=True), TypeError, r"n_samples must be an int; got bool"),
        (dict(noise_level=1.5), ValueError, r"noise_level must be in \[0, 1\]; got 1.5"),
        (dict(noise_level=-0.1), ValueError, r"noise_level must be in \[0, 1\]; got -0.1"),
        (dict(noise_level="0.1"), TypeError, r"noise_level must be a float; got str"),
        (dict(aggregate="median"), ValueError, r"aggregate must be one of mean, square, var; got 'median'"),
        (dict(base="lrp"), ValueError, r"base must be one of gradient, input_x_gradient, integrated_gradients, guided_backprop; got 'lrp'"),
        (dict(precision="fp8"), ValueError, r"precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"),
        (dict(noise="uniform"), ValueError, r"noise must be one of gaussian, antithetic, sobol; got 'uniform'"),
        (dict(max_batch=0), ValueError, r"max_batch must be >= 1; got 0"),
        (dict(max_batch=1.0), TypeError, r"max_batch must be an int; got float"),
        (dict(base="integrated_gradients", ig_steps=0), ValueError, r"ig_steps must be >= 1; got 0"),
        (dict(base="integrated_gradients", ig_baseline="black"), TypeError, r"ig_baseline must be a number or a torch.Tensor; got str"),
        (dict(base="integrated_gradients", ig_baseline=torch.zeros(2, 2)), ValueError, r"ig_baseline must be broadcastable to \(3, 3, 6, 6\); got \(2, 2\)"),
        (dict(seeds=[1, 2, 3]), TypeError, r"seeds must be a torch.Tensor of shape \(B,\) or None; got list"),
        (dict(seeds=torch.zeros(3)), TypeError, r"seeds must be an integer tensor; got torch.float32"),
        (dict(seeds=torch.zeros(2, dtype=torch.int64)), ValueError, r"seeds must have shape \(3,\) to match images; got \(2,\)"),
    ],
)
def test_bad_keyword_arguments(cnn, images, targets, kwargs, error, match):
    with pytest.raises(error, match=match):
        smoothgrad(cnn, images, targets, **kwargs)


@pytest.mark.parametrize(
    ("model", "images", "targets", "error", "match"),
    [
        ("net", torch.zeros(1, 3, 4, 4), torch.tensor([0]), TypeError, r"model must be a torch.nn.Module; got str"),
        (None, [[0.0]], torch.tensor([0]), TypeError, r"images must be a torch.Tensor \(B, C, H, W\); got list"),
        (None, torch.zeros(3, 4, 4), torch.tensor([0]), ValueError, r"images must have shape \(B, C, H, W\); got \(3, 4, 4\)"),
        (None, torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([0]), TypeError, r"images must be a floating-point tensor; got torch.uint8"),
        (None, torch.zeros(0, 3, 4, 4), torch.tensor([], dtype=torch.int64), ValueError, r"images must hold at least one image; got an empty batch"),
        (None, torch.zeros(1, 3, 4, 4), [0], TypeError, r"targets must be a torch.Tensor of shape \(B,\); got list"),
        (None, torch.zeros(1, 3, 4, 4), torch.tensor([0.0]), TypeError, r"targets must be an integer tensor; got torch.float32"),
        (None, torch.zeros(1, 3, 4, 4), torch.tensor([0, 1]), ValueError, r"targets must have shape \(1,\) to match images; got \(2,\)"),
        (None, torch.zeros(1, 3, 4, 4), torch.tensor([-1]), ValueError, r"targets must be non-negative class indices; got -1"),
        (None, torch.zeros(1, 3, 4, 4), torch.tensor([5]), ValueError, r"targets must be class indices below num_classes=5; got 5"),
    ],
)
def test_bad_positional_arguments(cnn, model, images, targets, error, match):
    with pytest.raises(error, match=match):
        smoothgrad(cnn if model is None else model, images, targets, n_samples=1)


def test_model_must_return_logits(images, targets):
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=(1, 2, 3))

    with pytest.raises(ValueError, match=r"model must return logits of shape \(N, num_classes\); got \(1,\)"):
        smoothgrad(Flat(), images, targets, n_samples=1, max_batch=1)


def test_out_of_range_target_in_a_later_chunk(cnn, images):
    with pytest.raises(ValueError, match=r"targets must be class indices below num_classes=5; got 7"):
        smoothgrad(cnn, images, torch.tensor([0, 1, 7]), n_samples=2, max_batch=2)


@pytest.mark.parametrize("base", ["gradient", "integrated_gradients"])
def test_on_done_names_each_image_once_in_order_as_its_samples_are_in(cnn, images, targets, seeds, base):
    """Live progress inside one call: with 3 inputs per chunk, image k is done after its own chunks,
    before the next image's; the maps are those of a call without the callback."""
    done: list[tuple[int, int]] = []
    calls = {"n": 0}
    hook = cnn.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    maps = smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4, base=base, ig_steps=2, max_batch=3,
                      on_done=lambda i: done.append((i, calls["n"])))
    hook.remove()
    assert [i for i, _ in done] == list(range(images.shape[0]))
    assert [n for _, n in done] == sorted(n for _, n in done) and done[0][1] < calls["n"]
    torch.testing.assert_close(maps, smoothgrad(cnn, images, targets, seeds=seeds, n_samples=4, base=base,
                                                ig_steps=2, max_batch=3), rtol=0, atol=0)
