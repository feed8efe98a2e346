"""Every input layout end to end through ``jobs.smoothgrad`` against a real S3 API (moto).

The moto server listens on 127.0.0.1; the job and its Ray workers reach it
through ``AWS_ENDPOINT_URL`` (the standard botocore variable), exactly as a
job reaches a MinIO or a real S3 endpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from jobs.smoothgrad import main
from sgcore import smoothgrad
from sgcore.demo import DEMO_CLASSES, generate_dataset
from sgcore.io import decode_image, read_source
from sgcore.models import load_model
from sgcore.render import overlay
from sgcore.results import load_maps, open_results
from sgcore.seeds import image_seed
from tests.io.datasets import encode, rgb, write_messy_prefix, write_parquet, write_tar

BUCKET = "sgcore-e2e"
SECRET = "testing-secret"  # set by the s3_server fixture; must never reach an output
# Passed to the jobs below through --storage-options (moto accepts any key and secret),
# so that it really sits in JobConfig.storage_options and travels to every worker.
OPT_SECRET = "sgcore-opt-secret-0b7e1c"
STORAGE_OPTIONS = ["--storage-options", json.dumps({"key": "testing", "secret": OPT_SECRET})]
WEIGHTS = f"s3://{BUCKET}/models/demo-random.pt"  # a checkpoint read through the same endpoint
ARGS = ["--model", "demo", "--weights", WEIGHTS, "--n-samples", "2", "--shard-size", "4",
        "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def s3(s3_server, request):
    """The bucket with every layout uploaded; Ray starts after AWS_ENDPOINT_URL is set."""
    s3fs = pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    request.getfixturevalue("ray_local")
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    buf = io.BytesIO()
    torch.save(load_model("demo", "none").model.state_dict(), buf)
    fs.pipe(WEIGHTS, buf.getvalue())
    return fs


def _upload(fs, local: Path, prefix: str) -> str:
    fs.put(str(local) + "/", f"{BUCKET}/{prefix}/", recursive=True)
    fs.invalidate_cache()
    return f"s3://{BUCKET}/{prefix}"


def _demo_images(tmp: Path, n_per_class: int = 2) -> Path:
    return generate_dataset(tmp / "demo", n_per_class=n_per_class, seed=7)


def _no_secret(text: str | bytes, where: str) -> None:
    blob = text.encode() if isinstance(text, str) else text
    for secret in (SECRET, OPT_SECRET):
        assert secret.encode() not in blob, f"secret {secret!r} found in {where}"


def _secret_free(fs, url: str) -> dict[str, int]:
    """No secret in any object under ``url``: raw bytes, and decoded where they are compressed.

    Returns how many manifests, Parquet parts and npz files were checked.
    """
    seen = {"manifest": 0, "parquet": 0, "npz": 0}
    for path in fs.find(url):
        data = fs.cat_file(path)
        _no_secret(data, path)
        if path.endswith("_manifest.json"):
            _no_secret(json.dumps(json.loads(data)), path)
            seen["manifest"] += 1
        elif path.endswith(".parquet"):
            # Data pages may be compressed: look at the footer and at every decoded value.
            meta = pq.read_metadata(io.BytesIO(data))
            for k, v in (meta.metadata or {}).items():
                _no_secret(k + b"=" + v, f"{path} footer metadata")
            table = pq.read_table(io.BytesIO(data))
            for name in table.column_names:
                if not pa.types.is_floating(table.schema.field(name).type):
                    _no_secret(repr(table.column(name).to_pylist()), f"{path} column {name}")
            seen["parquet"] += 1
        elif path.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                for key in npz.files:
                    _no_secret(key, f"{path} key")
                    if npz[key].dtype.kind in "SUO":
                        _no_secret(repr(npz[key].tolist()), f"{path}[{key}]")
            seen["npz"] += 1
    return seen


@contextlib.contextmanager
def _captured_output() -> Iterator[dict[str, str]]:
    """Everything the job says while the block runs: Python and fd-level stdout and
    stderr, and every record of the ``sgcore`` loggers down to DEBUG."""
    out: dict[str, str] = {}
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler, logger = _Keep(level=logging.DEBUG), logging.getLogger("sgcore")
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    py_out, py_err = io.StringIO(), io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as fd_file:
        os.dup2(fd_file.fileno(), 1)
        os.dup2(fd_file.fileno(), 2)
        try:
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield out
        finally:
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            logger.removeHandler(handler)
            logger.setLevel(saved_level)
            fd_file.seek(0)
            out.update(stdout=py_out.getvalue(), stderr=py_err.getvalue(),
                       fd=fd_file.read().decode(errors="replace"), log="\n".join(records))


def _ray_worker_logs() -> str:
    """The stdout/stderr files of this session's Ray workers (what log_to_driver relays)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*"))
                     if p.suffix in (".out", ".err"))


