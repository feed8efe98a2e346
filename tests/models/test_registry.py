import io
import os
import pickle
import re
import socket
import urllib.error

import fsspec
import pytest
import torch
import torchvision

from sgcore.demo import make_split
from sgcore.errors import ConfigError
from sgcore.models import (
    DEMO_CATEGORIES,
    DEMO_PREPROCESS,
    DEMO_WEIGHTS_PATH,
    DemoNet,
    LoadedModel,
    list_models,
    load_model,
    resolve_preprocess,
)
from sgcore.models.preprocess import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Empty hub cache; any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def forbidden(*args, **kwargs):
        raise AssertionError(f"unexpected download {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    for path in fs.find("/sgcore-test"):
        fs.rm(path)


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- names


def test_list_models_has_demo_and_torchvision_classifiers():
    names = list_models()
    assert names[0] == "demo"
    assert {"resnet50", "vit_b_16", "efficientnet_b0"} <= set(names)
    assert set(names[1:]) == set(torchvision.models.list_models(module=torchvision.models))
    assert "fasterrcnn_resnet50_fpn" not in names  # detection models are not classifiers


def test_unknown_model_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet5'; did you mean resnet50, .*resnet18.*\? choose one of list_models\(\) \(--model"):
        load_model("resnet5")
    with pytest.raises(ConfigError, match=r"unknown model 'zzz'; choose one of list_models\(\)"):
        resolve_preprocess("zzz")
    with pytest.raises(ConfigError, match=r"model name must be a string; got int"):
        load_model(50)


# --------------------------------------------------------------------------- preprocessing


def test_resolve_preprocess_resnet50_v2_without_download(no_download):
    for weights in ("IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2", "default", "DEFAULT"):
        pre = resolve_preprocess("resnet50", weights)
        assert (pre.resize_size, pre.crop_size) == (232, 224), weights
        assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD
        assert pre.interpolation == "bilinear"
    v1 = resolve_preprocess("resnet50", "IMAGENET1K_V1")
    assert (v1.resize_size, v1.crop_size) == (256, 224)


def test_resolve_preprocess_image_size_override(no_download):
    pre = resolve_preprocess("resnet50", "IMAGENET1K_V2", image_size=112)
    assert (pre.resize_size, pre.crop_size) == (116, 112)
    pre = resolve_preprocess("resnet50", "none", image_size=448)
    assert (pre.resize_size, pre.crop_size) == (512, 448)


def test_resolve_preprocess_follows_weight_interpolation(no_download):
    pre = resolve_preprocess("efficientnet_b0")
    assert (pre.resize_size, pre.crop_size, pre.interpolation) == (256, 224, "bicubic")


def test_resolve_preprocess_demo_matches_shipped_checkpoint(demo):
    assert resolve_preprocess("demo") == DEMO_PREPROCESS == demo.preprocess
    assert resolve_preprocess("demo", "none") == DEMO_PREPROCESS
    assert resolve_preprocess("demo", str(DEMO_WEIGHTS_PATH)) == DEMO_PREPROCESS
    assert resolve_preprocess("demo", image_size=32).crop_size == 32


# --------------------------------------------------------------------------- weight names


def test_unknown_weight_name_lists_valid_names(no_download):
    with pytest.raises(
        ConfigError,
        match=r"unknown weights 'IMAGENET1K_V9' for resnet50; choose one of IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, 'none' or a checkpoint URL/path",
    ):
        load_model("resnet50", "IMAGENET1K_V9")
    with pytest.raises(ConfigError, match=r"weights 'VGG16_Weights\.IMAGENET1K_V1' belong to VGG16_Weights, not to resnet50 \(ResNet50_Weights\)"):
        resolve_preprocess("resnet50", "VGG16_Weights.IMAGENET1K_V1")
    with pytest.raises(ConfigError, match=r"weights 'IMAGENET1K_V1' is not valid for demo; use 'default' \(shipped\), 'none'"):
        load_model("demo", "IMAGENET1K_V1")
    with pytest.raises(ConfigError, match=r"weights must be a non-empty string; got ''"):
        load_model("demo", "")


def test_download_failure_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        ConfigError,
        match=r"could not download weights IMAGENET1K_V1 for resnet18 \(<urlopen error \[Errno -3\] Temporary failure in name resolution>\); no network\? pass --weights with a local or s3:// checkpoint",
    ):
        load_model("resnet18", "IMAGENET1K_V1")


