"""Saliency maps as pictures a person can read (numpy + PIL; no matplotlib).

Three views:

- ``"gray"``: the authors' view (Smilkov et al. 2017, Fig. 1): ``|map|``
  with values above its 99th percentile clipped, black to white.
- ``"diverging"``: a signed map (``--reduction sum``), clipped at the 99th
  percentile of ``|map|``, blue (negative) - white (0) - red (positive).
- ``"heat"``: the map over the image: the photo in dimmed grey so that the
  colour is the map's alone, an inferno-like ramp whose opacity grows with
  the (clipped) map, a colour bar, and the model's centre crop outlined on
  the original image (outside it there is no map).

:func:`overlay` draws a result row with these; the audit's report and
``python -m jobs.render`` use them too. This module sits above
:mod:`sgcore.results` (it reads result rows), which never imports it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont, ImageOps

from sgcore.errors import InputError
from sgcore.io import GEOMETRY_COLUMNS, join, read_source, write_bytes
from sgcore.io.decode import _to_rgb
from sgcore.results import open_results, table_maps

VIEWS = ("heat", "gray", "diverging")

# The geometry beyond the map's own size: where the crop sits on the original image.
_PLACEMENT = tuple(c for c in GEOMETRY_COLUMNS if c not in ("map_height", "map_width"))

# Control points of perceptual ramps (matplotlib's inferno and RdBu_r, sampled).
_INFERNO = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)
_DIVERGING = np.array([[5, 48, 97], [33, 102, 172], [146, 197, 222], [247, 247, 247],
                       [244, 165, 130], [178, 24, 43], [103, 0, 31]], np.float32)


def clip_scale(saliency: np.ndarray, q: float = 99.0, *, signed: bool = False,
               top: float | None = None) -> tuple[np.ndarray, float]:
    """``|m|`` (or ``m``) divided by the ``q``-th percentile of ``|m|`` and clipped to [0, 1] ([-1, 1]).

    Args:
        top: use this value instead of the percentile (to share one scale between views).

    Returns:
        The scaled map and the percentile (the value shown as 1 on a colour bar).
    """
    m = np.asarray(saliency, dtype=np.float32)
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100]; got {q}")
    if top is None:
        top = float(np.percentile(np.abs(m), q)) if m.size else 0.0
    if top <= 0:
        top = float(np.abs(m).max(initial=0.0))
    if top <= 0:
        return np.zeros_like(m), 0.0
    scaled = (m if signed else np.abs(m)) / top
    return np.clip(scaled, -1.0 if signed else 0.0, 1.0), top


def colormap(x: np.ndarray, name: str = "inferno") -> np.ndarray:
    """Values in [0, 1] (``"inferno"``) or [-1, 1] (``"diverging"``) -> RGB uint8 ``(..., 3)``."""
    points = {"inferno": _INFERNO, "diverging": _DIVERGING}.get(name)
    if points is None:
        raise ValueError(f"colormap must be inferno or diverging; got {name!r}")
    t = np.asarray(x, dtype=np.float32)
    if name == "diverging":
        t = (t + 1.0) / 2.0
    t = np.clip(t, 0.0, 1.0) * (len(points) - 1)
    lo = np.floor(t).astype(int).clip(0, len(points) - 2)
    frac = (t - lo)[..., None]
    return (points[lo] * (1 - frac) + points[lo + 1] * frac).round().astype(np.uint8)


def map_view(saliency: np.ndarray, view: str = "gray", *, q: float = 99.0, top: float | None = None) -> np.ndarray:
    """The map alone as RGB ``(H, W, 3)`` uint8: ``"gray"`` or ``"diverging"`` (see the module doc)."""
    if view == "gray":
        scaled, _ = clip_scale(saliency, q, top=top)
        grey = (scaled * 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if view == "diverging":
        scaled, _ = clip_scale(saliency, q, signed=True, top=top)
        return colormap(scaled, "diverging")
    raise ValueError(f"view must be gray or diverging for a map alone; got {view!r}")


def heat_blend(image: np.ndarray, saliency: np.ndarray, *, alpha: float = 0.75, q: float = 99.0,
               where: np.ndarray | None = None, dim: float = 0.55, top: float | None = None) -> tuple[np.ndarray, float]:
    """The clipped ``|map|`` in inferno over the image in dimmed grey, same size.

    Args:
        image: ``(H, W, 3)`` RGB.
        saliency: ``(H, W)`` map (at the image's size).
        alpha: opacity where the map reaches its 99th percentile.
        q: the clipping percentile.
        where: ``(H, W)`` in [0, 1]: where the map exists (0: the grey image alone).
        dim: brightness of the grey image (so that the colours stand out).
        top: the value shown as full heat; None: the ``q``-th percentile of the map where it exists.

    Returns:
        ``(H, W, 3)`` uint8, and the value shown as full heat (the percentile).
    """
    pixels = np.asarray(image, dtype=np.float32)
    m = np.asarray(saliency, dtype=np.float32)
    if pixels.shape != (*m.shape, 3):
        raise ValueError(f"image must be (H, W, 3) with the map's (H, W) {m.shape}; got {pixels.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if top is None:
        inside = m if where is None else m[np.asarray(where) > 0.5]
        _, top = clip_scale(inside if inside.size else m, q)
    norm = np.clip(np.abs(m) / top, 0, 1) if top > 0 else np.zeros_like(m)
    grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    base = np.repeat((grey * dim)[..., None], 3, axis=-1)
    # Opacity rises fast (sqrt) so that mid-strength regions show, not only the peaks.
    weight = alpha * np.sqrt(norm) * (1.0 if where is None else np.asarray(where, np.float32))
    out = base * (1 - weight[..., None]) + colormap(norm).astype(np.float32) * weight[..., None]
    return out.clip(0, 255).astype(np.uint8), top


def outline(image: np.ndarray, box: tuple[int, int, int, int], *, width: int | None = None) -> np.ndarray:
    """``image`` with the rectangle ``(left, top, right, bottom)`` drawn (a light line on a dark one)."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    w = width or max(2, round(min(img.size) / 150))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(0, 0, 0), width=w + 2)
    draw.rectangle([left + 1, top + 1, right - 2, bottom - 2], outline=(0, 230, 255), width=w)
    return np.asarray(img)


def with_colorbar(image: np.ndarray, top: float, *, view: str = "heat") -> np.ndarray:
    """``image`` with a vertical colour bar on its right: 0 (or -p99) to the 99th-percentile value."""
    h = image.shape[0]
    bar_w = max(14, h // 25)
    pad = max(6, h // 60)
    font = _font(max(10, h // 28))
    ticks = ([f"{top:.3g}", f"{top / 2:.3g}", "0"] if view != "diverging"
             else [f"+{top:.3g}", "0", f"-{top:.3g}"])
    text_w = max(_text_width(font, t) for t in ticks) + pad
    canvas = Image.new("RGB", (image.shape[1] + 2 * pad + bar_w + text_w, h), (255, 255, 255))
    canvas.paste(Image.fromarray(np.asarray(image, dtype=np.uint8)), (0, 0))
    ramp = np.linspace(1, 0 if view != "diverging" else -1, max(2, h - 2 * pad), dtype=np.float32)
    if view == "gray":
        colours = np.repeat((np.clip(ramp, 0, 1) * 255).astype(np.uint8)[:, None], 3, axis=-1)
    else:
        colours = colormap(ramp, "diverging" if view == "diverging" else "inferno")
    bar = np.repeat(colours[:, None, :], bar_w, axis=1)
    x0 = image.shape[1] + pad
    canvas.paste(Image.fromarray(bar), (x0, pad))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 - 1, pad - 1, x0 + bar_w, pad + bar.shape[0]], outline=(80, 80, 80))
    for k, t in enumerate(ticks):
        y = pad + k * (bar.shape[0] - 1) / (len(ticks) - 1)
        draw.text((x0 + bar_w + 4, y), t, fill=(20, 20, 20), font=font, anchor="lm")
    return np.asarray(canvas)


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], *, columns: int = 4,
                  tile_height: int = 256) -> Image.Image:
    """Tiles (RGB arrays of any size) in a grid, each scaled to ``tile_height`` with a caption below."""
    if len(tiles) != len(captions):
        raise ValueError(f"tiles and captions must match; got {len(tiles)} and {len(captions)}")
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    font = _font(max(11, tile_height // 18))
    scaled = []
    for t in tiles:
        img = Image.fromarray(np.asarray(t, dtype=np.uint8))
        w = max(1, round(img.width * tile_height / img.height))
        scaled.append(img.resize((w, tile_height), Image.Resampling.LANCZOS))
    cols = max(1, min(columns, len(scaled)))
    rows = (len(scaled) + cols - 1) // cols
    cell_w = max(s.width for s in scaled) + 12
    cap_h = font.size + 10 if hasattr(font, "size") else 24
    sheet = Image.new("RGB", (cols * cell_w, rows * (tile_height + cap_h + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (img, cap) in enumerate(zip(scaled, captions, strict=True)):
        r, c = divmod(k, cols)
        x, y = c * cell_w + 6, r * (tile_height + cap_h + 12) + 6
        sheet.paste(img, (x, y))
        draw.text((x, y + tile_height + 4), _fit(draw, cap, font, cell_w - 12), fill=(20, 20, 20), font=font)
    return sheet


def overlay(
    row: Mapping[str, Any] | Any,
    *,
    saliency: np.ndarray | None = None,
    image: Image.Image | bytes | None = None,
    view: str = "heat",
    alpha: float = 0.75,
    colorbar: bool = True,
    crop_outline: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> Image.Image:
    """The row's map drawn at its original image's size, in one of :data:`VIEWS`.

    The geometry columns say where the map sits: map pixel (r, c) covers resized
    pixel (r + crop_top, c + crop_left), and the resized image scales back onto
    the original by ``orig / resized``. Areas outside the centre crop have no
    map: ``"heat"`` shows the image alone there (in grey) and outlines the crop.

    Views: ``"heat"``, the map's clipped magnitude in
    inferno over the dimmed grey photo; ``"gray"``, the authors' 99th-percentile
    clipped grayscale map; ``"diverging"``, a signed map blue-white-red.

    Args:
        row: one result row (a dict, a pandas Series or a ``pyarrow`` row dict)
            with ``source``, ``saliency`` (unless given), ``map_height``,
            ``map_width`` and the geometry columns.
        saliency: the ``(H, W)`` map, when the row does not hold it (npz results).
        image: the original image (or its bytes), else read from ``source``.
        view: ``"heat"``, ``"gray"`` or ``"diverging"``.
        alpha: opacity of the heat where the map reaches its 99th percentile.
        colorbar: add a colour bar on the right (the picture grows by its width).
        crop_outline: outline the centre crop the model saw (``"heat"``).
        storage_options: fsspec options for reading ``source``.

    Returns:
        An RGB :class:`PIL.Image.Image`: (orig_width [+ colour bar], orig_height).

    Raises:
        ValueError: an error row, a missing map or geometry, a bad view, or ``alpha`` out of [0, 1].
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    if get("status") not in (None, "ok"):
        raise ValueError(f"row {get('image_id')!r} is an error row ({get('error')}); it has no map")
    geo = {k: get(k) for k in _PLACEMENT}
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in geo.values()):
        raise ValueError(f"row {get('image_id')!r} lacks the geometry columns {', '.join(_PLACEMENT)}")
    geo = {k: int(v) for k, v in geo.items()}
    h, w = int(get("map_height")), int(get("map_width"))
    m = saliency if saliency is not None else get("saliency")
    if m is None:
        raise ValueError(f"row {get('image_id')!r} has no saliency; pass saliency= (npz results)")
    m = np.asarray(m, dtype=np.float32).reshape(h, w)

    if image is None:
        image = read_source(str(get("source")), storage_options)
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as img:
            img.load()
            base = _to_rgb(ImageOps.exif_transpose(img))
    else:
        base = _to_rgb(image)
    if base.size != (geo["orig_width"], geo["orig_height"]):
        raise ValueError(
            f"image is {base.size[0]}x{base.size[1]} but the row says "
            f"{geo['orig_width']}x{geo['orig_height']}; wrong image for {get('image_id')!r}?"
        )

    # Map -> resized canvas (0 outside the crop) -> original size.
    canvas = np.zeros((geo["resized_height"], geo["resized_width"]), np.float32)
    cover = np.zeros_like(canvas)
    t, left = geo["crop_top"], geo["crop_left"]
    r0, c0 = max(t, 0), max(left, 0)
    r1, c1 = min(t + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if r1 > r0 and c1 > c0:
        canvas[r0:r1, c0:c1] = m[r0 - t : r1 - t, c0 - left : c1 - left]
        cover[r0:r1, c0:c1] = 1.0
    size = (geo["orig_width"], geo["orig_height"])
    heat = np.asarray(Image.fromarray(canvas, mode="F").resize(size, Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(cover, mode="F").resize(size, Image.Resampling.NEAREST))
    # The scale is the stored map's (not the resampled one's), the same in every view.
    _, top = clip_scale(m)
    if view == "heat":
        out, top = heat_blend(np.asarray(base), heat, alpha=alpha, where=mask, top=top)
        if crop_outline and r1 > r0 and c1 > c0:
            sy, sx = geo["orig_height"] / geo["resized_height"], geo["orig_width"] / geo["resized_width"]
            box = (round(c0 * sx), round(r0 * sy), round(c1 * sx), round(r1 * sy))
            if box != (0, 0, *size):  # a crop that is the whole image needs no outline
                out = outline(out, box)
    else:
        out = map_view(heat, view, top=top)
    if colorbar:
        out = with_colorbar(out, top, view=view)
    return Image.fromarray(out, mode="RGB")


def write_overlays(
    results: str,
    out: str,
    *,
    image_ids: Sequence[str] | None = None,
    limit: int | None = None,
    view: str = "heat",
    sheet: bool = False,
    columns: int = 4,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Overlay PNGs (or one contact sheet) of chosen images of a results directory.

    Args:
        results: the job's ``--output``.
        out: folder the PNGs go to: ``<image_id with / as __>.<view>.png``, or ``sheet.<view>.png``.
        image_ids: these images (each must be an ok row); None: the first ``limit`` ok rows.
        limit: how many ok rows when no ids are given (None: 16).
        view: one of :data:`VIEWS`.
        sheet: one contact sheet instead of one PNG per image.
        columns: columns of the contact sheet.
        storage_options: fsspec options for the results, the images and ``out``.

    Returns:
        The URLs written.

    Raises:
        InputError: unknown ids, error rows among them, or no ok row.
    """
    if view not in VIEWS:
        raise InputError(f"--view must be one of {', '.join(VIEWS)}; got {view!r}")
    ds = open_results(results, storage_options)
    table = ds.to_table()
    ids = table.column("image_id").to_pylist()
    status = dict(zip(ids, table.column("status").to_pylist(), strict=True))
    if image_ids:
        unknown = [i for i in image_ids if i not in status]
        if unknown:
            raise InputError(f"--ids {unknown[:5]} are not in {results} (image ids look like {ids[:3]})")
        bad = [i for i in image_ids if status[i] != "ok"]
        if bad:
            errors = dict(zip(ids, table.column("error").to_pylist(), strict=True))
            raise InputError(f"--ids {bad[:5]} are error rows without a map ({errors[bad[0]]})")
        wanted = list(dict.fromkeys(image_ids))
    else:
        wanted = [i for i in ids if status[i] == "ok"][: limit or 16]
        if not wanted:
            raise InputError(f"{results} has no ok rows to draw")
    rows = table.filter(pc.field("image_id").isin(wanted))
    maps = table_maps(rows, results, storage_options=storage_options)
    by_id = {r["image_id"]: (r, maps[k]) for k, r in enumerate(rows.drop_columns(
        [c for c in ("saliency", "saliency_full") if c in rows.column_names]).to_pylist())}
    pictures, captions = [], []
    for image_id in wanted:
        row, m = by_id[image_id]
        pictures.append(overlay(row, saliency=m, view=view, storage_options=storage_options))
        label = f" · label {row['label']}" if row.get("label") is not None else ""
        name = row.get("predicted_name") or f"class {row.get('predicted')}"
        captions.append(f"{image_id}{label} · predicted {name} ({row.get('score') or 0:.2f})")
    written = []

    def save(img: Image.Image, name: str) -> None:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        url = join(out, name)
        write_bytes(url, buf.getvalue(), storage_options)
        written.append(url)

    if sheet:
        save(contact_sheet([np.asarray(p) for p in pictures], captions, columns=columns), f"sheet.{view}.png")
    else:
        for image_id, picture in zip(wanted, pictures, strict=True):
            save(picture, f"{image_id.replace('/', '__')}.{view}.png")
    return written


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
         width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


__all__ = ["VIEWS", "clip_scale", "colormap", "contact_sheet", "heat_blend", "map_view", "outline", "overlay",
           "with_colorbar", "write_overlays"]