def _kernel_map(image_bytes: bytes, target: int, image_id: str) -> np.ndarray:
    loaded = load_model("demo", WEIGHTS)
    pre = loaded.preprocess
    arr, _ = decode_image(image_bytes, resize_size=pre.resize_size, crop_size=pre.crop_size)
    x = pre.normalize(torch.from_numpy(arr[None]))
    maps = smoothgrad(loaded.model.eval(), x, torch.tensor([target]), n_samples=2,
                      seeds=torch.tensor([image_seed(0, image_id)]))
    return maps.abs().sum(1)[0].numpy()


@pytest.fixture(scope="module")
def messy(s3, tmp_path_factory):
    """(input URL, output URL, expected errors) of one job over the messy prefix on S3."""
    local = tmp_path_factory.mktemp("messy")
    expected = write_messy_prefix(local)
    url = _upload(s3, local, "messy")
    out = f"s3://{BUCKET}/out/messy"
    assert main(["--input", url, "--output", out, *ARGS, *STORAGE_OPTIONS]) == 0
    return url, out, expected


def test_messy_prefix_one_row_per_image_broken_ones_flagged(s3, messy):
    url, out, expected = messy
    rows = open_results(out).to_table(columns=["image_id", "status", "error"]).to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(expected)  # once each, nothing else
    for row in rows:
        err = expected[row["image_id"]]
        if err is None:
            assert row["status"] == "ok" and row["error"] is None, row
        else:
            assert row["status"] == "error" and err in row["error"] and url in row["error"], row
    assert s3.exists(f"{BUCKET}/out/messy/_SUCCESS")
    _secret_free(s3, out)


def test_outputs_read_directly_by_pandas_and_pyarrow(s3, messy):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    _, out, expected = messy
    pdf = pd.read_parquet(out)  # pandas -> fsspec/s3fs, endpoint from AWS_ENDPOINT_URL
    assert sorted(pdf.image_id) == sorted(expected)
    ok = pdf[pdf.status == "ok"].iloc[0]
    assert ok.saliency.reshape(ok.map_height, ok.map_width).shape == (64, 64)
    table = pq.read_table(f"{BUCKET}/out/messy", filesystem=PyFileSystem(FSSpecHandler(s3)))
    assert table.num_rows == len(expected)
    assert table.schema.field("saliency").type.extension_name == "arrow.fixed_shape_tensor"
    ok_ids = table.filter(pc.equal(table["status"], "ok"))["image_id"].to_pylist()
    assert sorted(load_maps(table)) == sorted(ok_ids)


@pytest.mark.slow
def test_outputs_read_directly_by_ray_data(s3, messy):
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    _, out, expected = messy
    ds = ray.data.read_parquet(f"{BUCKET}/out/messy", filesystem=PyFileSystem(FSSpecHandler(s3)))
    # _manifest.json and _SUCCESS sit beside the parts and are skipped.
    assert sorted(r["image_id"] for r in ds.select_columns(["image_id"]).take_all()) == sorted(expected)


