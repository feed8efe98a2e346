"""The real-model demo: a trained ImageNet classifier explained over real photographs, offline.

:func:`write_photos` writes the photographs that scikit-image and scikit-learn
ship inside their wheels (no download) into a folder; :func:`run_photo_demo`
runs the job on them with EfficientNet-Lite0
(:mod:`sgcore.models.zoo.efficientnet_lite0`), draws each map over its photo
(:func:`sgcore.render.write_overlays`) and writes ``index.html``, a page of the
overlays with the predicted class names. ``make demo-real`` and
``python -m jobs.photos`` run it.
"""

from __future__ import annotations

import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sgcore.errors import ConfigError

PHOTOS_DATA = "data/photos"
PHOTOS_OUTPUT = "outputs/photos"
PHOTOS_N_SAMPLES = 16


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")

    return load


# name -> (loader, where it comes from). skimage.data.cat() is chelsea again, so it is not repeated.
PHOTOS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "chelsea": (_skimage("chelsea"), "skimage.data.chelsea(): a tabby cat"),
    "coffee": (_skimage("coffee"), "skimage.data.coffee(): a cup of coffee"),
    "rocket": (_skimage("rocket"), "skimage.data.rocket(): a rocket on its launch pad"),
    "astronaut": (_skimage("astronaut"), "skimage.data.astronaut(): Eileen Collins, portrait"),
    "motorcycle": (_skimage("motorcycle"), "skimage.data.stereo_motorcycle()[0]: a motorcycle"),
    "china": (_sklearn("china"), "sklearn load_sample_image('china.jpg'): a temple"),
    "flower": (_sklearn("flower"), "sklearn load_sample_image('flower.jpg'): a flower"),
}


def _check_names(names: Sequence[str] | None) -> list[str]:
    chosen = list(PHOTOS) if not names else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in PHOTOS]
    if unknown:
        raise ConfigError(f"unknown photo(s) {', '.join(unknown)}; choose from {', '.join(PHOTOS)}")
    return chosen


def write_photos(root: str | Path, names: Sequence[str] | None = None) -> list[Path]:
    """Writes the chosen photographs as ``root/<name>.png`` (RGB); rewrites only what changed.

    Args:
        root: a local folder (created).
        names: keys of :data:`PHOTOS`; None: all of them.

    Returns:
        The files, in the order of ``names``.

    Raises:
        ConfigError: an unknown name.
        ImportError: scikit-image or scikit-learn is missing (the message gives the fix).
    """
    chosen = _check_names(names)
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in chosen:
        try:
            pixels = PHOTOS[name][0]()
        except ImportError as e:
            raise ImportError(f"the photo {name!r} comes from {e.name or 'a library'}, which is missing: "
                              "pip install scikit-image scikit-learn") from e
        buf = io.BytesIO()
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB").save(buf, format="PNG")
        path = folder / f"{name}.png"
        if not path.exists() or path.read_bytes() != buf.getvalue():
            path.write_bytes(buf.getvalue())
        written.append(path)
    return written


@dataclass(frozen=True, kw_only=True)
class PhotoDemo:
    """What :func:`run_photo_demo` made.

    Attributes:
        results: the job's output directory.
        index: the HTML page of the overlays.
        rows: per photo: ``image_id``, ``predicted``, ``predicted_name``, ``score``,
            ``reliability``, ``overlay`` (the PNG's name beside the page).
        seconds: wall time of the whole demo (photos, job, pictures).
        job: the job's summary line (images, rate, what was resumed).
    """

    results: str
    index: Path
    rows: list[dict[str, Any]]
    seconds: float
    job: str

    def summary(self) -> str:
        """One line per photo: its id and the class the model sees."""
        return "\n".join(f"  {r['image_id']:<16} {r['predicted_name']} (class {r['predicted']}, "
                         f"p = {r['score']:.2f}, reliability {_fmt(r['reliability'])})" for r in self.rows)


