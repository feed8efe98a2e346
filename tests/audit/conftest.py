"""Results directories written the way jobs.smoothgrad writes them, on the demo.

The rows are computed here with sgcore.smoothgrad on the shipped demo model
and encoded with sgcore.io.encode_part, so the audit reads exactly the
format the job writes, without running the Ray job itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sgcore import smoothgrad
from sgcore.attribution import reduce_channels
from sgcore.io import decode_image, encode_part, join, write_bytes
from sgcore.models import load_model
from sgcore.seeds import image_seed

N_SAMPLES = 8  # enough for the checks below on the 64 px demo, fast on 2 CPUs


def write_results(
    out: Path,
    images_root: Path,
    *,
    weights: str = "default",
    n_samples: int = N_SAMPLES,
    shard_size: int = 8,
    seed: int = 0,
) -> Path:
    """Computes maps for every image under ``images_root`` and writes a results dir."""
    loaded = load_model("demo", weights)
    pre = loaded.preprocess
    members = sorted(str(p.relative_to(images_root)) for p in images_root.rglob("*.png"))
    shards: dict[str, Any] = {}
    for s in range(0, len(members), shard_size):
        shard = f"{s // shard_size:05d}"
        chunk = members[s : s + shard_size]
        pixels, geos = zip(
            *(
                decode_image((images_root / m).read_bytes(), resize_size=pre.resize_size,
                             crop_size=pre.crop_size, interpolation=pre.interpolation)
                for m in chunk
            ),
            strict=True,
        )
        x = pre.normalize(torch.from_numpy(np.stack(pixels)))
        with torch.no_grad():
            probs = torch.softmax(loaded.model(x), dim=1)
        predicted = probs.argmax(dim=1)
        seeds = torch.tensor([image_seed(seed, m) for m in chunk], dtype=torch.int64)
        maps = reduce_channels(
            smoothgrad(loaded.model, x, predicted, n_samples=n_samples, noise_level=0.15, seeds=seeds)
        ).numpy()
        rows = []
        for i, m in enumerate(chunk):
            label = m.split("/")[0]
            p = int(predicted[i])
            rows.append(
                {
                    "image_id": m, "source": str(images_root / m), "shard": shard, "status": "ok",
                    "error": None, "label": label, "label_index": loaded.categories.index(label),
                    "target": p, "target_name": loaded.categories[p], "predicted": p,
                    "predicted_name": loaded.categories[p], "score": float(probs[i, p]),
                    "method": "smoothgrad", "base": "gradient", "noise_level": 0.15,
                    "n_samples": n_samples, "seed": int(seeds[i]), "saliency": maps[i].astype(np.float16),
                    "map_height": pre.crop_size, "map_width": pre.crop_size,
                    "orig_height": geos[i].orig_height, "orig_width": geos[i].orig_width,
                    "resized_height": geos[i].resized_height, "resized_width": geos[i].resized_width,
                    "crop_top": geos[i].crop_top, "crop_left": geos[i].crop_left,
                }
            )
        if s == 0:  # one failed row, as the job writes for a corrupt file
            rows.append({"image_id": "broken.png", "source": str(images_root / "broken.png"), "shard": shard,
                         "status": "error", "error": "not a recognised image format", "label": None,
                         "saliency": None, "map_height": pre.crop_size, "map_width": pre.crop_size})
        data, _ = encode_part(rows, map_shape=(pre.crop_size, pre.crop_size), metadata={"shard": shard})
        write_bytes(join(str(out), f"part-{shard}.parquet"), data)
        shards[shard] = {"status": "done", "rows": len(rows)}
    manifest = {
        "sgcore_version": "test",
        "config": {
            "input": str(images_root), "output": str(out), "model": "demo", "weights": weights,
            "image_size": None, "n_samples": n_samples, "noise_level": 0.15, "noise": "gaussian",
            "aggregate": "mean", "base": "gradient", "precision": "fp32", "seed": seed,
            "target": "predicted", "reduction": "abs_sum",
        },
        "config_hash": f"test-{weights}",
        "preprocess": pre.to_dict(),
        "shards": shards,
    }
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_text("")
    return out


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset: 6 images per class with masks, under root/images and root/masks."""
    from sgcore.demo import EVAL_SEED, generate_dataset

    root = tmp_path_factory.mktemp("demo")
    generate_dataset(root, n_per_class=6, seed=EVAL_SEED)
    return root


@pytest.fixture(scope="session")
def demo_results(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of the trained demo model on :func:`demo_root`."""
    return write_results(tmp_path_factory.mktemp("results"), demo_root / "images")


@pytest.fixture(scope="session")
def random_results(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results of an untrained demo model (random init) on the same images."""
    torch.manual_seed(0)  # DemoNet() draws its init from the global RNG
    return write_results(tmp_path_factory.mktemp("results_random"), demo_root / "images", weights="none",
                         n_samples=4)


# --------------------------------------------------------------------------- headless Chromium

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def _render(pages: list[Path], out: Path) -> tuple[list[dict[str, tuple[int, int]]], np.ndarray]:
    """Opens pages in headless Chromium as a user would.

    Returns, per page, ``{src: (width, height)}`` of its images ((0, 0) when
    an image failed to load), and the screenshot pixels of the first page.
    """
    from PIL import Image

    browser = _browser()
    assert browser is not None
    # A wrapper page frames each page and, once everything has loaded (the
    # window's load event waits for the frames), lists every <img> with its
    # decoded size.
    frames = "".join(f"<iframe src='{p.as_uri()}' width=1200 height=800></iframe>" for p in pages)
    probe = out / "probe.html"
    probe.write_text(
        f"<html><body>{frames}<pre id='r'></pre><script>window.addEventListener('load', () => {{"
        "const out = [...document.querySelectorAll('iframe')].map((f, k) => {"
        "const d = f.contentDocument;"
        "const rows = [...d.images].map(i => i.getAttribute('src') + ' ' + i.naturalWidth + 'x' + i.naturalHeight);"
        "return 'PAGE ' + k + ' IMAGES ' + d.images.length + ' TEXT ' + d.body.innerText.length + '\\n' + rows.join('\\n'); });"
        "document.getElementById('r').textContent = out.join('\\n'); });</script></body></html>"
    )
    flags = [*BROWSER_FLAGS, "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    found = re.search(r'<pre id="r">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    reports = found.group(1).split("PAGE ")[1:]
    assert len(reports) == len(pages), dom[-2000:]
    shot = out / "shot.png"
    subprocess.run([browser, *BROWSER_FLAGS, f"--screenshot={shot}", "--window-size=1200,2400", pages[0].as_uri()],
                   capture_output=True, timeout=120, check=True)
    return [image_sizes(r) for r in reports], np.asarray(Image.open(shot).convert("RGB"))


def image_sizes(report: str) -> dict[str, tuple[int, int]]:
    """``{src: (width, height)}`` from one page's report of :func:`_render`."""
    sizes = {}
    for line in report.splitlines()[1:]:
        if line.strip():
            src, _, size = line.strip().rpartition(" ")
            w, _, h = size.partition("x")
            sizes[src] = (int(w), int(h))
    return sizes



@pytest.fixture
def chromium(tmp_path: Path) -> Callable[[list[Path]], tuple[list[dict[str, tuple[int, int]]], np.ndarray]]:
    """Renders pages in a real headless Chromium; skips when none is installed."""
    if _browser() is None:
        pytest.skip("needs headless Chromium: apt-get install -y chromium")
    out = tmp_path / "chromium"
    out.mkdir()
    return lambda pages: _render(pages, out)
