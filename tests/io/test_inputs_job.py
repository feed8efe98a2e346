"""The bad inputs of issue 25 through the real job (local Ray): one error row, or ids read over HTTP.

Slow (30-40 s each on a shared 2-core machine); the same promises are checked in-process by
tests/io/test_decode_limits.py and tests/io/test_http_input.py (planning, reading, decoding).
"""

import functools
import http.server
import threading

import pandas as pd
import pytest

from sgcore.config import JobConfig
from sgcore.pipeline import run_job
from tests.io.datasets import encode, rgb
from tests.io.test_decode_limits import thin_png

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

# The shipped demo CNN: the aspect limit refuses the thin PNG whatever the model's input size.
JOB = dict(model="demo", n_samples=2, batch_size=8, progress=False)


def _rows(out) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)


def test_the_thin_png_is_one_error_row_of_a_committed_shard(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(7):
        (root / f"img{i}.png").write_bytes(encode(rgb(i, (300, 200))))
    (root / "thin.png").write_bytes(thin_png())
    out = tmp_path / "out"
    result = run_job(JobConfig(input=str(root), output=str(out), shard_size=8, **JOB))
    df = _rows(out)
    assert (result.rows, result.ok, result.errors, result.shards_failed) == (8, 7, 1, 0) and result.success
    bad = df[df.status == "error"]
    assert bad.image_id.tolist() == ["thin.png"]
    assert bad.error.iloc[0] == f"image is 1x100000, an aspect ratio of 1e+05:1, over the limit of 100:1 ({root}/thin.png)"
    assert (out / "_SUCCESS").exists()


def test_an_http_index_page_runs_through_the_job(tmp_path):
    site = tmp_path / "www"
    names = ["cat/0.png", "cat/1.png", "dog/0.png"]
    for k, n in enumerate(names):
        (site / "imgs" / n).parent.mkdir(parents=True, exist_ok=True)
        (site / "imgs" / n).write_bytes(encode(rgb(k)))
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/imgs"
    try:
        out = tmp_path / "out"
        result = run_job(JobConfig(input=f"{base}/", output=str(out), shard_size=2, **JOB))
    finally:
        server.shutdown()
        server.server_close()
    df = _rows(out).sort_values("image_id")
    assert result.success and (result.rows, result.ok) == (3, 3)
    assert df.image_id.tolist() == names and df.source.tolist() == [f"{base}/{n}" for n in names]
    assert df.label.tolist() == ["cat", "cat", "dog"]
