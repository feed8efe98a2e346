"""BatchNorm is folded for every model source: the network is prepared before it is
wrapped to return logits (torch.fx cannot trace the wrapper), and the maps stay the same."""

from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from sgcore import prepare_model, smoothgrad
from sgcore.models import DemoNet, load_model
from sgcore.pipeline.worker import _prepare, unfolded_note

CONFIG = SimpleNamespace(fold_bn=True, compile=False, model="")
FACTORY = '''
from torch import nn

def build():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return net, {"crop_size": 32, "resize_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
'''


def batchnorm_ops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """BatchNorm kernels one forward runs (modules, functions, TorchScript or export graph alike)."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    return sum(1 for e in prof.events() if e.name in ("aten::batch_norm", "aten::_native_batch_norm_legit_no_training"))


def _randomize_statistics(net: torch.nn.Module) -> None:
    """Fresh BatchNorm has mean 0 / var 1, which would fold to nothing visible."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """{source: --model spec} with a small network of that source that holds BatchNorm."""
    d = tmp_path_factory.mktemp("fold")
    found = {"torchvision": "resnet18"}
    timm = pytest.importorskip("timm")
    del timm
    found["timm"] = "timm:resnet18"
    transformers = pytest.importorskip("transformers")
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)).eval()
    _randomize_statistics(hf)
    hf.save_pretrained(d / "hf-resnet")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(d / "hf-resnet")
    found["hf"] = f"hf:{d / 'hf-resnet'}"
    (d / "py").mkdir()
    (d / "py" / "fold_nets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(d / "py"))
    found["py"] = "py:fold_nets:build"
    net = DemoNet().eval()
    _randomize_statistics(net)
    torch.jit.save(torch.jit.script(net), str(d / "demo.ts"))
    (d / "demo.ts.preprocess.json").write_text('{"crop_size": 48, "resize_size": 56, "mean": [0.5, 0.5, 0.5], '
                                               '"std": [0.25, 0.25, 0.25]}')
    found["torchscript"] = f"torchscript:{d / 'demo.ts'}"
    yield found
    sys.path.remove(str(d / "py"))
    sys.modules.pop("fold_nets", None)


@pytest.mark.parametrize("source", ["torchvision", "timm", "hf", "py", "torchscript"])
def test_batchnorm_is_folded_for_every_source_and_the_maps_stay(specs, source):
    loaded = load_model(specs[source], "none" if source in ("torchvision", "timm") else "default",
                        image_size=64 if source in ("torchvision", "timm") else None)
    if source in ("torchvision", "timm", "py"):
        _randomize_statistics(loaded.network)
    pre = loaded.preprocess
    x = torch.randn(2, pre.channels, *pre.map_shape, generator=torch.Generator().manual_seed(0))
    prepared = _prepare(loaded, CONFIG, torch.device("cpu"))
    before, after = batchnorm_ops(loaded.model, x), batchnorm_ops(prepared, x)
    assert before > 0 and after == 0, (before, after)
    assert unfolded_note(CONFIG, loaded) is None
    targets, seeds = torch.tensor([0, 1]), torch.tensor([3, 4])
    want = smoothgrad(loaded.model, x, targets, n_samples=4, seeds=seeds)
    got = smoothgrad(prepared, x, targets, n_samples=4, seeds=seeds)
    diff = float((got - want).abs().max())
    print(f"{source}: BatchNorm ops {before} -> {after}, map max |diff| {diff:.2e} (max {float(want.abs().max()):.2e})")
    # Folding is exact up to float32 rounding, which the gradient of a deep random network amplifies.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_an_export_archive_is_named_once_as_unfolded(tmp_path):
    """A torch.export program holds BatchNorm as graph functions: the driver's note says so in one line."""
    net = DemoNet().eval()
    ep = torch.export.export(net, (torch.zeros(2, 3, 48, 48),), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(ep, str(tmp_path / "demo.pt2"))
    (tmp_path / "demo.pt2.preprocess.json").write_text('{"crop_size": 48, "resize_size": 56, "mean": [0.5, 0.5, 0.5], '
                                                       '"std": [0.25, 0.25, 0.25]}')
    spec = f"export:{tmp_path / 'demo.pt2'}"
    loaded = load_model(spec)
    note = unfolded_note(SimpleNamespace(fold_bn=True, model=spec), loaded)
    assert note is not None and note.count("\n") == 0 and spec in note and "BatchNorm not folded" in note


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "efficientnet_b0"])
def test_timm_batchnorm_act_is_folded_and_the_maps_stay(arch):
    """timm's BatchNormAct2d (BatchNorm + dropout + activation in one module) folds into the convolution
    before it; fx alone traced through it and left every BatchNorm of the efficientnet family."""
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = timm.create_model(arch, pretrained=False, num_classes=3).eval()
    _randomize_statistics(net)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    prepared = prepare_model(net, example=x)
    before, after = batchnorm_ops(net, x), batchnorm_ops(prepared, x)
    assert before > 0 and after == 0, (before, after)
    with torch.no_grad():
        want_out, got_out = net(x), prepared(x)
    torch.testing.assert_close(got_out, want_out, rtol=1e-3, atol=1e-4 * float(want_out.abs().max()))
    if arch == "tf_efficientnet_lite0":
        # ReLU6 with random weights: a rounding-sized change moves units across the clip at 0 or 6, where
        # the gradient jumps (measured map differences up to 1.4e-2 of the max over init seeds 0-3, outputs
        # within 4e-6); the smooth SiLU of efficientnet_b0 stays within 1e-6, so the maps are checked there.
        return
    targets, seeds = torch.tensor([0, 1]), torch.tensor([3, 4])
    want = smoothgrad(net, x, targets, n_samples=4, seeds=seeds)
    got = smoothgrad(prepared, x, targets, n_samples=4, seeds=seeds)
    print(f"{arch}: BatchNorm ops {before} -> {after}, map max |diff| {float((got - want).abs().max()):.2e}")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_the_real_model_folds_fully_with_the_same_prediction():
    """EfficientNet-Lite0 (timm tf_efficientnet_lite0, sgcore[real]) as a replica prepares it."""
    from sgcore.models.zoo import efficientnet_lite0 as lite0
    from tests.models.test_efficientnet_lite0 import _model_input, _need_extra

    _need_extra()
    data = pytest.importorskip("skimage.data", reason="the photograph comes from scikit-image")
    loaded = load_model(lite0.SPEC)
    x = _model_input(loaded.preprocess, data.chelsea())
    prepared = _prepare(loaded, CONFIG, torch.device("cpu"))
    assert batchnorm_ops(loaded.model, x) > 0 and batchnorm_ops(prepared, x) == 0
    assert unfolded_note(CONFIG, loaded) is None
    with torch.no_grad():
        want, got = loaded.model(x), prepared(x)
    assert int(got.argmax()) == int(want.argmax())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))
