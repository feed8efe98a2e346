"""Strategy clusters (SpRAy): features, graph, eigengap, flags, and the audit's outputs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from sgcore.audit.strategies import (
    StrategyConfig,
    describe_clusters,
    downsample,
    knn,
    map_features,
    region_shares,
    spray,
)
from sgcore.errors import ConfigError


def _blobs(n: int, *, share: float, seed: int, mark_at: tuple[int, int] | None, size: int = 64,
           mark_sigma: float = 2.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object-like maps (a Gaussian blob at a random place, plus noise); a share also has a mark.

    Returns maps ``(n, size, size)``, which carry the mark, and object masks (the blob's disc).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    marked = rng.random(n) < share
    for i in range(n):
        cx, cy = rng.uniform(14, size - 14, 2)
        r = rng.uniform(6, 11)
        masks[i] = (xx - cx) ** 2 + (yy - cy) ** 2 <= (1.5 * r) ** 2
        m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.5, 2.0)
        if marked[i] and mark_at is not None:
            mx, my = mark_at[0] + rng.integers(-2, 3), mark_at[1] + rng.integers(-2, 3)
            m = 0.3 * m + 3.0 * np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * mark_sigma**2))
        maps[i] = m + 0.2 * rng.random((size, size))
    return maps, marked, masks


def _flags(maps: np.ndarray, masks: np.ndarray | None = None, **kwargs) -> tuple[np.ndarray, list[dict]]:
    feats = map_features(maps, 16)
    result = spray(feats, **kwargs)
    mean_maps = [(feats[result.labels == c].astype(float) ** 2).mean(0).reshape(16, 16) for c in range(result.k)]
    extra = {}
    if masks is not None:
        mass = np.abs(maps)
        mio = (mass * masks).sum((1, 2)) / mass.sum((1, 2))
        extra = {"mass_in_object": [mio[result.labels == c].mean() for c in range(result.k)],
                 "object_area": [masks[result.labels == c].mean() for c in range(result.k)]}
    rows = describe_clusters(mean_maps, np.bincount(result.labels).tolist(), result.conductance.tolist(), **extra)
    flagged = np.isin(result.labels, [r["cluster"] for r in rows if r["flagged"]])
    return flagged, rows


def _recall_precision(flagged: np.ndarray, marked: np.ndarray) -> tuple[float, float]:
    hits = (flagged & marked).sum()
    return hits / max(marked.sum(), 1), hits / max(flagged.sum(), 1)


def test_features_are_the_root_of_unit_mass_area_averages() -> None:
    maps = np.random.default_rng(0).random((3, 64, 48)).astype(np.float32) - 0.5
    cells = downsample(maps, 16)
    assert cells.shape == (3, 16, 16)
    np.testing.assert_allclose(cells[1, 2, 3], np.abs(maps[1, 8:12, 9:12]).mean(), rtol=1e-5)
    feats = map_features(maps, 16)
    np.testing.assert_allclose((feats.astype(np.float64) ** 2).sum(1), 1.0, rtol=1e-5)
    # Scale does not matter (where, not how much); a map with no mass is uniform.
    np.testing.assert_allclose(map_features(7.0 * maps, 16), feats, rtol=1e-5)
    zero = map_features(np.zeros((1, 32, 32), np.float32), 16)
    np.testing.assert_allclose(zero, np.full((1, 256), 1 / 16), rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than the strategy resolution 16"):
        map_features(np.ones((1, 8, 8), np.float32), 16)


def test_exact_knn_matches_brute_force() -> None:
    x = np.random.default_rng(1).random((300, 16)).astype(np.float32)
    idx, dist, approx = knn(x, 6)
    assert not approx
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(np.argsort(d, 1)[:, :6], 1))
    np.testing.assert_allclose(dist, np.sort(d, 1)[:, :6], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # pynndescent's numba compilation takes over a minute on 2 CPUs
def test_approximate_knn_agrees_with_exact() -> None:
    x = np.random.default_rng(1).random((300, 16)).astype(np.float32)
    idx, _, _ = knn(x, 6)
    a_idx, a_dist, approx = knn(x, 6, exact_below=100)  # pynndescent
    assert approx and a_idx.shape == (300, 6) and not (a_idx == np.arange(300)[:, None]).any()
    overlap = np.mean([len(set(a) & set(e)) / 6 for a, e in zip(a_idx, idx, strict=True)])
    assert overlap > 0.9, overlap


def test_eigengap_finds_separated_groups_within_the_bound() -> None:
    rng = np.random.default_rng(2)
    centres = rng.random((3, 32)) * 4
    x = np.concatenate([c + 0.05 * rng.standard_normal((40, 32)) for c in centres]).astype(np.float32)
    result = spray(x, max_clusters=8)
    assert result.k == 3
    truth = np.repeat(np.arange(3), 40)
    for c in range(3):  # each cluster is one group
        assert len(set(truth[result.labels == c])) == 1
    assert spray(x, max_clusters=2).k == 2
    assert spray(x, max_clusters=1).k == 1
    assert np.array_equal(spray(x, seed=0).labels, result.labels)  # deterministic
    assert spray(x[:5]).k == 1  # too few to cluster


@pytest.mark.parametrize(
    ("share", "mark_at", "seed"),
    [
        (0.25, (55, 55), 3),  # like the demo: a quarter of a class, a bottom-right tag
        (0.12, (6, 8), 4),  # held back: fewer images, the top-left corner, a wider mark
    ],
)
def test_a_planted_mark_is_flagged(share: float, mark_at: tuple[int, int], seed: int) -> None:
    maps, marked, masks = _blobs(240, share=share, seed=seed, mark_at=mark_at)
    flagged, rows = _flags(maps, masks)
    recall, precision = _recall_precision(flagged, marked)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision, rows)
    reasons = " ".join(w for r in rows if r["flagged"] for w in r["why"])
    assert "corner" in reasons  # where the mark is, in words


def test_without_a_shortcut_nothing_is_flagged() -> None:
    maps, _, masks = _blobs(240, share=0.0, seed=5, mark_at=None)
    flagged, rows = _flags(maps, masks)
    assert not flagged.any(), [r["why"] for r in rows]


def _tag_maps(n: int, n_tagged: int, at: tuple[int, int], sigma: float, leak: float, seed: int,
              size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Maps of a model that reads a tag: on tagged images the saliency sits on the tag (the object
    faint), on the others on the object, plus ``leak`` times the tag's spot (a gradient map of a tag
    reader often looks at the tag's place on untagged images too)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps = np.empty((n, size, size), np.float32)
    tagged = np.zeros(n, bool)
    tagged[rng.choice(n, n_tagged, replace=False)] = True
    for i in range(n):
        cx, cy = rng.uniform(14, size - 14, 2)
        r = rng.uniform(6, 11)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.5, 2.0)
        mx, my = at[0] + rng.integers(-1, 2), at[1] + rng.integers(-1, 2)
        mark = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma**2))
        m = (0.05 * blob + 3.0 * mark) if tagged[i] else (blob + leak * mark)
        maps[i] = m + 0.02 * rng.random((size, size))
    return maps, tagged


def test_distinctness_is_one_for_a_separate_cluster_and_about_zero_for_a_random_one() -> None:
    """Conductance over what a random set of the cluster's size would lose, from one: a cluster with no
    edge out of it (conductance 0) reads 1, with two clusters as with more (it read 0.0 or NaN)."""
    r = 16
    a, b = np.full((r, r), 1.0), np.full((r, r), 1.0)
    rows = describe_clusters([a, b], [41, 17], [0.0, 0.0])
    assert [row["distinctness"] for row in rows] == [1.0, 1.0]
    rows = describe_clusters([a, b, a], [30, 20, 10], [1 - 30 / 60, 1 - 20 / 60, 1 - 10 / 60])
    assert [row["distinctness"] for row in rows] == pytest.approx([0.0, 0.0, 0.0])
    assert np.isnan(describe_clusters([a], [12], [0.0])[0]["distinctness"])  # a class's only cluster


def test_a_separate_cluster_on_a_small_spot_is_flagged_where_the_rest_also_looks_a_little() -> None:
    """The audit's missed case: 17 of 58 maps in a cluster with no edge out of it, their saliency on a
    small spot in the top-right corner where the class's other maps put a quarter as much."""
    r = 16
    rest = np.full((r, r), 1.0)
    rest[1:3, 13:15] = 30.0  # the others look at the tag's place too
    tag = np.full((r, r), 0.3)
    tag[1:3, 13:15] = 60.0
    rows = describe_clusters([rest, tag], [41, 17], [0.0, 0.0], class_name="disc")
    assert rows[1]["rest_on_spot"] > rows[1]["spot_mass"] / 4  # the plain spot rule does not fire
    why = " ".join(rows[1]["why"])
    assert rows[1]["flagged"] and not rows[0]["flagged"], rows
    assert "17 of 58 'disc' maps put 38% of their saliency in 0.8% of the image (top-right corner), where the class's other maps put 16%" in why
    assert "a separate cluster (conductance 0.00, distinctness 1.00)" in why
    # Not separate (as connected as a random set of its size): not flagged on that ground.
    rows = describe_clusters([rest, tag], [41, 17], [0.5, 0.2], class_name="disc")
    assert not rows[1]["flagged"], rows[1]["why"]
    # Separate but spread over the image: not flagged either.
    rows = describe_clusters([rest, np.full((r, r), 1.0) + np.eye(r)], [41, 17], [0.0, 0.0])
    assert not rows[1]["flagged"], rows[1]["why"]


