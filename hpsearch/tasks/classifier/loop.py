"""The classifier's epoch and evaluation (torchvision-references style): no Ray, no MLflow.

Batches come from :func:`hpsearch.data.transforms.iterate_batches` and are preprocessed on the
device by :class:`hpsearch.data.transforms.Preprocess`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpsearch.data.transforms import Preprocess
from hpsearch.errors import NonFiniteLossError
from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.classification import level_metrics, levels_to_multihot
from hpsearch.metrics.hierarchical import hierarchical_metric_suite
from hpsearch.metrics.retrieval import balanced_accuracy, leaf_class_similarity, retrieval_metrics
from hpsearch.models.base import Head


class LabelCounts:
    """Per-label TP/FP/FN over the training batches of one epoch (float64, on the device).

    Train F1 comes from the forward passes the epoch does anyway: each batch's outputs, as the
    head decides on them (``predict_multihot``, no gradient), are compared with the batch's
    labels and only three ``[num_nodes]`` counters are kept, so the epoch's cost stays flat (no
    second pass over the training set). It is therefore the running F1 of the epoch: train-mode
    forward passes (augmentation, dropout, batch-norm statistics of the batch) while the weights
    change, not the F1 of the end-of-epoch model on the training set.
    """

    def __init__(self, num_nodes: int, device: torch.device) -> None:
        self.counts = torch.zeros(3, num_nodes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, pred: Tensor, true: Tensor) -> None:
        """Add one batch: bool multi-hot ``pred`` and ``true`` ``[B, num_nodes]``."""
        pred, true = pred.bool(), true.bool()
        self.counts[0] += (pred & true).sum(0)
        self.counts[1] += (pred & ~true).sum(0)
        self.counts[2] += (~pred & true).sum(0)

    def f1(self) -> dict[str, float]:
        """``micro_f1`` and ``macro_f1`` as :func:`hpsearch.metrics.classification.
        prf_from_multihot` defines them (macro over labels with TP + FP + FN > 0)."""
        tp, fp, fn = self.counts.cpu()
        TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
        micro = float(2 * TP / (2 * TP + FP + FN)) if TP > 0 else 0.0
        per = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1e-12),
                          torch.zeros_like(tp))
        active = (tp + fp + fn) > 0
        macro = float(per[active].sum() / active.sum().clamp_min(1))
        return {"micro_f1": micro, "macro_f1": macro}


def train_one_epoch(model: nn.Module, head: Head, batches: Iterator[tuple[Tensor, Tensor]],
                    preprocess: Preprocess, optimizer: torch.optim.Optimizer, *,
                    level_weights: Sequence[float] | None = None,
                    class_weights: Sequence[Tensor] | None = None,
                    amp: bool = False, grad_clip: float | None = None,
                    generator: torch.Generator | None = None,
                    counts: LabelCounts | None = None) -> dict[str, float]:
    """One pass over ``batches``. Returns mean ``loss``, ``images``, ``epoch_time_s``,
    ``images_per_s``. Raises :class:`NonFiniteLossError` on a NaN/inf loss. With ``counts``,
    every batch's predictions are also counted into it (train F1, see :class:`LabelCounts`)."""
    model.train()
    t0 = time.perf_counter()
    total, seen = torch.zeros((), dtype=torch.float64), 0
    h = head.hierarchy
    for xb, yb in batches:
        x = preprocess(xb, generator)
        device_type = x.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = head.loss(out.float(), yb, level_weights=level_weights,
                         class_weights=class_weights)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} after {seen} images; lower "
                                     "optim.lr or set optim.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if counts is not None:  # the outputs of this forward pass, before the step's update
            counts.add(head.predict_multihot(out.detach().float()),
                       levels_to_multihot(yb, h.offsets, h.num_nodes))
        total += loss.detach().double().cpu() * len(yb)
        seen += len(yb)
    dt = time.perf_counter() - t0
    return {"loss": float(total / max(seen, 1)), "images": float(seen), "epoch_time_s": dt,
            "images_per_s": seen / dt if dt > 0 else 0.0}


@torch.no_grad()
def collect_outputs(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]],
                    preprocess: Preprocess, *, amp: bool = False) -> tuple[Tensor, Tensor]:
    """Run the model over ``batches``; returns (outputs ``[N, ...]`` float32, labels ``[N, L]``)
    on the CPU."""
    model.eval()
    outs, labs = [], []
    for xb, yb in batches:
        x = preprocess(xb)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        outs.append(out.float().cpu())
        labs.append(yb.cpu())
    if not outs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labs)


