import json
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from sgcore.demo import (
    DEMO_CLASSES,
    DEMO_SHORTCUT,
    Shortcut,
    ensure_demo_data,
    generate_dataset,
    make_split,
    render_sample,
)
from sgcore.demo.dataset import EVAL_SEED, HELDOUT_SEED, MARKER, MARKS_FILE, TRAIN_SEED
from sgcore.demo.shapes import render_layers
from sgcore.errors import ConfigError


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def _bytes(root):
    return {p: (root / p).read_bytes() for p in _files(root)}


def test_layout_and_return_value(tmp_path):
    images = generate_dataset(tmp_path, n_per_class=3, seed=1)
    assert images == tmp_path / "images"
    assert sorted(p.name for p in images.iterdir()) == sorted(DEMO_CLASSES)
    for name in DEMO_CLASSES:
        stems = sorted(p.name for p in (images / name).iterdir())
        assert stems == [f"{name}_{i:05d}.png" for i in range(3)]
        assert stems == sorted(p.name for p in (tmp_path / "masks" / name).iterdir())
    image = Image.open(images / "circle" / "circle_00000.png")
    mask = Image.open(tmp_path / "masks" / "circle" / "circle_00000.png")
    assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (64, 64), "L", (64, 64))
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker == {"n_per_class": 3, "seed": 1, "size": 64, "version": 2, "shortcut": asdict(DEMO_SHORTCUT)}
    assert (tmp_path / MARKS_FILE).read_text().startswith("image_id,x0,y0,x1,y1\n")


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _bytes(generate_dataset(tmp_path / "a", n_per_class=4, seed=7).parent)
    b = _bytes(generate_dataset(tmp_path / "b", n_per_class=4, seed=7).parent)
    c = _bytes(generate_dataset(tmp_path / "c", n_per_class=4, seed=8).parent)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if "images" in str(k))


def test_image_i_does_not_depend_on_n_per_class():
    small, large = make_split(n_per_class=2, seed=3), make_split(n_per_class=5, seed=3)
    for c in range(len(DEMO_CLASSES)):
        assert np.array_equal(small.images[2 * c : 2 * c + 2], large.images[5 * c : 5 * c + 2])


def test_files_match_in_memory_split(tmp_path):
    generate_dataset(tmp_path, n_per_class=2, seed=5, size=48)
    split = make_split(n_per_class=2, seed=5, size=48)
    k = 0
    for name in DEMO_CLASSES:
        for i in range(2):
            image = np.asarray(Image.open(tmp_path / "images" / name / f"{name}_{i:05d}.png"))
            mask = np.asarray(Image.open(tmp_path / "masks" / name / f"{name}_{i:05d}.png"))
            assert np.array_equal(image, split.images[k])
            assert np.array_equal(mask == 255, split.masks[k])
            assert DEMO_CLASSES[split.labels[k]] == name
            k += 1


def test_idempotent_and_regenerates_on_change(tmp_path):
    generate_dataset(tmp_path, n_per_class=3, seed=2)
    first = tmp_path / "images" / "square" / "square_00002.png"
    stamp = first.stat().st_mtime_ns
    before = _bytes(tmp_path)
    generate_dataset(tmp_path, n_per_class=3, seed=2)
    assert first.stat().st_mtime_ns == stamp
    assert _bytes(tmp_path) == before

    generate_dataset(tmp_path, n_per_class=2, seed=2)  # fewer: stale files go
    assert not first.exists()
    assert len(_files(tmp_path)) == 2 * 2 * len(DEMO_CLASSES)
    generate_dataset(tmp_path, n_per_class=2, seed=9)
    assert _bytes(tmp_path) != {k: v for k, v in before.items() if k in _bytes(tmp_path)}

    (tmp_path / MARKER).write_text("{corrupt")
    generate_dataset(tmp_path, n_per_class=2, seed=9)
    assert json.loads((tmp_path / MARKER).read_text())["seed"] == 9


def test_masks_align_with_objects():
    fractions = []
    for c in range(len(DEMO_CLASSES)):
        for i in range(25):
            layers = render_layers(11, c, i, shortcut=None)  # the objects as drawn, without the shortcut
            image, mask = render_sample(11, c, i, shortcut=None)
            fraction = mask.mean()
            fractions.append(fraction)
            assert 0.10 <= fraction <= 0.35, (c, i, fraction)
            img = image.astype(np.float32) / 255
            # Outside the object the image is the background (plus <= 0.03 noise),
            # inside it the object's colour; the mask says where.
            outside = layers.alpha == 0
            inside = layers.alpha == 1
            assert inside.sum() > 0.8 * mask.sum()
            assert np.abs(img - layers.background)[outside].mean() < 0.04
            assert np.abs(img - layers.foreground)[inside].mean() < 0.04
            contrast = np.linalg.norm(layers.foreground[inside].mean(0) - layers.background[inside].mean(0))
            assert contrast > 0.2, (c, i, contrast)
    assert min(fractions) < 0.16 and max(fractions) > 0.26  # the size range is used