def test_a_shortcut_split_over_two_clusters_is_flagged_in_both() -> None:
    """Each half of a split shortcut is measured against the class's other clusters' median, not the
    pooled rest (which holds the other half): a tiny CNN trained on tagged discs put 48% of one tagged
    cluster's saliency on 0.8% of the image, against 12% of the pooled rest (3.9x), and flagged nothing."""
    r = 16
    plain = np.full((r, r), 1.0)
    tag_a = np.full((r, r), 0.5)
    tag_a[1:3, 13:15] = 40.0
    tag_b = np.full((r, r), 0.8)
    tag_b[1:3, 13:15] = 80.0
    rows = describe_clusters([plain, plain, tag_a, tag_b], [12, 10, 7, 9], [0.2, 0.2, 0.15, 0.2])
    assert rows[2]["rest_on_spot"] > rows[2]["spot_mass"] / 4  # against the pooled rest: under 4x
    assert [row["flagged"] for row in rows] == [False, False, True, True], [row["why"] for row in rows]
    assert "the class's other clusters typically (median) put there" in rows[2]["why"][0]


@pytest.mark.parametrize(
    ("n", "n_tagged", "at", "sigma", "leak", "seed"),
    [
        (58, 17, (56, 7), 2.0, 3.0, 0),  # the missed case: top-right, 17 of 58, the others look there too
        (120, 20, (7, 56), 3.0, 3.0, 1),  # bottom-left, a wider spot
        (120, 20, (32, 4), 1.5, 2.0, 1),  # the top edge's middle, a small spot
        (120, 20, (6, 30), 4.0, 4.0, 1),  # the left edge, a wide spot the others look at more
        (58, 17, (56, 56), 2.5, 0.0, 0),  # bottom-right (the demo's corner), nothing on it elsewhere
    ],
)
def test_planted_tags_that_vary_in_position_and_size_are_flagged(
    n: int, n_tagged: int, at: tuple[int, int], sigma: float, leak: float, seed: int
) -> None:
    maps, tagged = _tag_maps(n, n_tagged, at, sigma, leak, seed)
    flagged, rows = _flags(maps)
    recall, precision = _recall_precision(flagged, tagged)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision, rows)


