"""Localization against object boxes (``--boxes FILE``) instead of masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import audit as audit_job
from sgcore.audit import AuditConfig, boxes_to_map_mask, load_mask, read_boxes, run_audit
from sgcore.errors import ConfigError, InputError
from sgcore.io import decode_image
from sgcore.models import load_model

# Original 100 (h) x 200 (w); shorter side resized to 50 -> 50 x 100; centre crop 40 x 40 -> top 5, left 30.
GEO = {"orig_height": 100, "orig_width": 200, "resized_height": 50, "resized_width": 100,
       "crop_top": 5, "crop_left": 30, "map_height": 40, "map_width": 40}


def test_boxes_to_map_mask_hand_computed() -> None:
    # (70, 20, 130, 60) -> resized x 35..65, y 10..30 -> map cols 5..35, rows 5..25.
    m = boxes_to_map_mask([(70, 20, 130, 60)], **GEO)
    expected = np.zeros((40, 40), bool)
    expected[5:25, 5:35] = True
    np.testing.assert_array_equal(m, expected)
    # Partly outside the crop: (0, 0, 80, 30) -> resized x 0..40, y 0..15 -> map cols -30..10, rows -5..10.
    # Fractional: (61, 71, 63, 75) -> resized x 30.5..31.5, y 35.5..37.5 -> map cols 0.5..1.5, rows 30.5..32.5;
    # pixels whose footprint overlaps the box are in (cols 0-1, rows 30-32).
    # Wholly outside (left of the crop): (0, 20, 40, 60) -> map rows 5..25 but cols -30..-10: no pixels.
    m = boxes_to_map_mask(np.array([(70, 20, 130, 60), (0, 0, 80, 30), (61, 71, 63, 75), (0, 20, 40, 60)]), **GEO)
    expected[0:10, 0:10] = True
    expected[30:33, 0:2] = True
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 20 * 30 + 100 - 5 * 5 + 3 * 2  # the first two overlap on rows 5-9, cols 5-9
    assert not boxes_to_map_mask([(0, 20, 40, 60)], **GEO).any()
    # 7 * 58 / 14 is 29.000000000000004 in floating point: still 29 pixels, not 30.
    tiny = {**GEO, "orig_height": 14, "orig_width": 14, "resized_height": 58, "resized_width": 58,
            "crop_top": 0, "crop_left": 0, "map_height": 58, "map_width": 58}
    assert boxes_to_map_mask([(0, 0, 7, 7)], **tiny).sum() == 29 * 29
    with pytest.raises(ValueError, match="resized_width must be a positive integer; got 0"):
        boxes_to_map_mask([(0, 0, 1, 1)], **{**GEO, "resized_width": 0})


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_boxes_agree_with_masks_through_a_real_resize_and_crop(demo_root: Path, tmp_path: Path) -> None:
    """A mask's bounding box, drawn in map geometry, holds the mask brought there by load_mask."""
    pre = load_model("demo", "none").preprocess
    for k, mask_path in enumerate(sorted((demo_root / "masks").rglob("*.png"))[:8]):
        # Stretch to a non-square size so that resize and crop both move things (resize 80 -> 64, crop left > 0).
        size = (96 + 8 * k, 80)
        mask = Image.open(mask_path).convert("L").resize(size, Image.NEAREST)
        mask.save(tmp_path / "m.png")
        arr = np.asarray(mask) > 127
        _, geo = decode_image((tmp_path / "m.png").read_bytes(), resize_size=pre.resize_size,
                              crop_size=pre.crop_size, interpolation="nearest")
        assert geo.crop_left > 0 and geo.resized_height != geo.orig_height
        boxed = boxes_to_map_mask([_bbox(arr)], **vars(geo), map_height=pre.crop_size, map_width=pre.crop_size)
        truth = load_mask(str(tmp_path / "m.png"), pre)
        assert truth.any() and not (truth & ~boxed).any()  # the box holds the mask
        # ... and is its bounding box up to a pixel of rounding on each side.
        assert np.abs(np.array(_bbox(boxed)) - np.array(_bbox(truth))).max() <= 1


