"""Fixtures of the audit tests: demo data, results written by the job's code, headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.audit.job_output import write_results


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
