"""Model sources end to end on a local Ray: timm, Hugging Face (local and s3://),
TorchScript and torch.export archives, Python factories; a resume after the
weights changed at the same path is refused.

Each map must equal (within float16) the kernel called directly on the same model,
fed by the source library's own preprocessing of the same image, with the row's seed.
The jobs of the tests with ``in_process_jobs`` build their replicas in this process;
the Python factory (a py_module shipped to the actors) and the Hugging Face directory
on S3 run on the module's Ray, as do the audits with ``--num-actors``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sgcore import smoothgrad
from sgcore.attribution import reduce_channels
from sgcore.config import JobConfig
from sgcore.models import DemoNet
from sgcore.pipeline import run_job
from tests.conftest import ray_runtime_env, write_images

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

SMALL = dict(n_samples=3, shard_size=2, batch_size=4, gpus_per_actor=0.0, num_actors=1, progress=False)
DEMO_PRE = {"crop_size": 48, "resize_size": 56, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "interpolation": "bilinear"}
FACTORY = '''
import torch
from torch import nn

class Net(nn.Module):
    """Returns a dict, as some in-house models do."""
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(24, 3))
    def forward(self, x):
        return {"logits": self.body(x), "aux": x.mean()}

def build():
    return Net(), {"crop_size": [40, 56], "resize_size": 44, "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}

def not_a_model():
    return "a string"
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every model artifact, built once: {name: path}."""
    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    r10 = timm.create_model("resnet10t", num_classes=3)
    torch.save({"state_dict": r10.state_dict(), "categories": ["ant", "bee", "cat"]}, d / "r10.pth")
    from safetensors.torch import save_file

    save_file(timm.create_model("test_vit", num_classes=4).state_dict(), str(d / "vit.safetensors"))
    vit_cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3,
                                     id2label={0: "x", 1: "y", 2: "z"}, label2id={"x": 0, "y": 1, "z": 2})
    transformers.ViTForImageClassification(vit_cfg).save_pretrained(d / "hf-vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d / "hf-vit")
    cnx_cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    transformers.ConvNextForImageClassification(cnx_cfg).save_pretrained(d / "hf-convnext")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(d / "hf-convnext")
    net = DemoNet().eval()
    torch.jit.save(torch.jit.script(net), str(d / "demo.ts"))
    (d / "demo.ts.preprocess.json").write_text(json.dumps({"preprocess": DEMO_PRE, "categories": list("abcd")}))
    ep = torch.export.export(net, (torch.zeros(2, 3, 48, 48),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(ep, str(d / "demo.pt2"))
    torch.save(net.state_dict(), d / "demo-state.pt")
    (d / "demo.pt2.bad").write_bytes(b"not an archive at all")
    pkg = d / "py" / "acme_nets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FACTORY))
    return d


@pytest.fixture(scope="module")
def ray_zoo(zoo, s3_server):
    """One local Ray for the module; the factory package travels as a py_module,
    as with ``ray job submit --py-modules``."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.path.insert(0, str(zoo / "py"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={**ray_runtime_env(), "py_modules": [str(zoo / "py" / "acme_nets")]})
    yield
    ray.shutdown()
    sys.path.remove(str(zoo / "py"))
    sys.modules.pop("acme_nets", None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, n_per_class=2, size=40)  # 40x40 and 40x48, PNG and JPEG
    return root


def _run(photos, out, **kw):
    result = run_job(JobConfig(input=str(photos), output=str(out), **{**SMALL, **kw}))
    df = pd.concat([pd.read_parquet(p) for p in sorted(Path(out).glob("part-*.parquet"))])
    assert result.errors == 0 and (df.status == "ok").all(), df.error.tolist()
    return df.set_index("image_id"), json.loads((Path(out) / "_manifest.json").read_text())


def _audit(out, tmp_path, *, num_actors: int = 0):
    """jobs.audit on a run of this source: sanity cascade and faithfulness, in process (0) or on actors."""
    from jobs.audit import main as audit_main

    report = tmp_path / "report"
    assert audit_main(["--results", str(out), "--report", str(report), "--num-actors", str(num_actors),
                       "--sample", "2", "--steps", "4", "--n-samples", "2", "--no-localization"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["sanity"] is not None and summary["faithfulness"] is not None
    assert summary["heavy"]["failed_chunks"] == [] and summary["heavy"]["evaluated_images"] == 2
    return summary


def _check_maps(df, photos, model, transform, *, score: str = "logit"):
    """Each stored map == the kernel on ``transform(image)`` with the row's seed and target."""
    from sgcore.models import with_score
    from sgcore.models.outputs import Classifier

    model = with_score(Classifier(model, frozen_mode=True), score)  # callers pass eval-mode models
    for image_id, row in df.iterrows():
        with Image.open(photos / image_id) as img:
            x = transform(img.convert("RGB"))[None]
        maps = smoothgrad(model, x, torch.tensor([int(row.target)]), n_samples=SMALL["n_samples"],
                          seeds=torch.tensor([int(row.seed)]))
        expected = reduce_channels(maps, "abs_sum")[0].numpy()
        got = np.asarray(row.saliency, np.float32).reshape(int(row.map_height), int(row.map_width))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=4e-3, atol=2e-3 * float(np.abs(expected).max()))


def _torchvision_transform(pre: dict):
    from torchvision import transforms as T

    crop = pre["crop_size"]
    return T.Compose([T.Resize(pre["resize_size"]), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(pre["mean"], pre["std"])])


def test_timm_resnet10t_checkpoint(ray_zoo, zoo, photos, tmp_path, in_process_jobs):
    df, manifest = _run(photos, tmp_path / "out", model="timm:resnet10t", weights=str(zoo / "r10.pth"),
                        image_size=64, target="class:bee", score="softmax")
    assert set(df.target) == {1} and set(df.target_name) == {"bee"} and set(df.score_type) == {"softmax"}
    assert (df.map_height == 64).all()
    model = timm.create_model("resnet10t", num_classes=3)
    model.load_state_dict(torch.load(zoo / "r10.pth", weights_only=True)["state_dict"])
    cfg = {**timm.data.resolve_model_data_config(model), "input_size": (3, 64, 64)}
    _check_maps(df, photos, model.eval(), timm.data.create_transform(**cfg), score="softmax")
    _audit(tmp_path / "out", tmp_path)
    assert manifest["model"]["source"] == "timm"
    assert manifest["preprocess"]["crop_pct"] == 0.875 and manifest["preprocess"]["interpolation"] == "bicubic"
    import hashlib

    assert manifest["model"]["files"] == {str(zoo / "r10.pth"): hashlib.sha256((zoo / "r10.pth").read_bytes()).hexdigest()}


def test_timm_small_vit_safetensors(ray_zoo, zoo, photos, tmp_path, in_process_jobs):
    df, manifest = _run(photos, tmp_path / "out", model="timm:test_vit", weights=str(zoo / "vit.safetensors"))
    from safetensors.torch import load_file

    model = timm.create_model("test_vit", num_classes=4)
    model.load_state_dict(load_file(str(zoo / "vit.safetensors")))
    cfg = timm.data.resolve_model_data_config(model)
    _check_maps(df, photos, model.eval(), timm.data.create_transform(**cfg))
    assert (df.map_height == 160).all() and manifest["preprocess"]["crop_pct"] == 0.95


def _hf_transform(directory):
    proc = transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    return lambda img: proc(images=img, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("name", ["hf-vit", "hf-convnext"])
def test_hugging_face_directory(ray_zoo, zoo, photos, tmp_path, in_process_jobs, name):
    df, manifest = _run(photos, tmp_path / "out", model=f"hf:{zoo / name}")
    model = transformers.AutoModelForImageClassification.from_pretrained(zoo / name)
    _check_maps(df, photos, model.eval(), _hf_transform(zoo / name))
    if name == "hf-vit":
        _audit(tmp_path / "out", tmp_path)
    if name == "hf-vit":
        assert set(df.predicted_name) <= {"x", "y", "z"}
        assert manifest["preprocess"]["resize_mode"] == "squash"
    else:
        assert manifest["preprocess"]["resize_size"] == 36 and manifest["preprocess"]["crop_size"] == 32
    assert list(manifest["model"]["files"]) == [str(zoo / name)]


def test_hugging_face_directory_on_s3(ray_zoo, zoo, photos, tmp_path, s3_server, in_process_jobs):
    """The replicas in process: what is checked is the directory read from S3 and its hash (S3 reads in
    Ray workers: tests/pipeline/test_s3.py; an own model on Ray: test_python_factory_with_a_checkpoint)."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("zoo")
    fs.put(str(zoo / "hf-vit"), "zoo/hf-vit", recursive=True)
    df, manifest = _run(photos, tmp_path / "out", model="hf:s3://zoo/hf-vit")
    model = transformers.AutoModelForImageClassification.from_pretrained(zoo / "hf-vit")
    _check_maps(df, photos, model.eval(), _hf_transform(zoo / "hf-vit"))
    _, local = _run(photos, tmp_path / "local", model=f"hf:{zoo / 'hf-vit'}")
    # The same content, so the same hash, wherever it lives.
    assert list(manifest["model"]["files"].values()) == list(local["model"]["files"].values())
    assert list(manifest["model"]["files"]) == ["s3://zoo/hf-vit"]


def test_torchscript_archive_with_a_sidecar(ray_zoo, zoo, photos, tmp_path, in_process_jobs, capsys):
    df, manifest = _run(photos, tmp_path / "out", model=f"torchscript:{zoo / 'demo.ts'}")
    assert set(df.predicted_name) <= set("abcd") and (df.map_height == 48).all()
    _check_maps(df, photos, torch.jit.load(str(zoo / "demo.ts")).eval(), _torchvision_transform(DEMO_PRE))
    summary = _audit(tmp_path / "out", tmp_path)  # the cascade randomizes the archive's own parameters
    assert [s["layer"] for s in summary["sanity"]][0] == "inner.classifier"
    assert manifest["model"]["source"] == "torchscript" and manifest["preprocess"]["crop_size"] == 48
    from jobs.sweep import main as sweep_main

    # The sweep refuses guided backprop on the archive, as the job does.
    capsys.readouterr()
    assert sweep_main(["--results", str(tmp_path / "out"), "--report", str(tmp_path / "sweep"),
                       "--base", "guided_backprop", "--images", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "pid=" not in line]  # not Ray's actor logs
    assert len(err) == 1 and err[0].startswith("error: --base guided_backprop cannot run on --model torchscript:...: "
                                               "a torchscript archive holds no Python ReLU modules to guide"), err
    assert not (tmp_path / "sweep").exists()
    import hashlib

    assert manifest["model"]["files"] == {  # the archive and its preprocessing sidecar
        str(zoo / name): hashlib.sha256((zoo / name).read_bytes()).hexdigest()
        for name in ("demo.ts", "demo.ts.preprocess.json")}


def test_export_archive_with_preprocess(ray_zoo, zoo, photos, tmp_path, in_process_jobs):
    df, manifest = _run(photos, tmp_path / "out", model=f"export:{zoo / 'demo.pt2'}", preprocess=DEMO_PRE)
    assert (df.map_height == 48).all() and (df.map_width == 48).all()
    net = DemoNet()
    net.load_state_dict(torch.load(zoo / "demo-state.pt", weights_only=True))
    _check_maps(df, photos, net.eval(), _torchvision_transform(DEMO_PRE))  # the network it was exported from
    _check_maps(df, photos, torch.export.load(str(zoo / "demo.pt2")).module(), _torchvision_transform(DEMO_PRE))
    summary = _audit(tmp_path / "out", tmp_path)
    assert [s["layer"] for s in summary["sanity"]][0] == "inner.classifier"
    assert manifest["model"]["source"] == "export" and manifest["preprocess"]["interpolation"] == "bilinear"


def _factory_net():
    import acme_nets  # on sys.path by ray_zoo

    torch.manual_seed(5)
    net, pre = acme_nets.build()
    return net, pre


def test_python_factory_with_a_checkpoint(ray_zoo, zoo, photos, tmp_path):
    net, pre = _factory_net()
    torch.save(net.state_dict(), tmp_path / "acme.pt")
    df, manifest = _run(photos, tmp_path / "out", model="py:acme_nets:build", weights=str(tmp_path / "acme.pt"))
    assert (df.map_height == 40).all() and (df.map_width == 56).all()
    _check_maps(df, photos, net.eval(), _torchvision_transform(pre))
    assert manifest["model"]["source"] == "py" and manifest["preprocess"]["crop_size"] == [40, 56]
    # jobs.audit on a Ray actor: the factory is imported there (a py_module of ray_zoo, as --py-modules ships it).
    summary = _audit(tmp_path / "out", tmp_path, num_actors=1)
    assert summary["heavy"]["replicas"] == 1
    assert [s["layer"] for s in summary["sanity"]] == ["inner.body.4", "inner.body.0"]  # from the output down
    assert list(manifest["model"]["files"]) == [str(tmp_path / "acme.pt")]


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript"])
def test_a_resume_after_the_weights_changed_at_the_same_path_is_refused(ray_zoo, zoo, photos, tmp_path, kind,
                                                                       in_process_jobs):
    import shutil

    from sgcore.errors import ConfigError

    if kind == "checkpoint":
        net, _ = _factory_net()
        path = tmp_path / "acme.pt"
        torch.save(net.state_dict(), path)
        spec = dict(model="py:acme_nets:build", weights=str(path))
    else:
        path = tmp_path / "demo.ts"
        shutil.copy(zoo / "demo.ts", path)
        shutil.copy(zoo / "demo.ts.preprocess.json", tmp_path / "demo.ts.preprocess.json")
        spec = dict(model=f"torchscript:{path}")
    out = tmp_path / "out"
    _run(photos, out, **spec)
    parts = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    # The same bytes again: a resume that has nothing left to do.
    assert run_job(JobConfig(input=str(photos), output=str(out), **{**SMALL, **spec})).shards_skipped == len(parts)
    torch.manual_seed(11)
    if kind == "checkpoint":
        import acme_nets

        other, _ = acme_nets.build()
        torch.save(other.state_dict(), path)
    else:
        torch.jit.save(torch.jit.script(DemoNet().eval()), str(path))
    with pytest.raises(ConfigError) as e:
        run_job(JobConfig(input=str(photos), output=str(out), **{**SMALL, **spec}))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"the model file {path} changed since {out} was written (sha256 "), msg
    assert msg.endswith("its maps would mix two models: use a new --output, or pass --overwrite to replace them"), msg
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == parts  # nothing mixed in


# ---- jobs.sweep on a run of each source ----------------------------------------

def _sweep_spec(source: str, zoo: Path, tmp_path: Path) -> dict:
    """The job's model flags for ``source``; the py run explains the softmax, so the sweep must too."""
    if source == "py":
        net, _ = _factory_net()
        torch.save(net.state_dict(), tmp_path / "acme.pt")
        return dict(model="py:acme_nets:build", weights=str(tmp_path / "acme.pt"), score="softmax")
    if source == "torchvision":
        import torchvision

        torch.manual_seed(3)
        torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
        return dict(model="resnet18", weights=str(tmp_path / "r18.pt"), image_size=32)
    return {
        "torchscript": dict(model=f"torchscript:{zoo / 'demo.ts'}"),  # preprocessing from the sidecar
        "export": dict(model=f"export:{zoo / 'demo.pt2'}", preprocess=DEMO_PRE),  # from --preprocess
        "timm": dict(model="timm:resnet10t", weights=str(zoo / "r10.pth"), image_size=64, target="class:bee"),
        "hf": dict(model=f"hf:{zoo / 'hf-vit'}"),
    }[source]


@pytest.mark.parametrize("source", [
    "py", "torchscript",  # cheap: CI runs them
    pytest.param("export", marks=pytest.mark.slow),  # the same promise for the other sources
    pytest.param("timm", marks=pytest.mark.slow),
    pytest.param("hf", marks=pytest.mark.slow),
    pytest.param("torchvision", marks=pytest.mark.slow),
])
def test_sweep_rebuilds_the_runs_model(ray_zoo, zoo, photos, tmp_path, monkeypatch, source):
    """jobs.sweep on a run: the model, weights, preprocessing and score come from its manifest,
    so the grid's cell at the run's settings holds the run's stored maps of the same images."""
    import sgcore.audit.sweep_runner as sweep_runner
    from jobs.sweep import main as sweep_main
    from sgcore.audit.classes import map_statistics

    spec = _sweep_spec(source, zoo, tmp_path)
    df, manifest = _run(photos, tmp_path / "out", **spec)
    grids = []
    real_grid = sweep_runner.sweep_grid
    monkeypatch.setattr(sweep_runner, "sweep_grid", lambda *a, **k: grids.append(real_grid(*a, **k)) or grids[-1])
    report = tmp_path / "sweep"
    assert sweep_main(["--results", str(tmp_path / "out"), "--report", str(report), "--images", "2",
                       "--noise-levels", "0,0.15", "--sample-counts", f"1,{SMALL['n_samples']}",
                       "--convergence-counts", "1,2", "--reference-samples", "4"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert (report / "index.html").exists() and len(list((report / "img").iterdir())) == 3  # 2 grids + the curve
    assert (summary["model"], summary["weights"]) == (manifest["config"]["model"], manifest["config"]["weights"])
    ids = [im["image_id"] for im in summary["images"]]
    assert len(ids) == 2 and [im["target"] for im in summary["images"]] == [int(df.target[i]) for i in ids]
    stored = np.stack([np.asarray(df.saliency[i], np.float32).reshape(int(df.map_height[i]), int(df.map_width[i]))
                       for i in ids])
    (grid,) = grids
    swept = grid.maps[1, 1]  # noise 0.15, n = the run's: the job's own maps
    assert swept.shape == stored.shape
    np.testing.assert_allclose(swept, stored, rtol=4e-3, atol=2e-3 * float(np.abs(stored).max()))
    cell = next(c for c in summary["grid"]["cells"] if c["noise_level"] == 0.15 and c["n_samples"] == SMALL["n_samples"])
    stats = map_statistics(stored)
    assert cell["entropy"] == pytest.approx(float(stats["entropy"].mean()), rel=1e-3)
    assert cell["gini"] == pytest.approx(float(stats["gini"].mean()), rel=1e-3)


def test_audit_and_sweep_refuse_a_run_whose_checkpoint_changed(ray_zoo, photos, tmp_path, capsys):
    """The same spec at the same path with other bytes is another model: neither jobs.audit nor
    jobs.sweep recomputes the run's maps with it (one line, exit 2, no report)."""
    from jobs.audit import main as audit_main
    from jobs.sweep import main as sweep_main

    net, _ = _factory_net()
    ckpt = tmp_path / "acme.pt"
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "out"
    _, manifest = _run(photos, out, model="py:acme_nets:build", weights=str(ckpt))
    torch.manual_seed(11)
    import acme_nets

    torch.save(acme_nets.build()[0].state_dict(), ckpt)
    old = manifest["model"]["files"][str(ckpt)]
    for name, main, extra in [("audit", audit_main, ["--num-actors", "0", "--sample", "2", "--no-localization"]),
                              ("sweep", sweep_main, ["--images", "1"])]:
        capsys.readouterr()
        assert main(["--results", str(out), "--report", str(tmp_path / name), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "pid=" not in line]
        assert len(err) == 1, err
        assert err[0].startswith(f"error: the model file {ckpt} changed since {out} was written (sha256 {old[:12]}... "), err
        assert f"the {name} would explain another model than the one its maps are of" in err[0], err
        assert not (tmp_path / name).exists()
    # Another model named on purpose is the user's choice.
    assert sweep_main(["--results", str(out), "--report", str(tmp_path / "other"), "--weights", "none",
                       "--images", "1", "--noise-levels", "0.1", "--sample-counts", "1", "--convergence-counts", "1",
                       "--reference-samples", "1"]) == 0