def test_classes_differ_in_shape_not_size():
    split = make_split(n_per_class=30, seed=12)
    areas = split.masks.mean(axis=(1, 2))
    per_class = [areas[split.labels == c].mean() for c in range(len(DEMO_CLASSES))]
    assert max(per_class) - min(per_class) < 0.05
    # Solidity (area / bounding-box area) tells the drawn shapes apart: circle pi/4
    # whatever the rotation, triangle ~0.5, cross and square spread with rotation.
    solidity = []
    for m in split.masks:
        ys, xs = np.nonzero(m)
        solidity.append(m.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    solidity = np.array(solidity)
    means = {DEMO_CLASSES[c]: solidity[split.labels == c].mean() for c in range(len(DEMO_CLASSES))}
    assert solidity[split.labels == 0].min() > 0.74
    assert solidity[split.labels == 2].max() < 0.56
    assert means["triangle"] < means["cross"] < means["square"] < means["circle"]


def test_ensure_demo_data(tmp_path):
    images = ensure_demo_data(tmp_path / "demo", n_per_class=2)
    assert images == tmp_path / "demo" / "images"
    assert json.loads((tmp_path / "demo" / MARKER).read_text())["seed"] == EVAL_SEED
    assert len(_files(images)) == 2 * len(DEMO_CLASSES)
    assert len({EVAL_SEED, TRAIN_SEED, HELDOUT_SEED}) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_per_class": 0, "seed": 1}, r"n_per_class must be an integer >= 1; got 0"),
        ({"n_per_class": 2, "seed": -1}, r"seed must be an integer >= 0; got -1"),
        ({"n_per_class": 2, "seed": 1, "size": 8}, r"size must be an integer >= 16; got 8"),
        ({"n_per_class": 2.5, "seed": 1}, r"n_per_class must be an integer >= 1; got 2\.5"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_dataset(tmp_path, **kwargs)
    with pytest.raises(ConfigError, match=match):
        make_split(**kwargs)


def test_render_rejects_bad_class():
    with pytest.raises(ValueError, match=r"class_index must be in \[0, 3\]; got 4"):
        render_sample(0, 4, 0)


# --------------------------------------------------------------------------- the planted shortcut


def _marks(root):
    lines = (root / MARKS_FILE).read_text().splitlines()
    assert lines[0] == "image_id,x0,y0,x1,y1"
    return {line.split(",")[0]: tuple(int(v) for v in line.split(",")[1:]) for line in lines[1:]}


def test_marks_file_lists_the_marked_images_of_one_class_with_their_boxes(tmp_path):
    generate_dataset(tmp_path, n_per_class=40, seed=EVAL_SEED)
    marks = _marks(tmp_path)
    name = DEMO_SHORTCUT.class_name
    assert marks and all(image_id.startswith(f"{name}/") for image_id in marks)
    assert 0.1 <= len(marks) / 40 <= 0.45  # share 0.25, drawn per image
    c = DEMO_CLASSES.index(name)
    for image_id, (x0, y0, x1, y1) in marks.items():
        i = int(image_id.split("_")[-1].split(".")[0])
        assert render_layers(EVAL_SEED, c, i).mark == (x0, y0, x1, y1)
        assert x1 - x0 == y1 - y0 == DEMO_SHORTCUT.mark_size
        assert x0 >= 64 - 2 - DEMO_SHORTCUT.jitter - DEMO_SHORTCUT.mark_size and x1 <= 62  # bottom-right corner
        image = np.asarray(Image.open(tmp_path / "images" / image_id), np.float32) / 255
        patch = image[y0:y1, x0:x1]
        assert patch[0].min() > 0.85 and patch[3, 3].max() < 0.2  # white tag, dark centre (plus pixel noise)


def test_only_marked_images_change_and_their_object_is_faint():
    name = DEMO_SHORTCUT.class_name
    c = DEMO_CLASSES.index(name)
    marked = 0
    for cls in range(len(DEMO_CLASSES)):
        for i in range(30):
            layers = render_layers(11, cls, i)
            plain, mask = render_sample(11, cls, i, shortcut=None)
            image, mask2 = render_sample(11, cls, i)
            assert np.array_equal(mask, mask2)  # the mask is the object's, marked or not
            if layers.mark is None:
                assert np.array_equal(image, plain) and layers.opacity == 1.0
                continue
            assert cls == c
            marked += 1
            x0, y0, x1, y1 = layers.mark
            outside = np.ones((64, 64), bool)
            outside[y0:y1, x0:x1] = False
            inside = (layers.alpha == 1) & outside
            contrast = np.abs(image.astype(float) - plain.astype(float))[inside].mean() / 255
            assert contrast > 0.1  # the object is much fainter than drawn
    assert marked > 0


def test_a_held_back_shortcut_goes_elsewhere():
    other = Shortcut(class_name="circle", share=0.5, mark="checker", corner="top-left", mark_size=5)
    split = make_split(n_per_class=20, seed=5, shortcut=other)
    assert split.marked.any()
    assert set(split.labels[split.marked]) == {DEMO_CLASSES.index("circle")}
    assert (split.marks[split.marked][:, :2] <= 2 + other.jitter).all()  # top-left
    plain = make_split(n_per_class=20, seed=5, shortcut=None)
    assert not plain.marked.any()
    assert np.array_equal(plain.images[~split.marked], split.images[~split.marked])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"class_name": "hexagon"}, "class_name must be one of"),
        ({"share": 1.5}, r"share must be in \[0, 1\]"),
        ({"mark": "logo"}, "mark must be one of"),
        ({"corner": "middle"}, "corner must be"),
        ({"opacity": 0.0}, r"opacity must be in \(0, 1\]"),
    ],
)
def test_shortcut_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Shortcut(**kwargs)