def run_photo_demo(
    *,
    data: str = PHOTOS_DATA,
    output: str = PHOTOS_OUTPUT,
    photos: Sequence[str] | None = None,
    n_samples: int = PHOTOS_N_SAMPLES,
    num_actors: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PhotoDemo:
    """Photos -> SmoothGrad job with EfficientNet-Lite0 -> heat overlays -> ``index.html``.

    Args:
        data: folder the photographs are written to (the job's ``--input``).
        output: folder for ``maps/`` (the job's output), ``overlays/`` and ``index.html``.
        photos: keys of :data:`PHOTOS`; None: all of them.
        n_samples: SmoothGrad's n (noisy samples per map).
        num_actors: model replicas (None: the job's default).
        overwrite: replace earlier maps (needed to rerun with another n or other photos).
        progress: print the job's progress line.

    Raises:
        ImportError: ``sgcore[real]`` is not installed (the message gives the fix).
        ConfigError: bad settings, or earlier maps made with other settings (pass ``overwrite``).
    """
    from sgcore.config import JobConfig
    from sgcore.models.zoo.efficientnet_lite0 import SPEC, weights_path
    from sgcore.pipeline import run_job
    from sgcore.render import write_overlays
    from sgcore.results import open_results

    start = time.perf_counter()
    chosen = _check_names(photos)
    weights_path()  # the missing extra is one line here, before Ray starts
    files = write_photos(data, chosen)
    out = Path(output)
    maps = str(out / "maps")
    config = JobConfig(input=str(Path(data)), output=maps, model=SPEC, n_samples=n_samples,
                       num_actors=num_actors, overwrite=overwrite, progress=progress)
    result = run_job(config)
    if not result.success or result.errors:
        raise ConfigError(f"the photo demo's job did not finish cleanly: {result.summary()}")
    ids = [f.name for f in files]
    table = open_results(maps).to_table(columns=["image_id", "status", "predicted", "predicted_name", "score",
                                                 "reliability"])
    by_id = {r["image_id"]: r for r in table.to_pylist()}
    missing = [i for i in ids if i not in by_id]
    if missing:  # the folder holds other files than these photos (an earlier, larger run)
        raise ConfigError(f"{maps} has no rows for {', '.join(missing)}; rerun with overwrite")
    overlays = write_overlays(maps, str(out / "overlays"), image_ids=ids, view="heat")
    rows = []
    for image_id, url in zip(ids, overlays, strict=True):
        r = by_id[image_id]
        rows.append({"image_id": image_id, "predicted": r["predicted"], "predicted_name": r["predicted_name"],
                     "score": r["score"], "reliability": r["reliability"],
                     "overlay": f"overlays/{Path(url).name}"})
    index = out / "index.html"
    index.write_text(_page(rows, n_samples))
    return PhotoDemo(results=maps, index=index, rows=rows, seconds=time.perf_counter() - start,
                     job=result.summary())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _page(rows: list[dict[str, Any]], n_samples: int) -> str:
    def described(image_id: str) -> str:
        return PHOTOS.get(Path(image_id).stem, (None, image_id))[1]

    cells = "\n".join(
        f'<figure><a href="{html.escape(r["overlay"])}"><img src="{html.escape(r["overlay"])}" '
        f'alt="{html.escape(r["image_id"])}"></a><figcaption><b>{html.escape(str(r["predicted_name"]))}</b> '
        f'(class {r["predicted"]}, p = {r["score"]:.2f}, reliability {_fmt(r["reliability"])})<br>'
        f'<small>{html.escape(described(r["image_id"]))}</small></figcaption></figure>'
        for r in rows)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sgcore: SmoothGrad on EfficientNet-Lite0</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1400px}}
figure{{display:inline-block;vertical-align:top;margin:0 1em 1.5em 0;width:420px}}
img{{width:420px}}figcaption{{font-size:0.95em}}</style></head><body>
<h1>SmoothGrad on a trained ImageNet classifier</h1>
<p>EfficientNet-Lite0 (ImageNet-1k) explains the class it predicts for each photograph.
SmoothGrad (Smilkov et al. 2017), gradient base, n = {n_samples} noisy samples at noise level 0.15:
bright (yellow) where a small change of the pixel moves the predicted class's logit most, clipped at the
map's 99th percentile; the photo is dimmed grey beneath, and the cyan box is the model's 224-pixel
centre crop (outside it there is no map). The reliability is each map's own Monte Carlo estimate of
its Spearman correlation with the converged map (n &rarr; &infin;); it grows with n.</p>
{cells}
</body></html>
"""


__all__ = ["PHOTOS", "PHOTOS_DATA", "PHOTOS_N_SAMPLES", "PHOTOS_OUTPUT", "PhotoDemo", "run_photo_demo",
           "write_photos"]
