"""Datasets: a registry of builders returning :class:`HierDataset` (train/val/test + hierarchy)."""

from hpsearch.data import synthetic  # noqa: F401  (registers "synthetic")
from hpsearch.data.base import DATASETS, HierDataset, ImageSplit, load_dataset

__all__ = ["DATASETS", "HierDataset", "ImageSplit", "load_dataset"]