def test_webdataset_on_s3_maps_equal_the_kernel(s3, tmp_path, in_process_jobs):
    # The replicas in process: what is checked is the S3 reads and the maps (the S3 jobs above and
    # below run on Ray).
    images = sorted(_demo_images(tmp_path).rglob("*.png"))
    samples = [(f"{p.parent.name}_{p.stem}", {"png": p.read_bytes(), "cls": p.parent.name.encode()})
               for p in images]
    half = len(samples) // 2
    write_tar(tmp_path / "wds" / "train-000.tar", samples[:half])
    write_tar(tmp_path / "wds" / "train-001.tar", samples[half:])
    url = _upload(s3, tmp_path / "wds", "wds")
    out = f"s3://{BUCKET}/out/wds"
    assert main(["--input", url, "--output", out, "--target", "label", *ARGS]) == 0
    table = open_results(out).to_table()
    df = table.to_pandas()
    assert len(df) == len(samples) and (df.status == "ok").all()
    assert set(df.label) == set(DEMO_CLASSES) and (df.label == df.target_name).all()
    first = df.sort_values("image_id").iloc[0]
    assert first.image_id == f"train-000.tar/{samples[0][0]}"
    assert first.source == f"{url}/train-000.tar#{samples[0][0]}.png"
    data = read_source(first.source)  # streamed back out of the tar on S3
    assert data == samples[0][1]["png"]
    expected = _kernel_map(data, int(first.target), first.image_id)
    got = load_maps(out, [first.image_id])[first.image_id]
    # float16 storage: ~3 significant digits, and subnormal steps of 2**-24 for tiny values.
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=max(1e-3 * float(np.abs(expected).max()), 2**-22))
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.999


@pytest.fixture(scope="module")
def npz_job(s3, tmp_path_factory):
    """(output URL, what it said) of a Parquet-input job writing npz maps, with the
    secret in --storage-options and progress lines on."""
    local = tmp_path_factory.mktemp("pq")
    images = [encode(rgb(i, (40 + 4 * i, 30))) for i in range(5)] + [b"\x89PNG broken"]
    write_parquet(local / "part-a.parquet", images, labels=[0, 1, 2, 0, 1, 2], hf=True,
                  row_group_size=2)
    url = _upload(s3, local, "pq")
    out = f"s3://{BUCKET}/out/pq"
    args = [a for a in ARGS if a != "--quiet"]
    with _captured_output() as said:
        code = main(["--input", url, "--output", out, "--format", "npz", "--store-full", *args,
                     *STORAGE_OPTIONS])
    assert code == 0, said
    return out, said


def test_storage_options_secret_reaches_no_output_or_log(s3, npz_job):
    out, said = npz_job
    seen = _secret_free(s3, out)
    assert seen["manifest"] == 1 and seen["parquet"] >= 1 and seen["npz"] >= 1, seen
    assert "[sgcore] done:" in said["stdout"]  # the capture did see the job talk
    for stream, text in said.items():
        _no_secret(text, f"the job's {stream}")
    _no_secret(_ray_worker_logs(), "the Ray workers' stdout/stderr files")


def test_parquet_on_s3_npz_store_full_and_overlay(s3, npz_job):
    out, _ = npz_job
    df = open_results(out).to_table().to_pandas().sort_values("image_id")
    assert list(df.image_id) == [f"part-a.parquet#{i}" for i in range(6)]
    assert list(df.label) == ["cat", "dog", "fox", "cat", "dog", "fox"]
    assert list(df.status) == ["ok"] * 5 + ["error"]
    assert s3.exists(f"{BUCKET}/out/pq/maps/part-00000-0000.npz")
    maps = load_maps(out)
    full = load_maps(out, full=True)
    assert sorted(maps) == sorted(full) == [f"part-a.parquet#{i}" for i in range(5)]
    assert maps["part-a.parquet#0"].shape == (64, 64) and full["part-a.parquet#0"].shape == (3, 64, 64)
    row = df.iloc[2].to_dict()
    img = overlay(row, saliency=maps[row["image_id"]], colorbar=False)
    assert img.size == (row["orig_width"], row["orig_height"]) == (48, 30)


@pytest.mark.slow
def test_subprocess_job_reads_s3_through_aws_endpoint_url(s3, s3_server, tmp_path):
    write_messy_prefix(tmp_path / "sub")
    url = _upload(s3, tmp_path / "sub", "sub")
    out = f"s3://{BUCKET}/out/sub"
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server, "RAY_ADDRESS": "local",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.smoothgrad", "--input", url, "--output", out, *ARGS,
         "--storage-options", json.dumps({"secret": SECRET, "key": "testing"})],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    assert len(open_results(out).to_table()) == 13
    manifest = json.loads(s3.cat_file(f"{BUCKET}/out/sub/_manifest.json"))
    assert manifest["status"] == "complete" and manifest["config"]["input"] == url
    _secret_free(s3, out)
