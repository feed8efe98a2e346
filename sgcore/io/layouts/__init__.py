"""The input layouts, one module each, behind one small protocol (:class:`Layout`).

- :mod:`~sgcore.io.layouts.images`: a prefix of image files.
- :mod:`~sgcore.io.layouts.webdataset`: WebDataset ``.tar`` shards.
- :mod:`~sgcore.io.layouts.parquet`: Parquet tables with an image-bytes column.

:mod:`sgcore.io.readers` lists the input, picks the layout and dispatches to it.
"""

from sgcore.io.layouts.base import Layout, Listing, PlanOptions, RawSample, Root, ShardSpec
from sgcore.io.layouts.images import ImageFiles
from sgcore.io.layouts.parquet import ParquetTables
from sgcore.io.layouts.webdataset import WebDataset

__all__ = ["ImageFiles", "Layout", "Listing", "ParquetTables", "PlanOptions", "RawSample", "Root",
           "ShardSpec", "WebDataset"]
