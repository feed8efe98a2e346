"""What identifies a job's inputs: a resume after the labels table, a preprocessing
sidecar or the preprocessing a ``py:`` factory returns changed (same URL, same
flags) is refused, naming what changed, instead of keeping stale rows.

Real jobs on a local Ray; the same bytes written again (a new modification time)
resume as before, and ``--overwrite`` takes the new content.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from sgcore.config import JobConfig
from sgcore.errors import ConfigError
from sgcore.models import DemoNet
from sgcore.pipeline import run_job
from tests.conftest import write_images

SMALL = dict(n_samples=2, shard_size=4, batch_size=4, gpus_per_actor=0.0, num_actors=1, progress=False)
PRE = {"crop_size": 32, "resize_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
FACTORY = '''
import json
import torch
from torch import nn

PRE = {pre!r}  # read at each call: what the factory returns may change between runs

def build():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    with open(PRE) as f:
        return net, json.load(f)
'''


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    """A package ``idnets`` whose ``build`` returns the preprocessing held in a JSON file."""
    d = tmp_path_factory.mktemp("factory")
    pre = d / "pre.json"
    pre.write_text(json.dumps(PRE))
    (d / "py" / "idnets").mkdir(parents=True)
    (d / "py" / "idnets" / "__init__.py").write_text(textwrap.dedent(FACTORY.format(pre=str(pre))))
    return d


@pytest.fixture
def ray_identity(factory, in_process_jobs):
    """The factory package importable; the jobs' replicas run in this process (the driver's refusals are
    what these tests check; a factory shipped to Ray actors as a py_module: test_own_models)."""
    sys.path.insert(0, str(factory / "py"))
    yield
    sys.path.remove(str(factory / "py"))
    sys.modules.pop("idnets", None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, n_per_class=2, size=32)
    return root


def _job(photos: Path, out: Path, **kw) -> JobConfig:
    return JobConfig(input=str(photos), output=str(out), **{**SMALL, **kw})


def _rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))]).set_index("image_id")


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(config: JobConfig) -> str:
    with pytest.raises(ConfigError) as e:
        run_job(config)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _rewrite_same(path: Path) -> None:
    """The same bytes written again: a new modification time, the same content."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def test_a_resume_after_the_labels_table_changed_is_refused_naming_it(ray_identity, photos, tmp_path):
    ids = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*"))
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,label\n" + "".join(f"{i},circle\n" for i in ids))
    spec = dict(labels=str(labels), target="label", image_size=32)
    out = tmp_path / "out"
    run_job(_job(photos, out, **spec))
    df = _rows(out)
    assert set(df.label) == {"circle"} and set(df.target) == {0}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["labels"] == {str(labels): _sha(labels)}  # beside the model's files
    parts = _parts(out)
    _rewrite_same(labels)
    assert run_job(_job(photos, out, **spec)).shards_skipped == len(parts)
    old = _sha(labels)
    labels.write_text("image_id,label\n" + "".join(f"{i},square\n" for i in ids))  # corrected
    msg = _refused(_job(photos, out, **spec))
    assert msg == (f"the labels table {labels} changed since {out} was written (sha256 {old[:12]}... -> "
                   f"{_sha(labels)[:12]}...); its rows would mix two labelings: use a new --output, or pass "
                   "--overwrite to replace them"), msg
    assert _parts(out) == parts  # nothing mixed in
    run_job(_job(photos, out, overwrite=True, **spec))
    df = _rows(out)
    assert set(df.label) == {"square"} and set(df.target) == {1}


def _archive(tmp_path: Path, pre: dict) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(DemoNet().eval()), str(path))
    (tmp_path / "net.ts.preprocess.json").write_text(json.dumps({"preprocess": pre, "categories": list("abcd")}))
    return path


