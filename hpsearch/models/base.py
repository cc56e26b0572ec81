"""Model-family plumbing: the head interface, the classifier wrapper and the family registry.

A *classifier family* is a head on a backbone. The head owns the method: how features become
outputs, the loss, and how outputs become per-level probabilities. The training loop only
talks to this interface, so every method of the thesis plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from hpsearch.config import FamilyParams, ModelConfig, one_line
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models.backbones import build_backbone
from hpsearch.registry import Registry


class Head(nn.Module):
    """Base class of the classifier heads.

    Subclasses implement ``forward(features [B, F]) -> outputs`` (a tensor), ``loss`` and
    ``level_probs``. ``decision`` says how labels are read from ``level_probs``: ``argmax``
    (one label per level) or ``threshold`` (multi-label, thresholds tuned on validation).
    """

    decision: Literal["argmax", "threshold"] = "argmax"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.hierarchy = hierarchy

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        """Scalar training loss. ``level_labels`` is ``[B, L]`` local indices; ``class_weights``
        is one ``[n_l]`` tensor per level (or None)."""
        raise NotImplementedError

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        """Per-level scores in [0, 1], one ``[B, n_l]`` tensor per level."""
        raise NotImplementedError

    def predict_levels(self, outputs: Tensor) -> Tensor:
        """``[B, L]`` predicted local label per level (argmax heads)."""
        return torch.stack([p.argmax(-1) for p in self.level_probs(outputs)], dim=1)

    def predict_multihot(self, outputs: Tensor) -> Tensor:
        """``[B, num_nodes]`` bool: the predicted label set in global index order. Argmax heads
        predict one label per level; threshold heads override this."""
        pred = self.predict_levels(outputs)
        out = torch.zeros(pred.shape[0], self.hierarchy.num_nodes, dtype=torch.bool,
                          device=pred.device)
        offsets = torch.tensor(self.hierarchy.offsets, device=pred.device)
        out.scatter_(1, pred + offsets, True)
        return out

    def calibrate(self, outputs: Tensor, level_labels: Tensor) -> None:
        """Tune decision parameters (e.g. thresholds) on the *validation* outputs. The
        experiment calls it before computing validation metrics; test reuses the result.
        State to keep must live in buffers so it is checkpointed and exported."""

    def eval_metrics(self, outputs: Tensor, level_labels: Tensor) -> dict[str, float]:
        """Family-specific extra metrics over a whole split (e.g. retrieval mAHP@k)."""
        return {}


class HierarchicalClassifier(nn.Module):
    """Backbone + head; ``forward`` returns the head's raw outputs."""

    def __init__(self, backbone: nn.Module, head: Head) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone.forward_features(x))


def level_weights_for(h: Hierarchy, level_weights: Sequence[float] | None) -> list[float]:
    if level_weights is None:
        return [1.0] * h.num_levels
    if len(level_weights) != h.num_levels:
        raise ConfigError(f"optim.level_weights has {len(level_weights)} entries but the "
                          f"hierarchy has {h.num_levels} levels")
    return [float(w) for w in level_weights]


def weighted_level_nll(level_log_probs: Sequence[Tensor], level_labels: Tensor,
                       weights: Sequence[float],
                       class_weights: Sequence[Tensor] | None = None) -> Tensor:
    """L = Σ_l w_l · NLL(log p_l, y_l): the per-level loss shared by the per-level (eq. 3.3),
    marginalization (eq. 3.6) and hierarchical-softmax heads. Each level's NLL is the batch
    mean, class-weighted (Σ_i c_{y_i} ℓ_i / Σ_i c_{y_i}) when ``class_weights`` is given."""
    total = level_log_probs[0].new_zeros((), dtype=torch.float32)
    for lvl, lp in enumerate(level_log_probs):
        if weights[lvl] == 0:
            continue
        cw = None if class_weights is None else class_weights[lvl].to(lp)
        total = total + weights[lvl] * F.nll_loss(lp, level_labels[:, lvl].long(), weight=cw)
    return total


def split_levels(x: Tensor, h: Hierarchy) -> list[Tensor]:
    """``[B, sum n_l]`` -> one ``[B, n_l]`` block per level (thesis' contiguous layout)."""
    return list(torch.split(x, list(h.level_sizes), dim=-1))


@dataclass(frozen=True)
class FamilySpec:
    """A registered model family.

    Attributes:
        name: registry name.
        task: which experiment trains it ("classifier", "label_embedding", ...).
        build: ``(ModelConfig, params, Hierarchy, in_channels) -> nn.Module``.
        params: the pydantic model of the family's ``model.params``.
        description: one line for ``hpsearch families``.
    """

    name: str
    task: str
    build: Callable[..., nn.Module]
    params: type[FamilyParams] = FamilyParams
    description: str = ""

    def parse_params(self, raw: dict[str, Any]) -> FamilyParams:
        """Validate a raw ``model.params`` mapping into :attr:`params` (done once, by
        :class:`hpsearch.tasks.TrialConfig`)."""
        try:
            return self.params.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"model.params.{one_line(e, self.params)} "
                              f"(family {self.name!r})") from None

    def typed(self, params: FamilyParams) -> FamilyParams:
        """``params`` as this family's model: a ``ModelConfig`` built by hand (not through a
        TrialConfig) carries the untyped base; anything else passes through unparsed."""
        return params if isinstance(params, self.params) else self.parse_params(
            params.model_dump())


FAMILIES: Registry[FamilySpec] = Registry("model family")


def register_family(name: str, *, task: str = "classifier", params: type[FamilyParams] =
                    FamilyParams, description: str = "") -> Callable:
    """Decorator: ``@register_family("per_level")`` on a builder."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        FAMILIES.add(name, FamilySpec(name, task, fn, params, description))
        return fn

    return deco


def register_head_family(name: str, head: Callable[[int, Hierarchy, Any], Head], *,
                         params: type[FamilyParams] = FamilyParams,
                         description: str = "") -> None:
    """Register a classifier family: the configured backbone (``model.backbone``) followed by
    ``head(feature_dim, hierarchy, parsed_params)``, trained by the classifier experiment."""

    def build(cfg: ModelConfig, p: FamilyParams, h: Hierarchy,
              in_ch: int = 3) -> HierarchicalClassifier:
        bb = build_backbone(cfg, in_ch)
        return HierarchicalClassifier(bb, head(bb.out_dim, h, p))

    build.__name__ = f"build_{name}"
    register_family(name, params=params, description=description)(build)


def build_model(cfg: ModelConfig, h: Hierarchy, in_ch: int = 3) -> nn.Module:
    """The module of family ``cfg.family`` (registered by importing :mod:`hpsearch.models`)."""
    spec = FAMILIES.get(cfg.family)
    return spec.build(cfg, spec.typed(cfg.params), h, in_ch)
