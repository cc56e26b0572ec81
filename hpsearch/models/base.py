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
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from hpsearch.config import ModelConfig, TrialConfig, flatten_into, one_line
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy
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


class FamilyParams(BaseModel):
    """Base of a family's typed ``model.params``; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
        try:
            return self.params.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"model.params.{one_line(e)} (family {self.name!r})") from None


FAMILIES: Registry[FamilySpec] = Registry("model family")


def task_params(family: str, raw: dict[str, Any], task: str, what: str) -> FamilyParams:
    """Parse ``model.params`` of ``family``, which must belong to ``task`` (the experiment
    ``what`` says which families it trains when it does not)."""
    spec = FAMILIES.get(family)
    if spec.task != task:
        allowed = [n for n in FAMILIES.names() if FAMILIES.get(n).task == task]
        raise ConfigError(f"model.family {family!r} is a {spec.task!r} family; the {what} "
                          f"experiment needs one of {allowed}")
    return spec.parse_params(raw)


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
        from hpsearch.models.backbones import build_backbone

        bb = build_backbone(cfg, in_ch)
        return HierarchicalClassifier(bb, head(bb.out_dim, h, p))

    build.__name__ = f"build_{name}"
    register_family(name, params=params, description=description)(build)


def build_model(cfg: ModelConfig, h: Hierarchy, in_ch: int = 3) -> nn.Module:
    import hpsearch.models  # noqa: F401  registers the built-in families

    spec = FAMILIES.get(cfg.family)
    return spec.build(cfg, spec.parse_params(cfg.params), h, in_ch)


# optim keys that only mean something under one optimizer / schedule
_OPTIM_ONLY_WHEN: dict[str, tuple[str, tuple[str, ...]]] = {
    "optim.momentum": ("optim.optimizer", ("sgd",)),
    "optim.step_size": ("optim.schedule", ("step",)),
    "optim.sgdr_period": ("optim.schedule", ("sgdr",)),
    "optim.sgdr_mult": ("optim.schedule", ("sgdr",)),
}


# config keys an experiment task never reads (checked against hpsearch/embeddings/*.py):
# label-only and joint embeddings take their optimizers from model.params, train no backbone
# (joint: not when the features come from a run's checkpoint), and have no AMP / level loss
_CLASSIFIER_ONLY = ("optim.optimizer", "optim.momentum", "optim.weight_decay", "optim.amp",
                    "optim.channels_last", "optim.level_weights")
_BACKBONE_KEYS = ("model.backbone", "model.width", "model.pretrained_weights",
                  "model.freeze_backbone", "model.grayscale")
_TASK_UNUSED: dict[str, tuple[str, ...]] = {
    "label_embedding": _CLASSIFIER_ONLY + _BACKBONE_KEYS,
    "joint_embedding": _CLASSIFIER_ONLY + ("optim.lr",),  # label_lr / image_lr instead
}


def resolved_params(cfg: TrialConfig) -> dict[str, Any]:
    """The config a trial really ran with, as dotted keys for MLflow params.

    ``model.params`` holds only the keys a search space set; here it is completed with the
    family's defaults (``FamilySpec.params``), so a margin or aperture left at its default is
    still logged and comparable across runs. Settings the run ignores are left out instead of
    being logged as if they had mattered: optimizer/schedule keys of another optimizer or
    schedule (momentum under Adam, SGDR cycle under cosine), and the classifier's optimizer and
    backbone keys for the embedding tasks that do not read them.
    """
    import hpsearch.models  # noqa: F401  registers the built-in families

    tree = cfg.model_dump()
    spec = FAMILIES.get(cfg.model.family)
    tree["model"]["params"] = spec.parse_params(cfg.model.params).model_dump(mode="json")
    flat: dict[str, Any] = {}
    flatten_into(tree, flat)
    for key, (switch, allowed) in _OPTIM_ONLY_WHEN.items():
        if flat.get(switch) not in allowed:
            flat.pop(key, None)
    unused = _TASK_UNUSED.get(spec.task, ())
    if spec.task == "joint_embedding" and tree["model"]["params"].get("features") == "checkpoint":
        unused += _BACKBONE_KEYS  # the checkpoint's own backbone and preprocessing are used
    for key in unused:
        flat.pop(key, None)
    return flat

