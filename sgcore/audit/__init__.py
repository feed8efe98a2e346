"""Audits over written results: metrics, sanity checks, faithfulness,
localization, parameter sweeps, model comparison and an HTML report.

Importing it starts no Ray and imports no matplotlib; the runners do that
when called.
"""

from sgcore.audit.classes import ClassSummary, ClassView, map_statistics
from sgcore.audit.compare import ImageChange, class_changes, compare_results, map_change
from sgcore.audit.faithfulness import (
    FaithfulnessResult,
    blur,
    deletion_insertion,
    perturbation_curve,
    random_order,
    saliency_order,
)
from sgcore.audit.localization import (
    LocalizationScores,
    box_mask,
    boxes_to_map_mask,
    localization_scores,
)
from sgcore.audit.metrics import (
    auc,
    border_mask,
    border_share,
    entropy,
    gini,
    mask_area,
    mass_in_mask,
    minmax,
    pointing_game,
    rankdata,
    spearman,
    ssim,
)
from sgcore.audit.report import Report, Section, write_report
from sgcore.audit.results import load_images, load_mask, read_boxes
from sgcore.audit.runner import AuditConfig, run_audit
from sgcore.audit.sanity import (
    MapSettings,
    SanityResult,
    cascading_randomization,
    randomization_order,
    randomize_layer,
)
from sgcore.audit.sweep import Convergence, SweepGrid, convergence, sweep_grid
from sgcore.audit.sweep_runner import SweepConfig, run_sweep
from sgcore.results import Results, iter_parts, open_results_dir, read_index, read_maps

__all__ = [
    "AuditConfig",
    "ClassSummary",
    "ClassView",
    "Convergence",
    "FaithfulnessResult",
    "ImageChange",
    "LocalizationScores",
    "MapSettings",
    "Report",
    "Results",
    "SanityResult",
    "Section",
    "SweepConfig",
    "SweepGrid",
    "auc",
    "blur",
    "border_mask",
    "border_share",
    "box_mask",
    "boxes_to_map_mask",
    "cascading_randomization",
    "class_changes",
    "compare_results",
    "convergence",
    "deletion_insertion",
    "entropy",
    "gini",
    "iter_parts",
    "load_images",
    "load_mask",
    "localization_scores",
    "map_change",
    "map_statistics",
    "mask_area",
    "mass_in_mask",
    "minmax",
    "open_results_dir",
    "perturbation_curve",
    "pointing_game",
    "random_order",
    "randomization_order",
    "randomize_layer",
    "rankdata",
    "read_boxes",
    "read_index",
    "read_maps",
    "run_audit",
    "run_sweep",
    "saliency_order",
    "spearman",
    "ssim",
    "sweep_grid",
    "write_report",
]
