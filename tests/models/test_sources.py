"""Model sources: bad specs get one line and exit 2; outputs, scores, class targets,
content hashes. (End to end on Ray: tests/pipeline/test_own_models.py.)"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from jobs.smoothgrad import main
from sgcore.errors import ConfigError
from sgcore.models import DemoNet, load_model, logits_of, model_identity, with_score
from sgcore.pipeline.worker import class_target
from tests.conftest import write_images

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, n_per_class=1, size=24)
    return root


GOODNETS = """
from torch import nn


def build(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty-dir").mkdir()
    (d / "not-an-archive.pt").write_bytes(b"definitely not a TorchScript archive")
    (d / "not-an-archive.pt.preprocess.json").write_text(json.dumps({"crop_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}))
    torch.save(DemoNet().state_dict(), d / "demo-for-resnet.pth")
    pkg = d / "py" / "badnets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def build():\n    return 'a string'\n")
    (d / "py" / "goodnets.py").write_text(GOODNETS)
    sys.path.insert(0, str(d / "py"))
    import goodnets

    # Checkpoints of other architectures for the factory: other layers, and the same layers wider.
    torch.save(DemoNet().state_dict(), d / "demo-for-py.pt")
    torch.save({"state_dict": goodnets.build(width=8).state_dict()}, d / "wide-for-py.pt")
    torch.save(timm.create_model("resnet18", num_classes=3).state_dict(), d / "r18-for-r10.pth")
    yield d
    sys.path.remove(str(d / "py"))
    sys.modules.pop("badnets", None)
    sys.modules.pop("goodnets", None)


@pytest.mark.parametrize(("model", "weights", "line"), [
    ("timm:resnet_nope", "none", r"unknown timm model 'resnet_nope' \(--model timm:resnet_nope\); did you mean"),
    ("hf:{d}/empty-dir", "default", r"hf:.*empty-dir has no config\.json; give a directory written by model\.save_pretrained"),
    ("torchscript:{d}/not-an-archive.pt", "default", r"torchscript:.*not-an-archive\.pt is not a TorchScript archive \(not a zip file\); "
                                                     r"write one with torch\.jit\.save"),
    ("export:{d}/not-an-archive.pt", "default", r"export:.*not-an-archive\.pt is not a torch\.export \(\.pt2\) archive \(not a zip file\)"),
    ("py:badnets:build", "default", r"--model py:badnets:build returned str; the factory must return an nn\.Module"),
    ("py:no_such_pkg_zz:build", "default", r"--model py:no_such_pkg_zz:build: cannot import no_such_pkg_zz .*PYTHONPATH"),
    ("py:badnets", "default", r"--model py:badnets must be py:MODULE:CALLABLE"),
    ("timm:resnet10t", "{d}/demo-for-resnet.pth", r"checkpoint .*demo-for-resnet\.pth does not fit timm:resnet10t: missing keys"),
    ("timm:resnet10t", "{d}/r18-for-r10.pth", r"checkpoint .*r18-for-r10\.pth does not fit timm:resnet10t: missing keys "
                                              r"\['conv1\.0\.weight', .*\] \(\+\d+ more\); unexpected keys \[.*\] "
                                              r"\(\+\d+ more\); shape mismatches \['layer2\.0\.downsample\.1\.weight \(128,\) vs "
                                              r"\(128, 64, 1, 1\)'"),
    # A checkpoint of another architecture in a factory: what does not fit, summarized (5 keys, then a count).
    ("py:goodnets:build", "{d}/demo-for-py.pt", r"checkpoint .*demo-for-py\.pt does not fit py:goodnets:build: "
                                                r"missing keys \['0\.weight', '0\.bias', '4\.weight', '4\.bias'\]; "
                                                r"unexpected keys \['features\.0\.weight', .*\] \(\+\d+ more\)$"),
    ("py:goodnets:build", "{d}/wide-for-py.pt", r"checkpoint .*wide-for-py\.pt does not fit py:goodnets:build: "
                                                r"shape mismatches \['0\.weight \(8, 3, 3, 3\) vs \(4, 3, 3, 3\)', "
                                                r"'0\.bias \(8,\) vs \(4,\)', '4\.weight \(2, 8\) vs \(2, 4\)'\]$"),
    ("timm:", "none", r"--model 'timm:' names no model after 'timm:'"),
], ids=["timm-unknown-name", "hf-no-config", "torchscript-no-archive", "export-no-archive", "py-returns-str",
        "py-not-importable", "py-no-callable", "timm-demo-checkpoint", "timm-resnet18-checkpoint",
        "py-other-layers-checkpoint", "py-wider-layers-checkpoint", "timm-empty-name"])
def test_bad_model_specs_get_one_line_and_exit_2(capsys, artifacts, images, tmp_path, model, weights, line):
    model, weights = model.format(d=artifacts), weights.format(d=artifacts)
    argv = ["--input", str(images), "--output", str(tmp_path / "out"), "--model", model, "--weights", weights,
            "--n-samples", "1", "--gpus-per-actor", "0", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and len(err) < 1000, err
    assert __import__("re").search(line, err.rstrip("\n")), err
    # Stopped on the driver before any Ray work: no cluster, no output folder, no manifest or lease.
    assert not (tmp_path / "out").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ImportError, match=r"--model timm:resnet10t needs timm: pip install 'sgcore\[timm\]'"):
        load_model("timm:resnet10t", "none")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"needs transformers: pip install 'sgcore\[hf\]'"):
        load_model("hf:google/vit-base-patch16-224")


@pytest.mark.parametrize(("module", "model", "extra"), [("timm", "timm:resnet10t", "timm"),
                                                      ("transformers", "hf:{d}/empty-dir", "hf")])
def test_a_missing_extra_is_one_line_and_exit_2(monkeypatch, capsys, artifacts, images, tmp_path, module, model, extra):
    monkeypatch.setitem(sys.modules, module, None)
    argv = ["--input", str(images), "--output", str(tmp_path / "out"), "--model", model.format(d=artifacts),
            "--weights", "none" if module == "timm" else "default", "--n-samples", "1", "--gpus-per-actor", "0",
            "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and f"pip install 'sgcore[{extra}]'" in err, err


def test_timm_default_weights_without_network_name_the_checkpoint_flag(monkeypatch):
    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **k: offline() if pretrained else None)
    with pytest.raises(ConfigError, match=r"could not get timm's pretrained weights for resnet10t \(network unreachable\); "
                                          r"no network\? pass --weights CHECKPOINT"):
        load_model("timm:resnet10t", "default")


class _Out(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.kind = kind

    def forward(self, x):
        y = self.lin(x.mean((2, 3)))
        return {"tensor": y, "tuple": (y, x), "list": [y], "dict": {"logits": y, "h": x},
                "model_output": transformers.modeling_outputs.ImageClassifierOutput(logits=y),
                "ordered": OrderedDict(logits=y), "str": "nope", "dict_no_logits": {"out": y}}[self.kind]


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict", "model_output", "ordered"])
def test_every_output_form_gives_the_logits(kind):
    m = _Out(kind)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(logits_of(m(x)), m.lin(x.mean((2, 3))))


@pytest.mark.parametrize(("kind", "match"), [
    ("str", r"the model returned str; it must return the \(batch, classes\) logits as a tensor"),
    ("dict_no_logits", r"the model returned dict with keys \['out'\]; .* \(else wrap it in a py: factory"),
])
def test_other_outputs_are_one_line_errors(kind, match):
    with pytest.raises(TypeError, match=match) as e:
        logits_of(_Out(kind)(torch.randn(1, 3, 2, 2)))
    assert "\n" not in str(e.value)


def test_scores_are_the_logits_softmax_or_log_softmax():
    m = _Out("tensor")
    x = torch.randn(3, 3, 2, 2)
    y = m(x)
    assert with_score(m, "logit") is m
    torch.testing.assert_close(with_score(m, "softmax")(x), torch.softmax(y, 1))
    torch.testing.assert_close(with_score(m, "log_softmax")(x), torch.log_softmax(y, 1))


def test_class_targets_by_name_or_index():
    cats = ["ant", "bee", "cat"]
    assert class_target("predicted", cats, 3) is None
    assert class_target("class:bee", cats, 3) == 1
    assert class_target("class:2", None, 3) == 2
    with pytest.raises(ConfigError, match=r"--target class:be: no category 'be' among the model's 3 \(did you mean bee"):
        class_target("class:be", cats, 3)
    with pytest.raises(ConfigError, match=r"class index must be in \[0, 2\]; got 7"):
        class_target("class:7", cats, 3)
    with pytest.raises(ConfigError, match=r"the model has no category names; give a class index"):
        class_target("class:bee", None, 3)


def test_identity_hashes_every_weights_file(tmp_path):
    import hashlib

    path = tmp_path / "w.pt"
    torch.save(DemoNet().state_dict(), path)
    ident = model_identity("demo", str(path))
    assert ident["files"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert load_model("demo", str(path)).files == ident["files"]
    assert model_identity("resnet18", "none")["files"] == {}
    assert set(model_identity("demo")["files"]) == {"demo-shipped"}


def test_identity_of_an_archive_hashes_its_preprocessing_sidecar(tmp_path):
    import hashlib
    import json

    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(DemoNet().eval()), str(path))
    side = tmp_path / "net.ts.preprocess.json"
    side.write_text(json.dumps({"crop_size": 32, "resize_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}))
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, side)}
    expected = {str(path): sha[path], str(side): sha[side]}
    # What the job loads and what the audit recomputes without loading agree.
    assert model_identity(f"torchscript:{path}")["files"] == expected
    assert load_model(f"torchscript:{path}").files == expected
    side.unlink()
    assert model_identity(f"torchscript:{path}")["files"] == {str(path): sha[path]}


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_guided_backprop_on_an_archive_is_refused_before_any_work(capsys, artifacts, images, tmp_path, kind):
    argv = ["--input", str(images), "--output", str(tmp_path / "o"), "--model",
            f"{kind}:{artifacts}/not-an-archive.pt", "--base", "guided_backprop", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--base guided_backprop cannot run on --model {kind}:...: a {kind} " \
        "archive holds no Python ReLU modules to guide; use --base gradient" in err, err
    assert not (tmp_path / "o").exists()
