"""The HTML report: encoding, and rendering in a real headless Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgcore.audit import plots
from sgcore.audit.report import Report, write_report
from tests.pictures import assert_picture


def _demo_report() -> tuple[Report, dict]:
    r = Report(title="Test <report>", subtitle="a & b")
    s = r.section("Numbers")
    s.text("Some <b>text</b> that must be escaped.")
    s.table([{"name": "circle", "value": 0.5, "missing": None}, {"name": "square", "value": float("nan")}])
    grid = np.random.default_rng(0).random((3, 16, 16))
    s.figure("maps", plots.map_grid(list(grid), ["a", "b", "c"]), "three maps")
    steps = [{"layer": "fc", "spearman_abs": 0.4, "spearman_signed": 0.1, "ssim": 0.3},
             {"layer": "conv", "spearman_abs": 0.1, "spearman_signed": 0.0, "ssim": 0.1}]
    r.section("Sanity").figure("sanity", plots.sanity_curve(steps), "curve")
    return r, {"value": np.float32(0.5), "nan": float("nan"), "list": [np.int64(3)]}


def test_report_files_and_escaping() -> None:
    r, summary = _demo_report()
    files = r.files(summary)
    assert set(files) == {"index.html", "summary.json", "img/maps.png", "img/sanity.png"}
    page = files["index.html"].decode()
    assert "Some &lt;b&gt;text&lt;/b&gt;" in page and "<b>text" not in page
    assert "<title>Test &lt;report&gt;</title>" in page
    assert '<img src="img/maps.png"' in page and '<img src="img/sanity.png"' in page
    assert "<td>0.500</td>" in page and "<td>nan</td>" in page
    assert json.loads(files["summary.json"]) == {"value": 0.5, "nan": None, "list": [3]}
    for name in ("img/maps.png", "img/sanity.png"):
        assert_picture(files[name])


def test_figure_errors() -> None:
    s = Report(title="t").section("s")
    with pytest.raises(ValueError, match=r"figure name must be letters, digits, '_', '.' or '-'; got '../x'"):
        s.figure("../x", b"\x89PNG", "c")
    with pytest.raises(ValueError, match=r"figure 'x' must be PNG bytes; got b'GIF89a'"):
        s.figure("x", b"GIF89a", "c")


def test_attachment_errors() -> None:
    with pytest.raises(ValueError, match="attachment name must be a plain file name; got 'summary.json'"):
        Report(title="t").attach("summary.json", b"{}")


def test_write_report_to_memory_filesystem(memory_root) -> None:
    r, summary = _demo_report()
    out = memory_root.join("reports/r1")
    written = write_report(out, r, summary)
    assert written[0] == f"{out}/index.html"
    html = memory_root.fs.cat_file(memory_root.path("reports/r1/index.html")).decode()
    assert 'src="img/maps.png"' in html and "Test &lt;report&gt;" in html
    assert json.loads(memory_root.fs.cat_file(memory_root.path("reports/r1/summary.json")))["list"] == [3]
    # the figure is a real picture of the three maps, not an empty canvas
    png = assert_picture(memory_root.fs.cat_file(memory_root.path("reports/r1/img/maps.png")), min_levels=50)
    assert png.width > png.height  # three maps side by side


def test_display_scales_by_the_99th_percentile() -> None:
    """The paper's view: |m| over its 99th percentile, clipped to [0, 1] (sgcore.clip_percentile)."""
    m = np.random.default_rng(1).normal(size=(20, 30))
    mag = np.abs(m)
    expected = np.clip(mag / np.percentile(mag, 99), 0, 1)
    np.testing.assert_allclose(plots.display(m), expected, rtol=1e-5)
    assert plots.display(m).max() == 1.0 and (plots.display(m) == 1.0).sum() >= 6  # the top 1 % of 600 clip
    np.testing.assert_array_equal(plots.display(np.zeros((4, 4))), np.zeros((4, 4)))


def test_sections_have_anchors_and_their_findings_lead_the_page() -> None:
    r = Report(title="t")
    r.overview.append(("Model", "resnet18, weights none"))
    a = r.section("Per-class view", id="classes")
    a.finding("Class cat looks at the border.")
    r.section("Sanity check: cascading model-parameter randomization").finding("Maps change.")
    assert [s.id for s in r.sections] == ["classes", "sanity-check-cascading-model-parameter-r"]
    assert r.findings()[0] == {"section": "classes", "title": "Per-class view", "text": "Class cat looks at the border."}
    page = r.render()
    assert page.index("What was audited") < page.index('id="findings"') < page.index('<section id="classes">')
    assert '<a href="#classes">Per-class view &rarr;</a>' in page
    with pytest.raises(ValueError, match="section id 'classes' is used twice"):
        r.section("Again", id="classes")
    with pytest.raises(ValueError, match="section id must be letters, digits, '_' or '-'; got 'a b'"):
        r.section("x", id="a b")
