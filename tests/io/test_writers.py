import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgcore.io import (
    PART_METADATA_KEY,
    ResultRow,
    encode_part,
    read_part_metadata,
    result_schema,
    write_bytes,
)


def _rows():
    ok = ResultRow(image_id="a", source="/d/a.png", shard="00000", status="ok", label="cat", target=3,
                   predicted=3, score=0.9, method="smoothgrad", base="gradient", noise_level=0.15,
                   n_samples=8, seed=42, map_height=4, map_width=5,
                   saliency=np.arange(20, dtype=np.float32).reshape(4, 5))
    bad = ResultRow(image_id="b", source="/d/b.png", shard="00000", status="error", error="boom",
                    map_height=4, map_width=5)
    return [ok, bad]


def test_the_row_type_declares_every_column_of_the_schema_in_order():
    columns = [n for n in result_schema((4, 5)).names if n != "saliency"]
    declared = [f for f in ResultRow.__dataclass_fields__ if f not in ("saliency", "saliency_full")]
    assert declared == columns
    # a row that names no column it does not have: a misspelt field is an error, not a silent null
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_sample'"):
        ResultRow(image_id="a", source="s", n_sample=8)
    with pytest.raises(AttributeError):
        ResultRow(image_id="a", source="s").n_sample = 8  # slots: no stray attributes


def test_failing_a_row_drops_its_map():
    row = _rows()[0]
    assert row.ok
    row.fail("saliency map has NaN/Inf values")
    assert (row.ok, row.status, row.error, row.saliency) == (False, "error", "saliency map has NaN/Inf values", None)


def test_parquet_part_round_trips_with_pyarrow_and_pandas():
    data, npz = encode_part(_rows(), map_shape=(4, 5), metadata={"config_hash": "abc"})
    assert npz is None
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.field("saliency").type == pa.fixed_shape_tensor(pa.float16(), [4, 5])
    maps = table.filter(pa.compute.equal(table["status"], "ok"))["saliency"].combine_chunks()
    np.testing.assert_array_equal(maps.to_numpy_ndarray()[0], np.arange(20).reshape(4, 5))
    # an error row holds zeros, never a null: numpy conversions (Ray Data's too) need no filter first
    assert table["saliency"].null_count == 0
    assert not table["saliency"].combine_chunks().to_numpy_ndarray()[1].any()
    assert json.loads(table.schema.metadata[PART_METADATA_KEY]) == {"config_hash": "abc"}
    df = pd.read_parquet(io.BytesIO(data))
    assert list(df.status) == ["ok", "error"] and df.error[1] == "boom"
    assert df.saliency[0].reshape(df.map_height[0], df.map_width[0])[3, 4] == 19


def test_npz_format_puts_maps_beside_the_rows():
    data, npz = encode_part(_rows(), map_shape=(4, 5), metadata={}, fmt="npz")
    table = pq.read_table(io.BytesIO(data))
    assert "saliency" not in table.column_names
    assert table["map_key"].to_pylist() == ["a", None]
    maps = np.load(io.BytesIO(npz))
    assert maps["a"].dtype == np.float16 and maps["a"].shape == (4, 5)


def test_map_of_wrong_shape_is_refused():
    rows = _rows()
    rows[0].saliency = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"map 0 must have shape \(4, 5\); got \(3, 3\)"):
        encode_part(rows, map_shape=(4, 5), metadata={})


def test_write_is_atomic_and_metadata_readable(tmp_path):
    data, _ = encode_part(_rows(), map_shape=(4, 5), metadata={"config_hash": "h1", "rows": 2})
    url = str(tmp_path / "out" / "part-00000.parquet")
    write_bytes(url, data)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-00000.parquet"]
    assert read_part_metadata(url) == {"config_hash": "h1", "rows": 2}
    assert read_part_metadata(str(tmp_path / "missing.parquet")) is None
