"""sgcore.results: results as a pyarrow dataset, maps as numpy, overlays at the original size."""

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from PIL import Image

from sgcore.errors import InputError
from sgcore.io import (
    Manifest,
    Plan,
    ResultRow,
    ShardEntry,
    decode_image,
    encode_part,
    npz_url,
    part_url,
    write_bytes,
    write_manifest,
    write_success,
)
from sgcore.render import overlay
from sgcore.results import load_maps, open_results, part_files, table_maps
from tests.io.datasets import encode


def _square_image(h=90, w=120):
    """A black image with a white square at rows 30:60, cols 45:75."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[30:60, 45:75] = 255
    return encode(Image.fromarray(arr))


def _row(image_id, source, data, *, crop=32, full=False):
    arr, geo = decode_image(data, resize_size=crop, crop_size=crop)
    sal = arr[..., 0].astype(np.float32) / 255.0  # the map: bright where the square is
    row = ResultRow(image_id=image_id, source=source, shard="00000", status="ok",
                    map_height=crop, map_width=crop, saliency=sal,
                    **{k: getattr(geo, k) for k in ("orig_height", "orig_width", "resized_height",
                                                     "resized_width", "crop_top", "crop_left")})
    if full:
        row.saliency_full = np.stack([sal, sal / 2, sal / 4])
    return row


def _write_results(tmp_path, fmt="parquet", full=False):
    src = tmp_path / "in"
    src.mkdir()
    (src / "sq.png").write_bytes(_square_image())
    (src / "other.png").write_bytes(_square_image(60, 60))
    rows = [_row("sq.png", str(src / "sq.png"), _square_image(), full=full),
            _row("other.png", str(src / "other.png"), _square_image(60, 60), full=full),
            ResultRow(image_id="bad.png", source=str(src / "bad.png"), shard="00000",
                      status="error", error="cannot decode image", map_height=32, map_width=32)]
    out = str(tmp_path / "out")
    parquet, npz = encode_part(rows, map_shape=(32, 32), metadata={}, fmt=fmt,
                               channels=3 if full else None)
    if npz is not None:
        write_bytes(npz_url(out, "00000"), npz)
    write_bytes(part_url(out, "00000"), parquet)
    write_manifest(out, Manifest(config={"format": fmt}, config_hash="h", preprocess={}, status="complete",
                                 plan=Plan(shards=1, images=3, fingerprint="f"),
                                 shards={"00000": ShardEntry(images=3, first="sq.png", status="committed",
                                                             rows=3, ok=2, errors=1)}))
    write_success(out)
    return out, rows


def test_open_results_is_a_dataset_without_the_manifest(tmp_path):
    out, rows = _write_results(tmp_path)
    ds = open_results(out)
    assert ds.count_rows() == 3
    assert [f.rsplit("/", 1)[-1] for f in ds.files] == ["part-00000.parquet"]
    df = ds.to_table().to_pandas()
    assert list(df.status) == ["ok", "ok", "error"]


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_load_maps_in_both_formats_equal_the_written_maps(tmp_path, fmt):
    out, rows = _write_results(tmp_path, fmt=fmt, full=True)
    maps = load_maps(out)
    assert sorted(maps) == ["other.png", "sq.png"]
    np.testing.assert_allclose(maps["sq.png"], rows[0].saliency, atol=1e-3)  # float16 storage
    assert maps["sq.png"].dtype == np.float32
    full = load_maps(out, ["sq.png"], full=True)
    assert full["sq.png"].shape == (3, 32, 32)
    with pytest.raises(InputError, match=r"no map for image_id\(s\) \['bad.png'\]"):
        load_maps(out, ["bad.png"])


def test_load_maps_needs_store_full_for_full_maps(tmp_path):
    out, _ = _write_results(tmp_path)
    with pytest.raises(InputError, match="no 'saliency_full' column; was the job run with --store-full"):
        load_maps(out, full=True)
    with pytest.raises(InputError, match=r"no part-\*.parquet files under .*; is it a results directory"):
        open_results(str(tmp_path))


def test_overlay_lays_the_map_exactly_onto_the_original(tmp_path):
    out, _ = _write_results(tmp_path)
    df = open_results(out).to_table().to_pandas()
    row = df[df.image_id == "sq.png"].iloc[0]
    img = overlay(row, alpha=1.0, colorbar=False, crop_outline=False)
    assert img.size == (120, 90) and img.mode == "RGB"
    arr = np.asarray(img).astype(int)
    # Full heat (inferno's top, pale yellow) on the square; the black image alone elsewhere.
    assert (np.abs(arr[33:57, 48:72] - [252, 255, 164]) <= 16).all(axis=-1).mean() > 0.9
    ys, xs = np.nonzero(arr[..., 0] > 128)
    assert ys.min() >= 28 and ys.max() <= 61 and xs.min() >= 43 and xs.max() <= 76
    assert arr[:25].max() == 0 and arr[:, :40].max() == 0


def test_overlay_is_visible_on_a_photo_with_a_colour_bar_and_the_crop_outlined(tmp_path):
    """A textured photo-like image, a wide one (so the centre crop leaves sides out), a weak diffuse map
    with one stronger blob: the blob must stand out in colour, the crop must be outlined, a bar added."""
    from PIL import Image as PILImage

    gen = np.random.default_rng(0)
    photo = (gen.integers(60, 200, (60, 120, 3))).astype(np.uint8)  # grey-ish texture, 2:1 wide
    data = encode(PILImage.fromarray(photo))
    arr, geo = decode_image(data, resize_size=32, crop_size=32)
    m = gen.random((32, 32)).astype(np.float32) * 0.01  # speckle: what SmoothGrad gives on photos
    m[10:20, 10:20] += 0.05
    row = {"image_id": "p.png", "status": "ok", "map_height": 32, "map_width": 32, "saliency": m,
           **{k: getattr(geo, k) for k in ("orig_height", "orig_width", "resized_height", "resized_width",
                                            "crop_top", "crop_left")}}
    img = np.asarray(overlay(row, image=data)).astype(int)
    assert img.shape[0] == 60 and img.shape[1] > 120 + 10  # a colour bar on the right
    pic = img[:, :120]
    # The crop (cols 30..90 of the original) is outlined in cyan; outside it, grey only.
    cyan = (pic[..., 0] < 60) & (pic[..., 1] > 180) & (pic[..., 2] > 200)
    assert cyan[5:55, 28:33].all(axis=0).any() and cyan[5:55, 88:93].all(axis=0).any()
    assert not cyan[5:55, 40:80].any() and not cyan[:, :25].any()
    sat = pic.max(axis=-1) - pic.min(axis=-1)
    assert sat[5:55, 3:25].max() <= 2  # left of the crop: grey, no heat
    # The blob (map rows 10..20 -> original rows ~19..37, cols 30+19..30+37) is strongly coloured.
    assert sat[22:35, 52:66].mean() > 80 and pic[22:35, 52:66, 0].mean() > 150
    gray = np.asarray(overlay(row, image=data, view="gray", colorbar=False)).astype(int)
    assert gray.shape == (60, 120, 3) and (gray[..., 0] == gray[..., 2]).all()
    assert gray[22:35, 52:66].mean() > 3 * gray[5:15, 95:115].mean() + 1


def test_overlay_refuses_error_rows_and_bad_arguments(tmp_path):
    out, _ = _write_results(tmp_path)
    rows = {r["image_id"]: r for r in open_results(out).to_table().to_pylist()}
    with pytest.raises(ValueError, match=r"row 'bad.png' is an error row \(cannot decode image\)"):
        overlay(rows["bad.png"])
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 1.5"):
        overlay(rows["sq.png"], alpha=1.5)
    with pytest.raises(ValueError, match=r"image is 60x60 but the row says 120x90"):
        overlay(rows["sq.png"], image=Image.new("RGB", (60, 60)))
    no_map = {**rows["sq.png"], "saliency": None}
    with pytest.raises(ValueError, match=r"has no saliency; pass saliency="):
        overlay(no_map)
    assert overlay(no_map, saliency=np.ones((32, 32)), colorbar=False).size == (120, 90)
    with pytest.raises(ValueError, match="view must be one of heat, gray, diverging; got 'jet'"):
        overlay(rows["sq.png"], view="jet")


def test_overlay_reads_an_image_file_named_like_a_tar_member(tmp_path):
    import tarfile

    src = tmp_path / "in"
    src.mkdir()
    data = _square_image()
    (src / "x.tar#0.png").write_bytes(data)
    with tarfile.open(src / "x.tar", "w") as tar:  # a real tar of that name, without the member
        tar.add(src / "x.tar#0.png", arcname="other.png")
    row = _row("x.tar#0.png", str(src / "x.tar#0.png"), data)
    img = overlay(row, alpha=1.0, colorbar=False)
    assert img.size == (120, 90)
    assert np.asarray(img)[40, 60].min() > 140  # full heat (pale yellow) on the square, read from the file itself


def test_pandas_reads_the_directory_directly(tmp_path):
    out, _ = _write_results(tmp_path)
    df = pd.read_parquet(out)  # _manifest.json and _SUCCESS are skipped by their "_" prefix
    assert len(df) == 3 and df.saliency[0].reshape(32, 32).shape == (32, 32)


def test_part_files_lists_the_parts_sorted(tmp_path):
    out, _ = _write_results(tmp_path)
    write_bytes(part_url(out, "00002"), (tmp_path / "out" / "part-00000.parquet").read_bytes())
    assert part_files(out) == [part_url(out, "00000"), part_url(out, "00002")]
    with pytest.raises(InputError, match=r"no part-\*.parquet files under .*in; is it a results directory"):
        part_files(str(tmp_path / "in"))


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_table_maps_keep_the_row_order(tmp_path, fmt):
    out, rows = _write_results(tmp_path, fmt=fmt, full=True)
    table = open_results(out).to_table()
    ok = table.filter(pc.equal(table.column("status"), "ok")).take([1, 0])
    maps = table_maps(ok, out)
    assert maps.dtype == np.float32 and maps.shape == (2, 32, 32)
    np.testing.assert_allclose(maps[0], rows[1].saliency, atol=1e-3)
    np.testing.assert_allclose(maps[1], rows[0].saliency, atol=1e-3)
    assert table_maps(ok, out, full=True).shape == (2, 3, 32, 32)
    with pytest.raises(InputError, match="1 row\\(s\\) have no .*; select the status == 'ok' rows"):
        table_maps(table, out)
    if fmt == "npz":
        with pytest.raises(InputError, match="npz results: pass the results URL"):
            table_maps(ok)


def test_one_reader_for_the_directory_its_ok_rows_and_its_error_rows(tmp_path):
    from sgcore.io import GEOMETRY_COLUMNS, result_schema
    from sgcore.results import META_COLUMNS, open_results_dir, read_errors, read_index, read_maps

    out, rows = _write_results(tmp_path)
    results = open_results_dir(out)
    index = read_index(results)
    assert index.column("image_id").to_pylist() == ["sq.png", "other.png"]  # ok rows only
    np.testing.assert_allclose(read_maps(results, index, [0])[0], rows[0].saliency, atol=1e-3)
    assert read_errors(results) == [{"image_id": "bad.png", "source": str(tmp_path / "in" / "bad.png"),
                                     "error": "cannot decode image"}]
    # The geometry is the writer's: every geometry column of the schema, and the reader keeps them all.
    written = [n for n in result_schema((32, 32)).names if n.startswith(("map_", "orig_", "resized_", "crop_"))]
    assert sorted(GEOMETRY_COLUMNS) == sorted(written)
    assert set(GEOMETRY_COLUMNS) <= set(META_COLUMNS) and set(GEOMETRY_COLUMNS) <= set(index.column_names)
