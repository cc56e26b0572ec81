"""The image-classification experiment: every CNN family (a head on a backbone) trains through
this one class.

Runs single-process or as one rank of a torch.distributed group (DDP): the caller (the Ray
Train worker) initialises the process group; this module only reads ``RunContext``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpsearch.data import HierDataset, load_dataset
from hpsearch.data.samplers import class_weights, resample_weights
from hpsearch.data.transforms import Preprocess, epoch_indices, iterate_batches
from hpsearch.errors import ConfigError
from hpsearch.metrics.hierarchical import (
    f1_by_count_bucket,
    leaf_lca_heights,
    per_label_f1_vs_train_size,
    train_counts_from_labels,
)
from hpsearch.models import build_model
from hpsearch.models.base import Head, HierarchicalClassifier
from hpsearch.tasks.base import RunContext, require_family, seed_everything
from hpsearch.tasks.classifier.loop import (
    LabelCounts,
    collect_outputs,
    evaluate,
    leaf_similarity,
    train_one_epoch,
)
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.optim import build_optimizer, build_scheduler, param_groups

TASK = "classifier"


class ClassifierExperiment:
    """Backbone + head trained on a :class:`HierDataset` (task ``"classifier"``)."""

    def __init__(self, cfg: TrialConfig, ctx: RunContext,
                 dataset: HierDataset | None = None) -> None:
        require_family(cfg, TASK)
        self.cfg, self.ctx = cfg, ctx
        seed_everything(cfg.seed)
        self.data = dataset or load_dataset(cfg.data)
        h = self.data.hierarchy
        self.hierarchy = h
        in_ch = 1 if cfg.model.grayscale else self.data.channels
        self.model: HierarchicalClassifier = build_model(cfg.model, h, in_ch)
        cuda = ctx.device.type == "cuda"
        self.amp = cfg.optim.amp and cuda
        channels_last = cfg.optim.channels_last and cuda
        self.model.to(ctx.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if ctx.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if cuda else None)
        train_labels = self.data.train.level_labels
        self.sample_weights = resample_weights(train_labels, h, cfg.data.resample,
                                               cfg.data.resample_level)
        self.class_weights = ([torch.as_tensor(w, device=ctx.device)
                               for w in class_weights(train_labels, h)]
                              if cfg.data.class_weights else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the model has no trainable parameters")
        o = cfg.optim
        self.optimizer = build_optimizer(
            param_groups(self.model, o.weight_decay, o.weight_decay_scope), o.optimizer,
            lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
        self.scheduler = build_scheduler(self.optimizer, o)
        common = dict(mean=self.data.mean, std=self.data.std, size=cfg.data.image_size,
                      grayscale=cfg.model.grayscale, channels_last=channels_last)
        self.pre_train = Preprocess(augment=cfg.data.augment, **common)
        self.pre_eval = Preprocess(augment=False, **common)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919 * ctx.rank)
        self._lca = leaf_lca_heights(h) if h.is_leveled else None
        self._sim = leaf_similarity(h)

    @property
    def head(self) -> Head:
        return self.model.head

    # ------------------------------------------------------------------ Experiment API
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        split = self.data.train
        order = epoch_indices(len(split), epoch=epoch, seed=self.cfg.seed, rank=self.ctx.rank,
                              world_size=self.ctx.world_size, weights=self.sample_weights)
        batches = iterate_batches(split.images, split.level_labels, order,
                                  self.cfg.optim.batch_size, self.ctx.device,
                                  drop_last=len(order) > self.cfg.optim.batch_size)
        counts = LabelCounts(self.hierarchy.num_nodes, self.ctx.device)
        stats = train_one_epoch(self.net, self.head, batches, self.pre_train, self.optimizer,
                                level_weights=self.cfg.optim.level_weights,
                                class_weights=self.class_weights, amp=self.amp,
                                grad_clip=self.cfg.optim.grad_clip, generator=self.gen,
                                counts=counts)
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ctx.distributed:
            # counts summed: the exact F1 of all ranks' batches, not a mean of per-rank F1s
            stats = _mean_across_ranks(stats, self.ctx.device, counts.counts)
        stats.update(counts.f1())  # train_micro_f1 / train_macro_f1: the epoch's running F1
        return stats

    def outputs(self, split_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs and labels of a whole split, gathered from every rank."""
        split = self.data.split(split_name)
        order = np.array_split(np.arange(len(split)), self.ctx.world_size)[self.ctx.rank]
        batches = iterate_batches(split.images, split.level_labels, order,
                                  max(self.cfg.optim.batch_size, 256), self.ctx.device)
        out, lab = collect_outputs(self.model, batches, self.pre_eval, amp=self.amp)
        if self.ctx.distributed:
            import torch.distributed as dist

            parts: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(parts, (out, lab))
            out = torch.cat([p[0] for p in parts if len(p[0])])
            lab = torch.cat([p[1] for p in parts if len(p[1])])
        return out, lab

    def evaluate(self, split: str) -> dict[str, float]:
        out, lab = self.outputs(split)
        return evaluate(self.head, out, lab, calibrate=split == "val", lca_heights=self._lca,
                        retrieval_sim=self._sim, level_weights=self.cfg.optim.level_weights,
                        class_weights=self.class_weights)

    def reports(self, split: str) -> dict[str, str]:
        """Text artifacts for the best epoch: per-label F1 against training-set size
        (thesis Fig. 4.1 as a table) and its summary by training-count bucket."""
        if self.head.decision != "argmax" or not self.hierarchy.is_leveled:
            return {}
        out, lab = self.outputs(split)
        dev = next(self.model.parameters()).device
        pred = self.head.predict_levels(out.to(dev)).cpu()
        counts = train_counts_from_labels(self.data.train.level_labels, self.hierarchy)
        rows = per_label_f1_vs_train_size(pred, lab, counts, self.hierarchy)
        table = [",".join(rows[0]._fields)] + [",".join(str(v) for v in r) for r in rows]
        buckets = f1_by_count_bucket(rows, per_level=True)
        btable = [",".join(buckets[0]._fields)] + [",".join(str(v) for v in b)
                                                   for b in buckets] if buckets else []
        return {f"per_label_f1_{split}.csv": "\n".join(table) + "\n",
                f"f1_by_train_count_{split}.csv": "\n".join(btable) + "\n"}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:  # absent from best.pt (inference state)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("generator") is not None:
            self.gen.set_state(state["generator"])

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Weights, a ``torch.export`` program mapping uint8 NHWC images to per-level
        probabilities (preprocessing included), and the preprocessing as JSON."""
        out_dir = Path(out_dir)
        model = self.model.cpu().eval()
        torch.save(model.state_dict(), out_dir / "weights.pt")
        pre = Preprocess(mean=self.data.mean, std=self.data.std, size=self.cfg.data.image_size,
                         grayscale=self.cfg.model.grayscale)
        prog = PredictProgram(model, pre)
        size = self.cfg.data.image_size
        example = torch.zeros(2, size, size, self.data.channels, dtype=torch.uint8)
        manifest: dict[str, Any] = {
            "preprocess": {"mean": list(pre.mean), "std": list(pre.std), "size": size,
                           "channels": self.data.channels, "grayscale": pre.grayscale},
            "weights": "weights.pt",
        }
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            ep = torch.export.export(prog, (example,), dynamic_shapes=({0: batch},),
                                     strict=False)
            torch.export.save(ep, out_dir / "program.pt2")
            manifest["program"] = "program.pt2"
        except Exception as e:  # noqa: BLE001 - recorded; predict falls back to weights
            manifest["program_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        (out_dir / "preprocess.json").write_text(json.dumps(manifest["preprocess"], indent=1))
        self.model.to(self.ctx.device)
        return manifest


class PredictProgram(nn.Module):
    """uint8 ``[B, H, W, C]`` -> per-level probabilities concatenated ``[B, num_nodes]``."""

    def __init__(self, model: HierarchicalClassifier, pre: Preprocess) -> None:
        super().__init__()
        self.model, self.pre = model, pre

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = self.model.head.level_probs(self.model(self.pre(images)))
        return torch.cat(probs, dim=-1)


def _mean_across_ranks(stats: dict[str, float], device: torch.device,
                       sums: torch.Tensor | None = None) -> dict[str, float]:
    """``stats`` averaged over the ranks; ``sums`` (label counts) summed over them in place."""
    import torch.distributed as dist

    if sums is not None:
        dist.all_reduce(sums)
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    out = dict(zip(keys, t.tolist(), strict=True))
    # images and throughput add up across ranks
    for k in ("images", "images_per_s"):
        if k in out:
            out[k] *= dist.get_world_size()
    return out



def metric_names(cfg: TrialConfig) -> set[str]:
    """The bare metric names a classifier of ``cfg`` evaluates, from an untrained model on a
    few validation images (an unknown search metric fails here, not in every trial)."""
    data = load_dataset(cfg.data)
    in_ch = 1 if cfg.model.grayscale else data.channels
    model = build_model(cfg.model, data.hierarchy, in_ch).eval()
    n = min(4, len(data.val))
    pre = Preprocess(mean=data.mean, std=data.std, size=cfg.data.image_size,
                     grayscale=cfg.model.grayscale)
    sim = leaf_similarity(data.hierarchy)  # as trials evaluate: with the retrieval metrics
    with torch.no_grad():
        out = model(pre(torch.from_numpy(np.array(data.val.images[:n]))))
    names = set(evaluate(model.head, out, torch.from_numpy(np.array(data.val.level_labels[:n])),
                         calibrate=True, retrieval_sim=sim))
    if "hp_at_1" in names:  # the larger cut-offs exist once the split has more than k images
        names |= {"hp_at_10", "hp_at_50", "hp_at_100"}
    return names
