"""python -m jobs.render: overlay PNGs and contact sheets of chosen images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.render import main
from tests.audit.job_output import GONE


def test_render_writes_one_overlay_per_image(demo_results: Path, tmp_path: Path) -> None:
    assert main(["--results", str(demo_results), "--out", str(tmp_path), "--limit", "3"]) == 0
    pngs = sorted(tmp_path.glob("*.heat.png"))
    assert len(pngs) == 3
    img = np.asarray(Image.open(pngs[0]).convert("RGB")).astype(int)
    assert img.shape[0] == 64 and img.shape[1] > 64  # the demo's 64 px image, plus a colour bar
    sat = img[:, :64].max(axis=-1) - img[:, :64].min(axis=-1)
    assert (sat > 60).mean() > 0.02  # the heat is visible, not faint specks


def test_render_contact_sheet_for_chosen_ids(demo_results: Path, tmp_path: Path) -> None:
    from sgcore.results import open_results

    ids = open_results(str(demo_results)).to_table(columns=["image_id"]).column("image_id").to_pylist()[:2]
    assert main(["--results", str(demo_results), "--out", str(tmp_path), "--ids", *ids, "--sheet",
                 "--view", "gray"]) == 0
    sheet = Image.open(tmp_path / "sheet.gray.png")
    assert sheet.height >= 256 and sheet.width >= 2 * 256
    assert list(tmp_path.iterdir()) == [tmp_path / "sheet.gray.png"]


@pytest.mark.parametrize(("ids", "message"), [
    ([GONE], r"--ids \['gone.png'\] are error rows without a map \("),
    (["nope.png"], r"--ids \['nope.png'\] are not in .*image ids look like"),
])
def test_render_refuses_error_rows_and_unknown_ids(demo_results: Path, tmp_path: Path, ids: list[str],
                                                   message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--results", str(demo_results), "--out", str(tmp_path), "--ids", *ids]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err)
