"""Model families and backbones (registries)."""

from hpsearch.models import per_level  # noqa: F401  (registers families)
from hpsearch.models.backbones import BACKBONES, build_backbone
from hpsearch.models.base import FAMILIES, FamilySpec, Head, HierarchicalClassifier, build_model

__all__ = ["BACKBONES", "FAMILIES", "FamilySpec", "Head", "HierarchicalClassifier",
           "build_backbone", "build_model"]
