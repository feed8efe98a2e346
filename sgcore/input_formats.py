"""The input layouts by ``--input-format`` name: the one table of them, importable for free.

Each name maps to the class that reads the layout, under :mod:`sgcore.io.layouts`,
imported on first use (as fsspec's registry names its backends), so that the
job's config (:data:`sgcore.config.InputFormat`) and the command line take
their choices from this table without importing pyarrow or fsspec.
:data:`sgcore.io.readers.LAYOUTS` holds the layouts themselves, built from it.
A new layout is one module under ``sgcore/io/layouts/`` and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:class", in the order detection tries them and messages list them.
LAYOUT_CLASSES: dict[str, str] = {
    "images": "sgcore.io.layouts.images:ImageFiles",
    "webdataset": "sgcore.io.layouts.webdataset:WebDataset",
    "parquet": "sgcore.io.layouts.parquet:ParquetTables",
}


def layout_class(name: str) -> Any:
    """The class of layout ``name`` (imports its module)."""
    module, _, cls = LAYOUT_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["LAYOUT_CLASSES", "layout_class"]