def test_a_resume_after_the_preprocessing_sidecar_changed_is_refused_naming_it(ray_identity, photos, tmp_path):
    path = _archive(tmp_path, PRE)
    side = tmp_path / "net.ts.preprocess.json"
    spec = dict(model=f"torchscript:{path}")
    out = tmp_path / "out"
    run_job(_job(photos, out, **spec))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model"]["files"] == {str(path): _sha(path), str(side): _sha(side)}
    parts = _parts(out)
    _rewrite_same(side)
    assert run_job(_job(photos, out, **spec)).shards_skipped == len(parts)
    old = _sha(side)
    side.write_text(json.dumps({"preprocess": {**PRE, "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]},
                                "categories": list("abcd")}))
    msg = _refused(_job(photos, out, **spec))
    assert msg.startswith(f"the model file {side} changed since {out} was written (sha256 {old[:12]}... -> "
                          f"{_sha(side)[:12]}...; preprocessing mean: [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4], "
                          "std: [0.25, 0.25, 0.25] -> [0.2, 0.2, 0.2])"), msg
    assert _parts(out) == parts


def test_a_resume_after_a_factory_returns_other_preprocessing_is_refused_naming_it(ray_identity, factory, photos,
                                                                                   tmp_path):
    pre = factory / "pre.json"
    spec = dict(model="py:idnets:build")
    out = tmp_path / "out"
    try:
        run_job(_job(photos, out, **spec))
        parts = _parts(out)
        assert run_job(_job(photos, out, **spec)).shards_skipped == len(parts)
        pre.write_text(json.dumps({**PRE, "std": [0.5, 0.5, 0.5]}))
        msg = _refused(_job(photos, out, **spec))
        assert msg == (f"the model's preprocessing changed since {out} was written (std: [0.25, 0.25, 0.25] -> "
                       "[0.5, 0.5, 0.5]); its maps would mix two preprocessings: use a new --output, or pass "
                       "--overwrite to replace them"), msg
        assert _parts(out) == parts
    finally:
        pre.write_text(json.dumps(PRE))


# ---- the decisions, in process --------------------------------------------------

OUT = "s3://b/out"
ARCHIVE, SIDE, LABELS = "s3://b/net.ts", "s3://b/net.ts.preprocess.json", "s3://b/labels.csv"
IDENTITY = {"source": "torchscript", "spec": f"torchscript:{ARCHIVE}", "weights": "(in the archive)",
            "files": {ARCHIVE: "a" * 64, SIDE: "b" * 64}, "labels": {LABELS: "c" * 64}}


def _config(**kw) -> JobConfig:
    return JobConfig(input="s3://b/in", output=OUT, model=f"torchscript:{ARCHIVE}", labels=LABELS,
                     target="label", **kw)


def _with(identity: dict, key: str, name: str, sha: str) -> dict:
    return {**identity, key: {**identity[key], name: sha}}


def _old(config: JobConfig, identity: dict, pre):
    from sgcore.io import Manifest, RunEntry
    from sgcore.pipeline.driver import job_hash

    return Manifest.begin(config=config.public_dict(), config_hash=job_hash(config, identity, pre),
                          preprocess=pre.to_dict(), model=identity, fingerprint="f", shards=[], committed={},
                          previous=None, run=RunEntry(started="2024-01-01T00:00:00Z", shards=0, shards_skipped=0))


def test_the_job_hash_follows_the_content_of_every_input_that_decides_a_row():
    from sgcore.models import Preprocess
    from sgcore.pipeline.driver import job_hash

    pre = Preprocess.from_dict(PRE)
    config = _config()
    same = job_hash(config, json.loads(json.dumps(IDENTITY)), Preprocess.from_dict(dict(PRE)))
    assert job_hash(config, IDENTITY, pre) == same  # content, not object identity
    others = [
        job_hash(config, _with(IDENTITY, "files", SIDE, "d" * 64), pre),
        job_hash(config, _with(IDENTITY, "files", ARCHIVE, "d" * 64), pre),
        job_hash(config, _with(IDENTITY, "labels", LABELS, "d" * 64), pre),
        job_hash(config, IDENTITY, Preprocess.from_dict({**PRE, "std": [0.5, 0.5, 0.5]})),
        job_hash(config, IDENTITY, Preprocess.from_dict({**PRE, "interpolation": "bicubic"})),
        job_hash(_config(n_samples=7), IDENTITY, pre),
    ]
    assert len({same, *others}) == len(others) + 1
    # Where it runs and with which credentials is no part of it.
    assert job_hash(_config(num_actors=3, storage_options={"secret": "s"}), IDENTITY, pre) == same


WAY_OUT = "use a new --output, or pass --overwrite to replace them"


@pytest.mark.parametrize("change, message", [
    (dict(n_samples=9), f"{OUT} holds results of another config (changed: n_samples: 50 -> 9); {WAY_OUT}"),
    (dict(files=(SIDE, "d" * 64), pre={"mean": [0.4, 0.4, 0.4]}),
     f"the model file {SIDE} changed since {OUT} was written (sha256 bbbbbbbbbbbb... -> dddddddddddd...; "
     f"preprocessing mean: [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4]); its maps would mix two models: {WAY_OUT}"),
    (dict(files=(ARCHIVE, "d" * 64)),
     f"the model file {ARCHIVE} changed since {OUT} was written (sha256 aaaaaaaaaaaa... -> dddddddddddd...); "
     f"its maps would mix two models: {WAY_OUT}"),
    (dict(labels=(LABELS, "d" * 64)),
     f"the labels table {LABELS} changed since {OUT} was written (sha256 cccccccccccc... -> dddddddddddd...); "
     f"its rows would mix two labelings: {WAY_OUT}"),
    (dict(pre={"crop_size": 28}),
     f"the model's preprocessing changed since {OUT} was written (crop_size: 32 -> 28); its maps would mix two "
     f"preprocessings: {WAY_OUT}"),
])
def test_a_refused_resume_names_what_changed(change, message):
    from sgcore.models import Preprocess
    from sgcore.pipeline.driver import _what_changed

    pre = Preprocess.from_dict(PRE)
    old = _old(_config(), IDENTITY, pre)
    identity = json.loads(json.dumps(IDENTITY))
    if "files" in change:
        identity = _with(identity, "files", *change["files"])
    if "labels" in change:
        identity = _with(identity, "labels", *change["labels"])
    new_pre = Preprocess.from_dict({**PRE, **change.get("pre", {})})
    config = _config(**{k: v for k, v in change.items() if k not in ("files", "labels", "pre")})
    assert _what_changed(config, old, identity, new_pre) == message


def test_a_hash_that_changed_with_nothing_to_name_is_put_down_to_the_sgcore_version():
    from sgcore.models import Preprocess
    from sgcore.pipeline.driver import _what_changed

    pre = Preprocess.from_dict(PRE)
    old = _old(_config(), IDENTITY, pre)
    old.config_hash = "0123456789abcdef"  # say, written by a version that hashed less
    assert _what_changed(_config(), old, IDENTITY, pre) == (
        f"{OUT} holds results of another config (changed: sgcore version); {WAY_OUT}")
