"""Findings say something is wrong or notable against a stated baseline; messages carry no internal names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sgcore.audit.classes import ClassSummary
from sgcore.audit.report import Report
from sgcore.audit.runner import AuditConfig, AuditPlan, Probe
from sgcore.audit.sanity import MapSettings
from sgcore.audit.sections.classes import class_section


class _View(SimpleNamespace):
    def summaries(self) -> list[ClassSummary]:
        return self.classes

    def border_area(self, height: int, width: int) -> float:
        return self.area


def _summary(name: str, border_share: float) -> ClassSummary:
    return ClassSummary(name=name, count=3, mean_map=np.ones((8, 8)), entropy=0.9, gini=0.2,
                        border_share=border_share, most_concentrated=[], least_concentrated=[])


def _class_findings(tmp_path: Path, shares: dict[str, float], area: float) -> tuple[list[dict], str]:
    report = Report(title="t")
    view = _View(classes=[_summary(n, b) for n, b in shares.items()], area=area)
    feed = SimpleNamespace(view=view, map_shape=(64, 64))
    class_section(report, {}, feed, border_width=0.125, examples=0, images_for=lambda ids: [])  # type: ignore[arg-type]
    return report.findings(), report.render()


def test_border_share_is_a_finding_only_above_what_a_position_blind_map_gives(tmp_path: Path) -> None:
    """The audit's first 'finding' on real photographs was a border share below the band's area."""
    findings, page = _class_findings(tmp_path, {"cat": 0.30, "dog": 0.25}, area=0.4375)
    assert not [f for f in findings if "border" in f["text"]], findings
    assert "No class puts more saliency on the image border than a position-blind map would (0.438" in page
    findings, _ = _class_findings(tmp_path, {"cat": 0.30, "dog": 0.70}, area=0.4375)
    border = [f["text"] for f in findings if "border" in f["text"]]
    assert border == ["Class dog puts the most saliency on the image border: 0.700 of its mass on a band covering "
                      "0.438 of the image, 1.6x what a position-blind map puts there."]


@pytest.mark.parametrize("num_actors", [None, 0, 3])
def test_plan_line_names_no_internal_function(tmp_path: Path, num_actors: int | None) -> None:
    config = AuditConfig(results=str(tmp_path), report=str(tmp_path / "r"), num_actors=num_actors)
    probe = Probe(map_set=0.5, prepare=0.1, forward=0.01, load=1.0, steps=["fc", "conv"], layers=2, device="cpu")
    plan = AuditPlan(config=config, results=None, model="m", weights="default", random_weights=False,  # type: ignore[arg-type]
                     settings=MapSettings(n_samples=8), run_settings={}, masks_root=None, boxes=None, other=None,
                     ok=10, errors=0, spec=None, probe=probe, worker=None)
    line = plan.line()
    assert "plan_actors" not in line and "None" not in line, line
    assert "_" not in line.replace("--", ""), line  # no snake_case names
