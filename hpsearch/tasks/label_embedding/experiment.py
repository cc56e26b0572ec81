"""The ``label_embedding`` experiment: embed a label hierarchy alone (thesis §5.5, §6.1).

Per epoch: shuffle the training positives, draw 2k negatives per positive on the device
(:class:`NegativeSampler`, closure edges rejected), and minimise per batch

    L = Σ_pos E(f(u), f(v)) + Σ_neg max(0, α − E(f(u'), f(v')))        (thesis eq. 2.3)

as a *sum* over the batch (the published codes' reduction, so their learning rates carry over);
the reported ``loss`` is L per positive. Negatives with no valid corruption are masked.

``evaluate("val")`` picks the F1-optimal threshold on the fixed val positives/negatives
(edge iff E <= t) and keeps it; ``evaluate("test")`` applies that threshold. The threshold is
placed two ways inside the interval of val-optimal thresholds: at its low end (``edge_f1``, the
thesis protocol) and at its middle (``edge_f1_midpoint``, max-margin); both have the same val
F1, and model selection is unchanged by the second (metrics/edges.py). Both also report
the reconstruction of the whole label graph over all ordered pairs (thesis §6.1.1), whose
threshold is chosen on that same set, as the thesis did.

Data: ``cfg.data.params["label_source"]`` plus the other ``cfg.data.params`` go to
:func:`hpsearch.data.labels.load_label_hierarchy`; without ``label_source`` the hierarchy of
the image dataset ``cfg.data.name`` is used (source ``dataset``).

``model.params.sparse_updates``: each step updates only the rows the batch looked up (sparse
gradients, lazy Adam moments; hpsearch/tasks/optim.py). Off by default.

Distributed runs are not data-parallel: the table is tiny, every rank runs the same seeded
computation, so ``evaluate`` is identical on every rank. Use one worker.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.data.edge_splits import (
    EdgeSplits,
    make_edge_splits,
    node_levels,
    predefined_edge_splits,
)
from hpsearch.data.labels import LabelGraph, load_label_hierarchy
from hpsearch.data.negatives import NegativeSampler
from hpsearch.errors import ConfigError, DataError, NonFiniteLossError
from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.edges import f1_at_threshold, f1_optimal_interval, place_threshold
from hpsearch.models.label_embedding import (
    LabelEmbedding,
    LabelEmbeddingParams,
    build_label_embedding,
)
from hpsearch.tasks.base import RunContext, require_family
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.edges import ReconstructionCache, margin_epoch
from hpsearch.tasks.label_embedding.pretrain import poincare_pretrain
from hpsearch.tasks.optim import build_optimizer, build_scheduler, load_optimizer_state

TASK = "label_embedding"
EMBEDDINGS_FILE = "label_embeddings.pt"
NODES_FILE = "label_nodes.json"
META_FILE = "label_embedding.json"
RECON_CHUNK_ELEMS = 1 << 24  # energies per row block when reconstructing the graph


def load_label_graph(cfg: TrialConfig) -> LabelGraph:
    """The :class:`~hpsearch.data.labels.LabelGraph` named by ``cfg.data``."""
    params = dict(cfg.data.params)
    source = params.pop("label_source", None)
    if source is None:
        return load_label_hierarchy("dataset", name=cfg.data.name, root=cfg.data.root,
                                    params=params)
    return load_label_hierarchy(source, **params)


def build_splits(graph: LabelGraph, p: LabelEmbeddingParams) -> EdgeSplits:
    """Predefined splits of the graph when it has them (and ``use_predefined_splits``), else
    the thesis §5.5 protocol seeded by ``split_seed``."""
    n = len(graph.nodes)
    closure = np.asarray(graph.closure, dtype=np.int64).reshape(-1, 2)
    h = graph.hierarchy
    level = np.asarray(h.depth) if h is not None else node_levels(closure, n)
    basic = graph.basic_edges
    if p.use_predefined_splits and graph.has_splits:
        return predefined_edge_splits(
            n, closure, train=graph.train, valid=graph.valid, valid_neg=graph.valid_neg,
            test=graph.test, test_neg=graph.test_neg, basic=basic, node_level=level)
    s = make_edge_splits(
        n, closure, non_basic_fraction=p.non_basic_fraction, basic=basic, node_level=level,
        negatives_per_side=p.eval_negatives_per_side,
        negative_strategy=p.eval_negative_strategy, seed=p.split_seed)
    if len(s.val) == 0 or len(s.test) == 0:
        raise DataError(
            f"the label graph has {s.meta['non_basic']} non-basic edges, so the 5% val/test "
            "splits are empty; label-only embedding needs a deeper or larger hierarchy")
    return s


def load_embedding_tensor(path: str | Path) -> torch.Tensor:
    """A saved ``[N, d]`` embedding tensor (``label_embeddings.pt`` or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / EMBEDDINGS_FILE
    if not p.is_file():
        raise ConfigError(f"init_from={str(path)!r}: no {EMBEDDINGS_FILE} there; point it at "
                          "an exported label-embedding run")
    try:  # tensors and plain data only: a planted pickle is refused, never run
        x = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        why = "it holds more than a tensor" if isinstance(e, pickle.UnpicklingError) else \
            "it is not a torch.save file"
        raise ConfigError(f"init_from: {p} refused ({why}; nothing in it was run); point "
                          "it at a label_embeddings.pt written by an hpsearch export") from None
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ConfigError(f"{p} does not hold an [N, d] tensor")
    return x


class LabelEmbeddingExperiment:
    """Trains one label-embedding family on one label graph.

    Args:
        cfg: the trial config; ``cfg.model.family`` must be a ``label_embedding`` family.
        ctx: device / rank.
        graph: the :class:`~hpsearch.data.labels.LabelGraph` (nodes, closure, hierarchy,
            optional predefined splits); loaded from ``cfg.data`` when omitted.
    """

    def __init__(self, cfg: TrialConfig, ctx: RunContext | None = None,
                 graph: LabelGraph | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or RunContext()
        self.device = torch.device(self.ctx.device)
        self.params: LabelEmbeddingParams = require_family(cfg, TASK)
        self.graph = graph if graph is not None else load_label_graph(cfg)
        self.hierarchy: Hierarchy | None = self.graph.hierarchy
        self.nodes = tuple(str(x) for x in self.graph.nodes)
        self.splits = build_splits(self.graph, self.params)
        n = self.splits.num_nodes

        init_gen = torch.Generator().manual_seed(cfg.seed)
        self.model: LabelEmbedding = build_label_embedding(
            cfg.model.family, self.params, n, sparse_grad=self.params.sparse_updates)
        self.model.reset_parameters(init_gen)
        self.model.to(self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self._initialise()

        p = self.params
        self.optimizer = build_optimizer([self.model.weight], p.optimizer,  # type: ignore
                                         lr=p.label_lr or cfg.optim.lr, momentum=p.momentum,
                                         sparse=p.sparse_updates)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.sampler = NegativeSampler(
            n, self.splits.closure, node_level=self.splits.node_level,
            strategy=p.negative_strategy, negatives_per_side=p.negatives_per_side,
            device=self.device)
        t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=self.device)  # noqa: E731
        self.train_pos = t(self.splits.train)
        self.eval_pairs = {"val": (t(self.splits.val), t(self.splits.val_neg)),
                           "test": (t(self.splits.test), t(self.splits.test_neg))}
        self.closure = t(self.splits.closure)
        self.basic = t(self.splits.basic)
        self.threshold: float | None = None
        self.threshold_midpoint: float | None = None
        self.steps = 0
        self._reconstruction = ReconstructionCache(self.params.recon_max_nodes,
                                                   RECON_CHUNK_ELEMS)

    # ------------------------------------------------------------------ init
    def _initialise(self) -> None:
        p = self.params
        if p.init == "from_run":
            self.model.set_embeddings(load_embedding_tensor(p.init_from))  # type: ignore
        elif p.init == "poincare_init":
            x = poincare_pretrain(
                self.splits.train, self.splits.num_nodes, p.dim, closure=self.splits.closure,
                epochs=p.init_epochs, lr=p.init_lr, burn_in=p.init_burn_in,  # type: ignore
                corrupt=p.init_corrupt,  # type: ignore[attr-defined]
                batch_size=self.cfg.optim.batch_size, generator=self.gen, device=self.device,
                dtype=self.model.weight.dtype)
            self.model.set_embeddings(x * p.init_rescale)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ training
    def _loss(self, pos: torch.Tensor, neg: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        e_pos = self.model.pair_energy(pos)  # [B]
        e_neg = self.model.pair_energy(neg)  # [B, 2k]
        hinge = (self.model.margin - e_neg).clamp_min(0) * ok
        return e_pos.sum() + hinge.sum()

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        st = margin_epoch(self.train_pos, self.sampler, self._loss, [self.optimizer],
                          [self.model.weight], batch_size=self.cfg.optim.batch_size,
                          grad_clip=self.cfg.optim.grad_clip, generator=self.gen)
        self.steps += st.steps
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scheduler is not None:
            self.scheduler.step()
        mean = st.mean_loss
        if not np.isfinite(mean) or not bool(torch.isfinite(self.model.weight).all()):
            raise NonFiniteLossError(
                f"label-embedding loss became {mean} in epoch {epoch} "
                f"(family {self.cfg.model.family}, lr {lr}); lower model.params.label_lr")
        return {"loss": mean, "lr": lr, "valid_negative_fraction": st.valid_negative_fraction}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _energies(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.model.pair_energy(pairs)

    @torch.no_grad()
    def _edge_metrics(self, split: str) -> dict[str, float]:
        pos, neg = self.eval_pairs[split]
        e_pos, e_neg = self._energies(pos), self._energies(neg)
        lo, hi = f1_optimal_interval(e_pos, e_neg)[:2]
        if split == "val":
            self.threshold = lo
            self.threshold_midpoint = place_threshold(lo, hi, "midpoint")
        elif self.threshold is None or self.threshold_midpoint is None:
            self._edge_metrics("val")
        # width of this split's interval of F1-optimal thresholds in units of the margin α:
        # how far apart the cut leaves the energies (0 when nothing lies above the cut); a
        # tie-break for runs whose val F1 saturates at 1.0
        out: dict[str, float] = {
            "edge_gap": (hi - lo) / float(self.model.margin) if math.isfinite(hi) else 0.0}
        # thesis protocol (threshold = val energy at the best cut), and the max-margin threshold
        # of the same val-F1-maximising interval (metrics/edges.py); both chosen on val only
        thresholds = {"": float(self.threshold),  # type: ignore[arg-type]
                      "_midpoint": float(self.threshold_midpoint)}  # type: ignore[arg-type]
        for suffix, t in thresholds.items():
            f1, prec, rec = f1_at_threshold(e_pos, e_neg, t)
            out.update({f"edge_f1{suffix}": f1, f"edge_precision{suffix}": prec,
                        f"edge_recall{suffix}": rec, f"threshold{suffix}": t})
        loss = (e_pos.sum() + (self.model.margin - e_neg).clamp_min(0).sum()) / max(len(pos), 1)
        return {**out, "loss": float(loss)}

    def reconstruction(self) -> dict[str, float]:
        """All-ordered-pairs reconstruction (thesis §6.1.1), cached per parameter update."""
        return self._reconstruction(self.steps, self.model.energy, self.model, self.closure,
                                    self.basic)

    def evaluate(self, split: str) -> dict[str, float]:
        if split not in ("val", "test"):
            raise ConfigError(f"label embeddings evaluate 'val' or 'test', got {split!r}")
        self.model.eval()
        out = self._edge_metrics(split)
        out.update(self.reconstruction())
        return out

    # ------------------------------------------------------------------ state / export
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "threshold": self.threshold,
            "threshold_midpoint": self.threshold_midpoint,
            "steps": self.steps,
            "generator": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:  # absent from best.pt (inference state)
            load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.threshold = state.get("threshold")
        self.threshold_midpoint = state.get("threshold_midpoint")
        self.steps = int(state.get("steps", 0))
        if state.get("generator") is not None:
            self.gen.set_state(state["generator"].cpu())
        self._reconstruction.clear()

    def reports(self, split: str) -> dict[str, str]:
        return {}

    @property
    def geometry(self) -> str:
        return self.model.geometry

    @torch.no_grad()
    def embeddings(self) -> torch.Tensor:
        """``[N, d]`` label embeddings f(u) (on the CPU)."""
        return self.model().detach().cpu()

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write ``label_embeddings.pt``, ``label_nodes.json`` and ``label_embedding.json``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.threshold is None:
            self.evaluate("val")
        torch.save(self.embeddings(), out_dir / EMBEDDINGS_FILE)
        (out_dir / NODES_FILE).write_text(json.dumps(list(self.nodes)))
        meta = {"family": self.cfg.model.family, **self.model.describe(),
                "threshold": self.threshold,
                "threshold_midpoint": self.threshold_midpoint,
                "convention": "edge (u, v) means v is-a u; predict an edge iff "
                              "E(f(u), f(v)) <= threshold (the thesis protocol; "
                              "threshold_midpoint is the max-margin choice)",
                "splits": {**self.splits.summary(), **self.splits.meta}}
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return {"task": TASK, "files": [EMBEDDINGS_FILE, NODES_FILE, META_FILE],
                "threshold": self.threshold, "energy": self.model.energy_kind,
                "geometry": self.model.geometry}

