"""Model families and backbones (registries).

Every module in this package is imported here, so a new family registers itself by existing:
drop ``hpsearch/models/my_family.py`` with a ``@register_family`` builder in it. A family names
the task that trains it (``task="classifier"`` by default; see :mod:`hpsearch.tasks`) and its
params model, which the trial config validates ``model.params`` into once.
"""

import importlib
import pkgutil

from hpsearch.models.backbones import BACKBONES, build_backbone
from hpsearch.models.base import (
    FAMILIES,
    FamilySpec,
    Head,
    HierarchicalClassifier,
    build_model,
    register_family,
)

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["BACKBONES", "FAMILIES", "FamilySpec", "Head", "HierarchicalClassifier",
           "build_backbone", "build_model", "register_family"]