def leaf_similarity(h: Hierarchy) -> torch.Tensor | None:
    """``retrieval_sim`` for :func:`evaluate`: LCS-height similarity of the last level's
    labels (Barz & Denzler) on the original tree behind any ``leveling: pad``
    (:func:`~hpsearch.metrics.retrieval.leaf_class_similarity`), ``None`` for a hierarchy that
    is not leveled."""
    if not h.is_leveled:
        return None
    return torch.as_tensor(leaf_class_similarity(h), dtype=torch.float32)


def evaluate(head: Head, outputs: Tensor, level_labels: Tensor, *, calibrate: bool = False,
             lca_heights: np.ndarray | None = None,
             retrieval_sim: Tensor | None = None,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> dict[str, float]:
    """Metrics of a whole split from the gathered model outputs.

    ``loss`` is the training loss (``head.loss`` with the same ``level_weights`` and
    ``class_weights``) of these eval-mode outputs: one more reduction over outputs the
    evaluation has anyway, so val/test loss curves cost no extra forward pass.

    Args:
        head: the model's head (decides how outputs become labels).
        outputs: ``[N, ...]`` raw head outputs.
        level_labels: ``[N, L]`` true local labels.
        calibrate: tune the head's decision parameters on these outputs first (validation).
        lca_heights: cached LCA-height matrix of the last level (for hierarchical metrics).
        retrieval_sim: ``[C, C]`` LCS-height similarity of the last level; with it, families
            that do not compute retrieval themselves get ``mahp_250`` / ``hp_at_<k>`` with the
            L2-normalised leaf-probability vector as the image's descriptor, plus leaf
            ``accuracy`` and ``balanced_accuracy``, so every family is comparable with
            Barz & Denzler's embeddings in one table.
    """
    h = head.hierarchy
    dev = next(iter(head.parameters()), torch.zeros(0)).device
    outputs, level_labels = outputs.to(dev), level_labels.to(dev)
    if outputs.is_floating_point() and not bool(torch.isfinite(outputs).all()):
        bad = int((~torch.isfinite(outputs)).any(dim=tuple(range(1, outputs.dim()))).sum())
        raise NonFiniteLossError(f"model outputs are NaN/inf for {bad} of {len(outputs)} "
                                 "evaluated images (the model diverged); lower optim.lr or "
                                 "set optim.grad_clip")
    if calibrate:
        head.calibrate(outputs, level_labels)
    with torch.no_grad():
        loss = (float(head.loss(outputs.float(), level_labels, level_weights=level_weights,
                                class_weights=class_weights)) if len(outputs) else 0.0)
    pred = head.predict_multihot(outputs)
    true = levels_to_multihot(level_labels, h.offsets, h.num_nodes)
    # ``macro_*_thesis`` beside today's macro: the published CNN code's convention (all labels)
    metrics = level_metrics(pred, true, h.offsets, h.level_sizes, thesis_macro=True)
    metrics["loss"] = loss

    @functools.cache
    def decided() -> tuple[list[Tensor], Tensor]:  # read by both blocks below: computed once
        """Per-level probabilities and the head's own per-level decision, on the CPU."""
        return [p.cpu() for p in head.level_probs(outputs)], head.predict_levels(outputs).cpu()

    if head.decision == "argmax" and h.is_leveled:
        probs, pred_levels = decided()
        metrics.update(hierarchical_metric_suite(
            probs, level_labels.cpu(), h, lca_height_matrix=lca_heights,
            pred_levels=pred_levels))  # the head's own decision
    metrics.update(head.eval_metrics(outputs, level_labels))
    if retrieval_sim is not None and "mahp_250" not in metrics and len(outputs) >= 3:
        probs, pred_levels = decided()
        leaf = probs[-1].float()
        y = level_labels[:, -1].cpu()
        top = pred_levels[:, -1]  # the head's leaf decision
        metrics.setdefault("accuracy", float((top == y).double().mean()))
        metrics.setdefault("balanced_accuracy", balanced_accuracy(top, y))
        k = min(250, len(outputs) - 1)
        res = retrieval_metrics(F.normalize(leaf, dim=-1), y, {"": retrieval_sim},
                                ks=(1, 10, 50, 100), ahp_k=k)
        metrics.update({key.replace(f"mahp_{k}", "mahp_250", 1): v for key, v in res.items()})
    return metrics
