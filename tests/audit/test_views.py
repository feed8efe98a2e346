"""Per-class view, localization helpers, map comparison and result reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sgcore.audit import (
    ClassView,
    box_mask,
    load_mask,
    localization_scores,
    map_change,
    map_statistics,
    open_results_dir,
    read_index,
    read_maps,
)
from sgcore.models import Preprocess
from sgcore.results import iter_parts
from tests.audit.job_output import GONE, write_results


def _spot(h: int, w: int, r: int, c: int) -> np.ndarray:
    m = np.zeros((h, w))
    m[r, c] = 1.0
    return m


def test_class_view_means_and_extremes() -> None:
    view = ClassView(examples=1, border_width=0.25)
    spread = np.ones((8, 8))
    peak = _spot(8, 8, 4, 4) * 10.0
    edge = _spot(8, 8, 0, 0)
    view.add(["a", "a", "b"], ["a/1", "a/2", "b/1"], np.stack([spread, peak, edge]))
    a, b = view.summaries()
    assert (a.name, a.count, b.name, b.count) == ("a", 2, "b", 1)
    # Unit-mass maps averaged: the peak image does not dominate because it is 10x larger.
    expected = (spread / 64 + _spot(8, 8, 4, 4)) / 2
    np.testing.assert_allclose(a.mean_map, expected, rtol=1e-6)
    assert a.most_concentrated[0][0] == "a/2" and a.least_concentrated[0][0] == "a/1"
    assert a.gini == pytest.approx((0.0 + (1 - 1 / 64)) / 2)
    assert b.border_share == pytest.approx(1.0)
    assert view.border_area(8, 8) == pytest.approx(48 / 64)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_small_classes_never_show_one_image_as_most_and_least_concentrated(count: int) -> None:
    view = ClassView(examples=3)
    maps = np.stack([_spot(8, 8, 4, 4) + 0.1 * k * np.ones((8, 8)) for k in range(count)])  # Gini falls with k
    view.add(["a"] * count, [f"a/{k}" for k in range(count)], maps)
    (a,) = view.summaries()
    most = [i for i, _, _ in a.most_concentrated]
    least = [i for i, _, _ in a.least_concentrated]
    assert not set(most) & set(least)
    assert len(most) + len(least) == min(count, 6) and len(most) >= len(least)
    assert most[0] == "a/0" and (count == 1 or least[0] == f"a/{count - 1}")


def test_class_view_errors() -> None:
    with pytest.raises(ValueError, match="examples must be a non-negative int; got -1"):
        ClassView(examples=-1)
    with pytest.raises(ValueError, match="labels, image_ids and maps must have the same length; got 1, 2 and 2"):
        ClassView().add(["a"], ["x", "y"], np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\); got \(4, 4\)"):
        map_statistics(np.ones((4, 4)))


def test_localization_scores_summary() -> None:
    mask = np.zeros((2, 6, 6), dtype=bool)
    mask[:, 1:4, 1:4] = True
    maps = np.stack([_spot(6, 6, 2, 2), np.ones((6, 6))])
    scores = localization_scores(maps, mask)
    np.testing.assert_allclose(scores.mass_in_mask, [1.0, 9 / 36])
    s = scores.summary()
    assert s["images"] == 2
    assert s["mass_in_mask"] == pytest.approx((1 + 0.25) / 2)
    assert s["mask_area"] == pytest.approx(0.25)
    assert s["pointing_game"] == pytest.approx(1.0)  # the uniform map's maxima include mask pixels


def test_box_mask() -> None:
    m = box_mask((1, 2, 3, 4), height=5, width=5)
    assert m.sum() == 4 and m[2:4, 1:3].all()
    with pytest.raises(ValueError, match=r"box must be \(x0, y0, x1, y1\) with x0 < x1 and y0 < y1; got \(3, 0, 1, 2\)"):
        box_mask((3, 0, 1, 2), height=5, width=5)


def test_load_mask_follows_the_image_geometry(tmp_path: Path) -> None:
    # A 40x60 mask, left half in: resized to 32x48 (shorter side 32), centre crop 32x32 from column 8.
    arr = np.zeros((40, 60), dtype=np.uint8)
    arr[:, :30] = 255
    Image.fromarray(arr, "L").save(tmp_path / "m.png")
    pre = Preprocess(resize_size=32, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    mask = load_mask(str(tmp_path / "m.png"), pre)
    assert mask.shape == (32, 32)
    # Resized boundary at column 24 of 48; after the crop at column 16.
    assert mask[:, :16].all() and not mask[:, 16:].any()


def test_map_change() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 12, 12))
    rho, s = map_change(a, a)
    np.testing.assert_allclose(rho, 1.0)
    np.testing.assert_allclose(s, 1.0)
    rho2, _ = map_change(a, rng.random((3, 12, 12)))
    assert np.all(np.abs(rho2) < 0.4)
    with pytest.raises(ValueError, match=r"maps must be \(N, H, W\) of one shape; got \(3, 12, 12\) and \(2, 12, 12\)"):
        map_change(a, a[:2])


def test_read_results(demo_results: Path) -> None:
    results = open_results_dir(str(demo_results))
    assert results.complete and len(results.parts) == 3
    assert results.preprocess.crop_size == 64
    index = read_index(results)
    assert index.num_rows == 24 and "saliency" not in index.column_names
    maps = read_maps(results, index, [5, 0, 17])
    by_part = np.concatenate([m for _, m in iter_parts(results)])
    np.testing.assert_array_equal(maps, by_part[[5, 0, 17]])
    assert maps.dtype == np.float32 and maps.shape == (3, 64, 64)


def test_npz_results_read_as_parquet_results(demo_root: Path, tmp_path: Path) -> None:
    """--format npz: the audit finds the maps in maps/part-<shard>.npz through sgcore.results."""
    kw = {"limit": 6, "n_samples": 1, "shard_size": 3}
    parquet = open_results_dir(str(write_results(tmp_path / "pq", demo_root / "images", **kw)))
    npz_dir = write_results(tmp_path / "npz", demo_root / "images", format="npz", **kw)
    npz = open_results_dir(str(npz_dir))
    assert sorted(p.name for p in (npz_dir / "maps").iterdir()) == ["part-00000.npz", "part-00001.npz"]
    a, b = read_index(parquet), read_index(npz)
    assert a.column("image_id").to_pylist() == b.column("image_id").to_pylist() and a.num_rows == 6
    maps = read_maps(npz, b, [4, 0, 3])
    assert maps.dtype == np.float32 and maps.shape == (3, 64, 64) and maps.any()
    np.testing.assert_array_equal(maps, read_maps(parquet, a, [4, 0, 3]))
    # The first part also holds the job's error row for the image that was gone; the audit leaves it out.
    raw = pq.read_table(npz.parts[0])
    assert raw.column("status").to_pylist().count("error") == 1 and GONE in raw.column("image_id").to_pylist()
    meta, part_maps = next(iter_parts(npz))
    assert GONE not in meta.column("image_id").to_pylist() and part_maps.shape == (3, 64, 64)
