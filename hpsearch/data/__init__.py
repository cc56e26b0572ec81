"""Data: image datasets (a registry of builders returning :class:`HierDataset`: train/val/test
plus the hierarchy), label sources for label-only embeddings (:mod:`~hpsearch.data.labels`),
the decoded uint8 cache, transforms and batching (:mod:`~hpsearch.data.transforms`),
imbalance samplers, negative samplers and edge splits of label graphs.

Every module in this package is imported here, so a loader registers itself by existing.
"""

import importlib
import pkgutil

from hpsearch.data.base import DATASETS, HierDataset, ImageSplit, load_dataset

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DATASETS", "HierDataset", "ImageSplit", "load_dataset"]