def _write_boxes(path: Path, rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "x0", "y0", "x1", "y1"])
        w.writerows(rows)
    return path


def _demo_boxes(demo_root: Path) -> list[tuple]:
    """One row per image: the bounding box of its demo mask (original pixels)."""
    rows = []
    for p in sorted((demo_root / "masks").rglob("*.png")):
        rows.append((str(p.relative_to(demo_root / "masks")), *_bbox(np.asarray(Image.open(p).convert("L")) > 127)))
    return rows


def _audit(results: Path, report: Path, **kw: object) -> dict:
    config = AuditConfig(results=str(results), report=str(report), sanity=False, faithfulness=False,
                         examples=0, num_actors=0, **kw)
    return run_audit(config, log=lambda m: None)


def test_audit_with_boxes_end_to_end(demo_root: Path, demo_results: Path, tmp_path: Path) -> None:
    rows = _demo_boxes(demo_root)
    assert len(rows) == 24
    # Two images left out; one split into two halves (same union); one id the results do not have.
    image_id, x0, y0, x1, y1 = rows[2]
    mid = (x0 + x1) // 2
    halves = [(image_id, x0, y0, mid, y1), (image_id, mid, y0, x1, y1)]
    rows = [rows[0], *halves, *rows[3:-1], ("nowhere/none.png", 0, 0, 5, 5)]  # rows[1] and rows[-1] left out
    boxes = _write_boxes(tmp_path / "boxes.csv", rows)
    by_box = _audit(demo_results, tmp_path / "boxes", boxes=str(boxes))
    loc = by_box["localization"]
    assert loc["ground_truth"] == "boxes" and loc["boxes"] == str(boxes)
    assert loc["images"] == 22 and loc["missing_boxes"] == 2
    assert loc["boxes_without_result"] == 1 and loc["boxes_outside_map"] == 0
    # The trained model's maps favour the box well above its share of the image.
    assert loc["mass_in_mask"] > 1.5 * loc["mask_area"]
    assert 0.1 < loc["mask_area"] < 0.5

    # Against the masks: a box holds its mask, so per image more area and at least as much mass.
    by_mask = _audit(demo_results, tmp_path / "masks", masks=str(demo_root / "masks"))
    assert by_mask["localization"]["ground_truth"] == "masks"

    def per_image(report: Path) -> dict[str, dict[str, str]]:
        return {r["image_id"]: r for r in csv.DictReader((report / "per_image.csv").open())}

    box_rows, mask_rows = per_image(tmp_path / "boxes"), per_image(tmp_path / "masks")
    scored = [i for i, r in box_rows.items() if r["mass_in_mask"]]
    assert len(scored) == 22
    for i in scored:
        assert float(box_rows[i]["mask_area"]) >= float(mask_rows[i]["mask_area"])
        assert float(box_rows[i]["mass_in_mask"]) >= float(mask_rows[i]["mass_in_mask"]) - 1e-6
    assert loc["mask_area"] > by_mask["localization"]["mask_area"]
    assert "Saliency mass inside the object boxes" in (tmp_path / "boxes" / "index.html").read_text()

    # Parquet reads the same.
    pq.write_table(pa.table({"image_id": [r[0] for r in rows], **{
        c: [float(r[k + 1]) for r in rows] for k, c in enumerate(("x0", "y0", "x1", "y1"))}}), tmp_path / "b.parquet")
    again = _audit(demo_results, tmp_path / "parquet", boxes=str(tmp_path / "b.parquet"))["localization"]
    assert again["mass_in_mask"] == pytest.approx(loc["mass_in_mask"])


