"""What a test asks of a figure it wrote: a picture that decodes and shows something."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def assert_picture(data: bytes, *, min_side: int = 50, min_levels: int = 20) -> Image.Image:
    """``data`` decodes as a PNG of at least ``min_side`` pixels a side with ``min_levels`` grey levels.

    An empty canvas, a blank figure or a truncated file fails, where checking
    the PNG signature would pass.
    """
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    picture = Image.open(io.BytesIO(data))
    picture.load()
    assert min(picture.size) >= min_side, f"a {picture.size} picture"
    levels = len(np.unique(np.asarray(picture.convert("L"))))
    assert levels >= min_levels, f"only {levels} grey levels: a blank figure?"
    return picture
