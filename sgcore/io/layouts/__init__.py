"""The input layouts, one module each (its file format and its :class:`Layout`), behind one protocol.

- :mod:`~sgcore.io.layouts.images`: a prefix of image files.
- :mod:`~sgcore.io.layouts.webdataset`: WebDataset ``.tar`` shards.
- :mod:`~sgcore.io.layouts.parquet`: Parquet tables with an image-bytes column.

Each reads a shard of the job (``read``) and a Ray Data batch (``read_batch``)
into the same :class:`RawSample` objects. The table of layouts by
``--input-format`` name is :data:`sgcore.input_formats.LAYOUT_CLASSES`;
:mod:`sgcore.io.readers` builds ``LAYOUTS`` from it, picks the layout and
dispatches to it.
"""

from sgcore.io.layouts.base import (
    Batch,
    BatchOptions,
    Layout,
    Listing,
    PlanOptions,
    RawSample,
    Root,
    ShardSpec,
)
from sgcore.io.layouts.images import ImageFiles
from sgcore.io.layouts.parquet import ParquetTables
from sgcore.io.layouts.webdataset import WebDataset

__all__ = ["Batch", "BatchOptions", "ImageFiles", "Layout", "Listing", "ParquetTables", "PlanOptions",
           "RawSample", "Root", "ShardSpec", "WebDataset"]