@pytest.mark.parametrize(("n", "seed"), [(58, 0), (58, 6), (120, 1), (120, 7), (240, 5)])
def test_separate_spot_rule_flags_nothing_without_a_tag(n: int, seed: int) -> None:
    maps, _ = _tag_maps(n, 0, (56, 7), 2.0, 0.0, seed)
    flagged, rows = _flags(maps)
    assert not flagged.any(), [r["why"] for r in rows]


def test_describe_clusters_states_each_flag_in_words() -> None:
    r = 16
    main = np.full((r, r), 1.0)
    spot = np.full((r, r), 0.2)
    spot[14:16, 14:16] = 60.0
    rows = describe_clusters([main, spot], [80, 20], [0.3, 0.01], mass_in_object=[0.5, 0.1],
                             object_area=[0.2, 0.2])
    assert not rows[0]["flagged"] and rows[0]["why"] == []
    why = " ".join(rows[1]["why"])
    assert rows[1]["flagged"] and rows[1]["spot_region"] == "bottom-right corner"
    assert "off the object: 10% of its saliency lies on the object" in why
    assert "bottom-right corner" in why
    assert rows[1]["share"] == pytest.approx(0.2)
    assert rows[1]["differs_from_main"] > 0.5 and rows[1]["gains_most"] == "bottom-right corner"
    assert sum(region_shares(main / main.sum()).values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"by": "target"}, "strategy_by must be 'predicted' or 'label'"),
        ({"max_clusters": 0}, "max_clusters must be an integer >= 1"),
        ({"resolution": 1}, "resolution must be an integer >= 2"),
        ({"neighbors": 1}, "neighbors must be an integer >= 2"),
    ],
)
def test_strategy_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StrategyConfig(**kwargs)