# It reaches for the network (download.pytorch.org): never in `make test`, whose
# tests need no network; test_download_failure_is_a_config_error covers the message.
@pytest.mark.slow
def test_real_download_failure_offline(monkeypatch, tmp_path):
    """The real hub download (smallest weights), bounded by a socket timeout."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)
    try:
        loaded = load_model("squeezenet1_1")
    except ConfigError as e:
        assert str(e).startswith("could not download weights IMAGENET1K_V1 for squeezenet1_1 (")
        assert str(e).endswith("); no network? pass --weights with a local or s3:// checkpoint")
    else:  # a machine with network access: the download worked
        assert loaded.weights == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
        pytest.skip("network reachable: the download succeeded")
    finally:
        socket.setdefaulttimeout(previous)


# --------------------------------------------------------------------------- demo


def test_demo_shipped_weights_are_accurate(demo):
    assert isinstance(demo, LoadedModel)
    assert (demo.name, demo.weights, demo.num_classes) == ("demo", "demo-shipped", 4)
    assert demo.categories == list(DEMO_CATEGORIES)
    assert not demo.model.training
    assert not any(p.requires_grad for p in demo.model.parameters())
    split = make_split(n_per_class=20, seed=4242)  # not a training or eval seed
    with torch.no_grad():
        logits = demo.model(demo.preprocess.normalize(torch.from_numpy(split.images)))
    accuracy = (logits.argmax(1).numpy() == split.labels).mean()
    assert accuracy >= 0.9, accuracy


def test_demo_weights_file_is_small_float32():
    assert DEMO_WEIGHTS_PATH.stat().st_size < 2 * 2**20
    checkpoint = torch.load(DEMO_WEIGHTS_PATH, weights_only=True)
    floats = [v for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    n_params = sum(p.numel() for p in DemoNet().parameters())
    assert 100_000 <= n_params <= 400_000


def test_weights_none_is_random_init_the_same_in_every_process(demo):
    a, b = load_model("demo", "none"), load_model("demo", "none")
    assert a.weights == "none" and a.categories == list(DEMO_CATEGORIES)
    assert not _params_equal(a.model, demo.model)
    # seeded: every actor of a job (and a resumed job) holds the same network,
    # without touching the caller's global RNG
    assert _params_equal(a.model, b.model)
    state = torch.random.get_rng_state()
    load_model("demo", "none")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not a.model.training


def test_torchvision_weights_none_small_image(no_download):
    loaded = load_model("resnet18", "none", image_size=64)
    assert (loaded.weights, loaded.categories, loaded.num_classes) == ("none", None, 1000)
    assert (loaded.preprocess.resize_size, loaded.preprocess.crop_size) == (73, 64)
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


# --------------------------------------------------------------------------- checkpoints


def _demo_state(seed=0, num_classes=4):
    torch.manual_seed(seed)
    return DemoNet(num_classes).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {"model": s, "epoch": 3},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"_orig_mod.{k}": v for k, v in s.items()}},
        lambda s: {f"module._orig_mod.{k}": v for k, v in s.items()},
    ],
    ids=["bare", "state_dict", "model", "module", "orig_mod", "both"],
)
def test_checkpoint_variants_round_trip(tmp_path, wrap):
    state = _demo_state()
    path = _save(wrap(state), tmp_path / "ckpt.pt")
    loaded = load_model("demo", path)
    assert loaded.weights == path
    assert loaded.num_classes == 4
    assert loaded.categories == list(DEMO_CATEGORIES)
    assert loaded.preprocess == DEMO_PREPROCESS
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_through_memory_filesystem(memfs):
    state = _demo_state(1)
    with fsspec.open("memory://sgcore-test/ckpt.pt", "wb") as f:
        torch.save({"state_dict": state, "categories": ["a", "b", "c", "d"]}, f)
    for url in ("memory://sgcore-test/ckpt.pt", "memory:///sgcore-test/ckpt.pt"):
        loaded = load_model("demo", url)
        assert loaded.categories == ["a", "b", "c", "d"]
        assert torch.equal(loaded.model.state_dict()["classifier.weight"], state["classifier.weight"])


def test_checkpoint_file_url_and_preprocess_entry(tmp_path):
    custom = {"resize_size": 72, "crop_size": 64, "mean": [0.4] * 3, "std": [0.2] * 3, "interpolation": "bicubic"}
    path = _save({"state_dict": _demo_state(), "preprocess": custom}, tmp_path / "c.pt")
    loaded = load_model("demo", f"file://{path}", image_size=32)
    expected = resolve_preprocess("demo", f"file://{path}", image_size=32)
    assert loaded.preprocess == expected
    assert (expected.resize_size, expected.crop_size, expected.interpolation) == (36, 32, "bicubic")


@pytest.mark.parametrize("arch", ["squeezenet1_1"])  # a conv head; demo tests a linear one
def test_num_classes_inferred_from_checkpoint(tmp_path, no_download, arch):
    torch.manual_seed(0)
    source = torchvision.models.get_model(arch, num_classes=10).eval()
    names = [f"class{i}" for i in range(10)]
    path = _save({"state_dict": source.state_dict(), "categories": names}, tmp_path / "tv.pt")
    loaded = load_model(arch, path, image_size=64)
    assert loaded.num_classes == 10 and loaded.categories == names
    assert loaded.preprocess.crop_size == 64
    assert _params_equal(loaded.model, source)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), source(x))
    default = load_model(arch, _save(torchvision.models.get_model(arch).state_dict(), tmp_path / "d.pt"))
    assert default.num_classes == 1000 and default.categories is None


def test_num_classes_inferred_for_demo(tmp_path):
    demo7 = load_model("demo", _save(_demo_state(num_classes=7), tmp_path / "d7.pt"))
    assert demo7.num_classes == 7 and demo7.categories is None


def test_missing_checkpoint(tmp_path, memfs):
    with pytest.raises(ConfigError, match=r"checkpoint .*nope\.pt not found"):
        load_model("demo", str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match=r"checkpoint memory://sgcore-test/nope\.pt not found"):
        load_model("demo", "memory://sgcore-test/nope.pt")


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = _save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match=r"checkpoint .*list\.pt holds list, not a state_dict \(a dict of tensors"):
        load_model("demo", path)
    path = _save({"lr": 0.1, "epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ConfigError, match=r"meta\.pt is not a state_dict: entries \['lr', 'epoch'\] are not named tensors"):
        load_model("demo", path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match=r"garbage\.pt is not a PyTorch checkpoint \(torch\.load: IndexError: pop from empty list\); write one with torch\.save\(model\.state_dict\(\), path\)$"):
        load_model("demo", str(garbage))
    whole = _save(DemoNet(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match=r"whole\.pt is not a PyTorch state_dict loadable with torch\.load\(weights_only=True\) \(save model\.state_dict\(\), not the model\): it pickles sgcore\.models\.demo_net\.DemoNet$"):
        load_model("demo", whole)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("wrap", [lambda x: pickle.dumps(x, protocol=2), lambda x: _bytes_of({"w": x})])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refused_pickle_checkpoint_names_the_global_never_the_advice(tmp_path, wrap):
    path = tmp_path / "evil.pt"
    path.write_bytes(wrap(_Evil()))
    with pytest.raises(ConfigError) as e:
        load_model("demo", str(path))
    text = str(e.value)
    assert "weights_only=False" not in text and "\n" not in text
    assert re.search(r"evil\.pt was refused by torch\.load\(weights_only=True\): unsupported GLOBAL "
                     r"posix\.system \(module posix is blocked\); it is not a state_dict of tensors: "
                     r"save model\.state_dict\(\)$", text), text


def _bytes_of(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(("data", "match"), [
    (b"", r"empty\.pt is empty \(0 bytes\)$"),
    (bytes(range(256)) * 8, r"is not a PyTorch checkpoint \(torch\.load: Unsupported operand 0\); write one with"),
    (b"PK\x03\x04 not a zip", r"is not a PyTorch checkpoint \(torch\.load: PytorchStreamReader failed reading zip "
                              r"archive: not a ZIP archive\); write one with torch\.save"),
    (pickle.dumps({"a": 1}), r"is not a PyTorch checkpoint \(torch\.load: Unsupported operand 149\)"),
    (_bytes_of({"w": torch.zeros(3)})[:300], r"is a damaged PyTorch file \(torch\.load: PytorchStreamReader failed "
                                            r"reading zip archive: failed finding central directory\); save or copy it again$"),
    (_bytes_of({"w": torch.zeros(3)}, _use_new_zipfile_serialization=False)[:100],
     r"is a damaged PyTorch file \(torch\.load: EOFError\)"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unloadable_checkpoint_gets_a_short_reason_without_weights_only_advice(tmp_path, data, match):
    path = tmp_path / "empty.pt"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=match) as e:
        load_model("demo", str(path))
    assert "weights_only=False" not in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_with_mismatched_keys(tmp_path):
    state = _demo_state()
    state.pop("classifier.bias")
    state["extra.weight"] = torch.zeros(2)
    path = _save(state, tmp_path / "keys.pt")
    with pytest.raises(ConfigError, match=r"keys\.pt does not fit demo: missing keys \['classifier\.bias'\]; unexpected keys \['extra\.weight'\]"):
        load_model("demo", path)
    state = _demo_state()
    state["features.0.weight"] = torch.zeros(16, 3, 5, 5)
    path = _save(state, tmp_path / "shape.pt")
    with pytest.raises(ConfigError, match=r"shape\.pt does not fit demo: shape mismatches \['features\.0\.weight \(16, 3, 5, 5\) vs \(16, 3, 3, 3\)'\]"):
        load_model("demo", path)
    path = _save({"state_dict": _demo_state(), "categories": ["a", "b"]}, tmp_path / "cats.pt")
    with pytest.raises(ConfigError, match=r"cats\.pt lists 2 categories but its model has 4 outputs"):
        load_model("demo", path)


def test_credentials_never_in_errors(memfs):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
    with pytest.raises(ConfigError) as info:
        load_model("demo", "memory://sgcore-test/absent.pt", storage_options={"secret": secret, "key": "AKIAEXAMPLE"})
    assert secret not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_model("demo", f"memory://user:{secret}@sgcore-test/absent.pt")
    assert secret not in str(info.value)
    assert "memory://***@sgcore-test/absent.pt" in str(info.value)