def test_audit_job_boxes_flag(demo_root: Path, demo_results: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    rows = _demo_boxes(demo_root)
    rows[-1] = (rows[-1][0], 70, 0, 80, 10)  # right of the 64 x 64 image: outside the map, left out
    boxes = _write_boxes(tmp_path / "boxes.csv", rows)
    args = ["--results", str(demo_results), "--no-sanity", "--no-faithfulness", "--examples", "0",
            "--num-actors", "0"]
    assert audit_job.main([*args, "--report", str(tmp_path / "r"), "--boxes", str(boxes)]) == 0
    loc = json.loads((tmp_path / "r" / "summary.json").read_text())["localization"]
    assert loc["images"] == 23 and loc["missing_boxes"] == 0 and loc["boxes_outside_map"] == 1
    assert audit_job.main([*args, "--report", str(tmp_path / "r2"), "--boxes", str(tmp_path / "nope.csv")]) == 2
    assert f"boxes file {tmp_path / 'nope.csv'} does not exist" in capsys.readouterr().err


def test_boxes_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError, match=r"boxes file .*nope.csv does not exist; pass --boxes a CSV or Parquet "
                                         r"file with columns image_id, x0, y0, x1, y1"):
        read_boxes(str(missing))
    (tmp_path / "cols.csv").write_text("image_id,left,top,right,bottom\na.png,0,0,1,1\n")
    with pytest.raises(InputError, match=r"boxes file .*cols.csv must have columns image_id, x0, y0, x1, y1; "
                                         r"got \['image_id', 'left', 'top', 'right', 'bottom'\]"):
        read_boxes(str(tmp_path / "cols.csv"))
    _write_boxes(tmp_path / "flat.csv", [("a.png", 0, 0, 4, 4), ("b.png", 5, 1, 5, 3)])
    with pytest.raises(InputError, match=r"boxes file .*flat.csv: data row 2 \(image_id 'b.png'\) has x0, y0, x1, y1 "
                                         r"= \(5.0, 1.0, 5.0, 3.0\); a box needs x0 < x1 and y0 < y1"):
        read_boxes(str(tmp_path / "flat.csv"))
    (tmp_path / "text.csv").write_text("image_id,x0,y0,x1,y1\na.png,0,0,wide,4\n")
    with pytest.raises(InputError, match=r"boxes file .*text.csv: x0, y0, x1, y1 must be numbers"):
        read_boxes(str(tmp_path / "text.csv"))
    (tmp_path / "hole.csv").write_text("image_id,x0,y0,x1,y1\na.png,0,0,,4\n")
    with pytest.raises(InputError, match=r"boxes file .*hole.csv: column x1 has 1 empty value\(s\)"):
        read_boxes(str(tmp_path / "hole.csv"))
    (tmp_path / "empty.csv").write_text("image_id,x0,y0,x1,y1\n")
    with pytest.raises(InputError, match=r"boxes file .*empty.csv has no rows"):
        read_boxes(str(tmp_path / "empty.csv"))
    # Numeric ids stay strings; two rows of one image are both kept.
    (tmp_path / "ok.csv").write_text("image_id,x0,y0,x1,y1\n0007,0,0,2,2\n0007,3,3,4.5,4\n")
    assert read_boxes(str(tmp_path / "ok.csv"))["0007"].tolist() == [[0, 0, 2, 2], [3, 3, 4.5, 4]]
    with pytest.raises(ConfigError, match=r"pass either masks \(--masks\) or boxes \(--boxes\)"):
        AuditConfig(results="r", report="o", masks="m", boxes="b.csv")
    with pytest.raises(ConfigError, match="boxes must be a non-empty URL or path of a CSV/Parquet file; got ''"):
        AuditConfig(results="r", report="o", boxes="")


def test_bad_boxes_fail_before_any_work(demo_results: Path, tmp_path: Path) -> None:
    _write_boxes(tmp_path / "flat.csv", [("circle/circle_00000.png", 3, 1, 2, 3)])
    with pytest.raises(InputError, match=r"flat.csv: data row 1 \(image_id 'circle/circle_00000.png'\)"):
        _audit(demo_results, tmp_path / "r", boxes=str(tmp_path / "flat.csv"))
    assert not (tmp_path / "r").exists()