# --------------------------------------------------------------------------- in the audit


@pytest.fixture(scope="module")
def strategy_audit(demo_results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from sgcore.audit import AuditConfig, run_audit

    report = tmp_path_factory.mktemp("strategy_audit")
    config = AuditConfig(results=str(demo_results), report=str(report), sanity=False, faithfulness=False,
                         examples=1, num_actors=0)
    return run_audit(config, log=lambda m: None), report


def test_summary_and_per_image_csv_carry_the_strategies(strategy_audit: tuple[dict, Path]) -> None:
    summary, report = strategy_audit
    strategies = summary["strategies"]
    assert [c["name"] for c in strategies] == sorted(c["name"] for c in strategies)
    assert sum(c["images"] for c in strategies) == summary["images"]["ok"]
    for c in strategies:
        assert sum(k["images"] for k in c["clusters"]) == c["images"]
        assert sum(k["share"] for k in c["clusters"]) == pytest.approx(1.0)
        for k in c["clusters"]:
            assert {"cluster", "images", "share", "flagged", "why", "examples", "mass_in_object"} <= set(k)
    rows = list(csv.DictReader(io.StringIO((report / "per_image.csv").read_text())))
    assert rows and all(r["strategy"] != "" and r["strategy_flagged"] in ("True", "False") for r in rows)
    page = (report / "index.html").read_text()
    assert "Strategies (SpRAy clusters per class)" in page
    # The demo's 6 images per class are too few to cluster: one line says so, no cluster tables
    # ("kNN k=0"), no embedding figures.
    assert all(c["images"] < 10 for c in strategies)
    assert "Too few images to cluster (fewer than 10), no clusters: " + ", ".join(
        f"{c['name']} ({c['images']})" for c in strategies) + "." in page
    assert "kNN k=" not in page
    assert not any(p.name.startswith("strategies_") for p in (report / "img").iterdir())
    assert "No strategy cluster flagged" in page and not [f for f in summary["findings"] if "strateg" in f["text"]]


def test_audit_rejects_bad_strategy_settings(tmp_path: Path) -> None:
    from sgcore.audit import AuditConfig

    with pytest.raises(ConfigError, match="max_clusters must be an integer >= 1; got 0"):
        AuditConfig(results=str(tmp_path), report=str(tmp_path / "r"), max_strategies=0)
    with pytest.raises(ConfigError, match="strategy_by must be 'predicted' or 'label'"):
        AuditConfig(results=str(tmp_path), report=str(tmp_path / "r"), strategy_by="target")


@pytest.fixture(scope="module")
def shortcut_audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """The shipped demo model's results on 40 images per class of the demo's evaluation seed."""
    from sgcore.audit import AuditConfig, run_audit
    from sgcore.demo import EVAL_SEED, generate_dataset
    from tests.audit.job_output import write_results

    root = tmp_path_factory.mktemp("shortcut_demo")
    generate_dataset(root, n_per_class=40, seed=EVAL_SEED)
    results = write_results(tmp_path_factory.mktemp("shortcut_results"), root / "images", shard_size=64)
    report = tmp_path_factory.mktemp("shortcut_report")
    config = AuditConfig(results=str(results), report=str(report), sanity=False, faithfulness=False,
                         examples=1, num_actors=0)
    return run_audit(config, log=lambda m: None), report, root


def test_the_demo_shortcut_is_flagged(shortcut_audit: tuple[dict, Path, Path]) -> None:
    """At least 80 % of the marked images in flagged clusters of their class, 80 % of those marked."""
    from sgcore.demo import DEMO_SHORTCUT

    summary, report, root = shortcut_audit
    marked = {line.split(",")[0] for line in (root / "marks.csv").read_text().splitlines()[1:]}
    rows = list(csv.DictReader(io.StringIO((report / "per_image.csv").read_text())))
    name = DEMO_SHORTCUT.class_name
    flagged = {r["image_id"] for r in rows if r["strategy_flagged"] == "True" and r["strategy_class"] == name}
    hits = len(flagged & marked)
    assert len(marked) >= 8
    assert hits >= 0.8 * len(marked) and hits >= 0.8 * len(flagged), (len(marked), len(flagged), hits)
    others = [k for c in summary["strategies"] if c["name"] != name for k in c["clusters"] if k["flagged"]]
    assert not others, others
    page = (report / "index.html").read_text()
    assert "1 flagged cluster(s)" in page and "bottom-right corner" in page
    assert (report / "img" / f"strategy_{name}_{next(k['cluster'] for c in summary['strategies'] if c['name'] == name for k in c['clusters'] if k['flagged'])}.png").is_file()


def test_strategy_report_renders_in_chromium(shortcut_audit: tuple[dict, Path, Path], chromium) -> None:  # noqa: ANN001
    """The flagged cluster's images are on the page a browser shows, reachable from its top."""
    _, report, _ = shortcut_audit
    (sizes,), pixels = chromium([report / "index.html"])
    strategy_figures = {src: wh for src, wh in sizes.items() if "strateg" in src}
    assert strategy_figures and all(w > 50 and h > 50 for w, h in strategy_figures.values()), sizes
    page = (report / "index.html").read_text()
    top = page[: page.index("<section")]
    assert "flagged cluster(s)" in top  # the first screen names and links the finding
    assert (pixels < 240).any(axis=2).mean() > 0.02


def test_ray_tasks_give_the_in_process_clusters(shortcut_audit: tuple[dict, Path, Path], ray_local: None) -> None:
    """Per-part features in the object store and per-class clustering tasks on Ray = the same work in this process."""
    from sgcore.audit.scan import scan
    from sgcore.audit.sections.strategies import StrategyFeed, strategy_classes
    from sgcore.audit.strategies import StrategyConfig
    from sgcore.results import open_results_dir, read_index

    summary, _, _ = shortcut_audit
    results = open_results_dir(summary["results"])
    index = read_index(results)
    assert len(results.parts) >= 2  # the shuffle from parts to classes is exercised
    on_ray, here = StrategyFeed(StrategyConfig(), on_ray=True), StrategyFeed(StrategyConfig(), on_ray=False)
    scan(results, [on_ray, here])
    assert sorted(on_ray.blocks) == strategy_classes(index, "predicted")
    for a, b in zip(on_ray.cluster(), here.cluster(), strict=True):
        assert a.name == b.name and a.image_ids == b.image_ids
        np.testing.assert_array_equal(a.spray.labels, b.spray.labels)
    by_label = strategy_classes(index, "label")
    assert by_label == sorted(by_label) and len(by_label) == 4
