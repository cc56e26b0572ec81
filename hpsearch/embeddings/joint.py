"""The ``joint_embedding`` experiment: labels and images in one order-preserving space
(thesis §5.6, §6.2).

Graph. Nodes are the N labels (global :class:`~hpsearch.hierarchy.Hierarchy` indices
``0..N-1``) and the M *training* images (``N..N+M-1``). Positives are the label closure plus,
for every training image, one edge from each label of its root path (every level) to the
image: ``|closure| + L·M`` edges, the transitive closure of "label tree + label → image".
val/test images are never in the graph; they are only classified.

Negatives (per positive, drawn on the device every epoch, :class:`JointNegativeSampler`):
``k`` corrupted children (u, v') and ``k`` corrupted parents (u', v). A *label* endpoint is
replaced by a label (``negative_strategy``: pick-per-level, same level as the replaced label,
or any label); an *image* endpoint — only label → image edges have one — by another training
image. Hence a negative is label–label or label → image, **never image–image** (thesis §5.6:
images are not pushed apart unless their labels require it). A candidate that is a positive
(closure edge, or a label on the image's root path) or a self pair is redrawn; after all
rounds it is masked out of the loss.

Loss per batch (eq. 2.3), a sum as in the published code; ``loss`` reported per positive:

    L = Σ_pos E(f(u), f(v)) + Σ_neg max(0, α − E(f(u'), f(v')))

with f = the label table for labels and f_i = map(W · s(φ(i)) + b) for images
(:class:`~hpsearch.models.joint_families.JointEmbedding`); labels and W have separate
optimizers and learning rates (``label_lr``, ``image_lr``).

Classification (eq. 5.1), per level l and image i: ŷ_l(i) = argmin_{u ∈ level l} E(f(u), f_i(i)).
Cone energies are exactly 0 for every cone that contains the image, so ties are common; they are
broken by the signed violation (Ξ − ψ for cones, max_j (x_j − y_j) for order embeddings: how
deep inside the cone/orthant the image lies), never by label index. Metrics (bare names):

* ``micro_f1`` over all (image, level) pairs (= pair accuracy), ``micro_f1_level_<l>``,
  ``macro_f1`` (mean over labels that are true or predicted somewhere; the published code's
  per-level macro divided by N_l + 1), precision/recall variants (``level_metrics``);
* ``hit_at_3``, ``hit_at_5``: the true label is among the k lowest energies of its level,
  averaged over (image, level) pairs (published oe.py);
* label-graph reconstruction over all ordered label pairs (thesis §5.6 "graph reconstruction
  task", no image edges): ``full_f1``, ``recon_tpr``, ``recon_tnr``, ``recon_threshold``,
  ``recon_basic_f1`` (as the label-only experiment).

Features come from a frozen network, extracted once per (source, dataset) and cached
(:mod:`hpsearch.embeddings.features`). Staged init (thesis §6.2.6): ``init=from_run`` loads the
label table from a label-only run's ``label_embeddings.pt`` (its folder, or its checkpoint
directory), matched by label name.

Distributed runs are not data-parallel (every rank runs the same seeded computation); use one
worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geoopt
import numpy as np
import torch
from torch import Tensor

from hpsearch.config import TrialConfig
from hpsearch.data import HierDataset, load_dataset
from hpsearch.embeddings.epoch import margin_epoch
from hpsearch.embeddings.features import SPLITS, cached_features
from hpsearch.embeddings.negatives import (
    LevelPools,
    as_pairs,
    closure_codes,
    corruption_layout,
    is_coded,
    reject_and_redraw,
)
from hpsearch.embeddings.optim import build_optimizer, build_scheduler
from hpsearch.errors import ConfigError, DataError, NonFiniteLossError
from hpsearch.geometry import (
    euclidean_cone_angle,
    euclidean_cone_aperture,
    hyperbolic_cone_angle,
    hyperbolic_cone_aperture,
)
from hpsearch.metrics.classification import level_metrics, levels_to_multihot
from hpsearch.metrics.edges import embedding_reconstruction
from hpsearch.metrics.hierarchical import leaf_lca_heights, mistake_severity, path_consistency
from hpsearch.models.base import task_params
from hpsearch.models.joint_families import (
    TASK,
    JointEmbedding,
    JointEmbeddingParams,
    build_joint_embedding,
    feature_source,
)
from hpsearch.train.experiment import EXPERIMENTS, RunContext

# the label-only experiment's file names (hpsearch.embeddings.experiment, imported lazily: it
# and this module are both imported while the model registry initialises)
EMBEDDINGS_FILE = "label_embeddings.pt"
NODES_FILE = "label_nodes.json"
LABEL_META_FILE = "label_embedding.json"
IMAGE_MAP_FILE = "image_map.pt"
JOINT_META_FILE = "joint_embedding.json"
CHUNK_ELEMS = 1 << 22  # energies × dim per block when scoring all labels against all images
HIT_KS = (3, 5)


# ---------------------------------------------------------------------- negatives
class JointNegativeSampler:
    """Corrupts label–label and label → image positives without ever producing an
    image–image pair; everything lives on ``device``.

    Node ids: labels ``0..N-1``, images ``N..N+M-1``.

    Args:
        num_labels: N.
        closure: ``[E, 2]`` label (ancestor, descendant) pairs.
        label_level: ``[N]`` depth of every label.
        image_labels: ``[M, L]`` *global* label ids of every training image's root path.
        strategy: how a label endpoint is replaced: ``per_level`` (pass i of a side from level
            (i + o) mod (L + 1), o a random rotation per positive and side, slot L = any
            label), ``same_level`` (the replaced label's level) or ``uniform`` (any label).
        negatives_per_side: k; columns ``[0, k)`` are (u, v'), ``[k, 2k)`` are (u', v).
        max_rounds: rejection rounds; after half of them label slots fall back to any label.
        device: where tables and samples live.
    """

    def __init__(self, num_labels: int, closure: np.ndarray | Tensor, label_level: np.ndarray
                 | Tensor, image_labels: np.ndarray | Tensor, *, strategy: str = "per_level",
                 negatives_per_side: int = 5, max_rounds: int = 16,
                 device: torch.device | str = "cpu") -> None:
        if strategy not in ("per_level", "same_level", "uniform"):
            raise ConfigError(f"joint negative_strategy must be per_level, same_level or "
                              f"uniform, got {strategy!r}")
        if negatives_per_side < 1 or max_rounds < 1:
            raise ConfigError(f"negatives_per_side and max_rounds must be >= 1, got "
                              f"{negatives_per_side}, {max_rounds}")
        self.device = torch.device(device)
        self.n = int(num_labels)
        self.k = int(negatives_per_side)
        self.strategy = strategy
        self.max_rounds = int(max_rounds)
        self.codes = closure_codes(closure, self.n, self.device)
        self.level = torch.as_tensor(label_level, dtype=torch.int64).to(self.device)
        self.image_labels = torch.as_tensor(image_labels, dtype=torch.int64).to(self.device)
        self.m = int(self.image_labels.shape[0])  # [M, L] global label ids
        if self.m == 0:
            raise DataError("the joint embedding needs at least one training image")
        self.pools = LevelPools(self.n, self.level, self.device)
        self.any_slot = self.pools.any_slot  # last slot: every label

    # ------------------------------------------------------------------ lookup
    def is_positive(self, u: Tensor, v: Tensor) -> Tensor:
        """Elementwise: is (u, v) an edge of the training graph's closure? Image → anything
        is never one."""
        u_lab, v_img = u < self.n, v >= self.n
        uc = u.clamp(0, self.n - 1)
        ll = is_coded(self.codes, uc * self.n + v.clamp(0, self.n - 1))
        img = (v - self.n).clamp(0, self.m - 1)
        li = self.image_labels[img, self.level[uc]] == uc  # u on the image's root path
        return u_lab & torch.where(v_img, li, ll)

    def _images(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        r = torch.rand(shape, generator=generator, device=self.device)
        return self.n + (r * self.m).long().clamp_max(self.m - 1)

    # ------------------------------------------------------------------ sampling
    def sample(self, pos: Tensor, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """Negatives for positives ``pos [P, 2]`` (parent a label, child a label or image).

        Returns:
            ``(neg [P, 2k, 2], valid [P, 2k])``.
        """
        pos = pos.to(self.device)
        p, k = len(pos), self.k
        fixed, corrupt_child = corruption_layout(pos, k)
        replaced = torch.cat([pos[:, 1:].expand(p, k), pos[:, :1].expand(p, k)], dim=1)
        if self.strategy == "per_level":
            slots = self.pools.rotated_slots(p, k, generator)
        elif self.strategy == "same_level":
            slots = self.level[replaced.clamp_max(self.n - 1)]
        else:
            slots = torch.full((p, 2 * k), self.any_slot, dtype=torch.int64, device=self.device)
        fixed, corrupt_child = fixed.reshape(-1), corrupt_child.reshape(-1)
        as_image = (replaced >= self.n).reshape(-1)  # image endpoints are replaced by images

        def draw(s: Tensor, idx: Tensor) -> Tensor:
            lab = self.pools.draw(s, generator)
            img = self._images(s.shape, generator)
            return torch.where(as_image[idx], img, lab)

        def valid(idx: Tensor, cand: Tensor) -> Tensor:
            parent, child = as_pairs(fixed[idx], cand, corrupt_child[idx])
            return (parent != child) & (parent < self.n) & ~self.is_positive(parent, child)

        cand, ok = reject_and_redraw(slots.reshape(-1), draw, valid,
                                     max_rounds=self.max_rounds, any_slot=self.any_slot)
        parent, child = as_pairs(fixed, cand, corrupt_child)
        return (torch.stack([parent, child], dim=-1).reshape(p, 2 * k, 2),
                ok.reshape(p, 2 * k))


# ---------------------------------------------------------------------- classification
def signed_violation(model: JointEmbedding, x: Tensor, y: Tensor) -> Tensor:
    """Tie-break key for eq. 5.1: negative inside the cone / orthant, larger = worse.

    cones: Ξ(x, y) − ψ(x) (angle units, for either energy space; same zero set as E);
    order embeddings: max_j (x_j − y_j) (≤ 0 iff y ⪰ x).
    """
    if model.geometry == "order":
        return (x - y).amax(-1)
    K = model.labels.K
    if model.geometry == "euclidean_cone":
        return euclidean_cone_angle(x, y) - euclidean_cone_aperture(x, K)
    return hyperbolic_cone_angle(x, y) - hyperbolic_cone_aperture(x, K)


@torch.no_grad()
def classify_levels(model: JointEmbedding, label_emb: Tensor, image_emb: Tensor,
                    offsets: tuple[int, ...], sizes: tuple[int, ...],
                    true_local: Tensor | None = None, ks: tuple[int, ...] = HIT_KS
                    ) -> tuple[Tensor, dict[int, Tensor]]:
    """Eq. 5.1 for every image and level.

    Args:
        model: gives the energy and the tie-break key.
        label_emb: ``[N, d]`` all label embeddings.
        image_emb: ``[n, d]`` image embeddings.
        offsets, sizes: the hierarchy's level layout.
        true_local: ``[n, L]`` true local labels, for hit@k.
        ks: the k of hit@k.

    Returns:
        ``(pred [n, L] local indices, {k: hits [n, L] bool})`` (hits empty without labels).
        Labels are ordered by (E, signed violation); ties in both go to the lower index.
    """
    n, d = image_emb.shape
    pred = torch.zeros(n, len(sizes), dtype=torch.int64, device=image_emb.device)
    hits = {k: torch.zeros(n, len(sizes), dtype=torch.bool, device=image_emb.device)
            for k in (ks if true_local is not None else ())}
    for lvl, (o, s) in enumerate(zip(offsets, sizes, strict=True)):
        lab = label_emb[o:o + s]
        rows = max(1, CHUNK_ELEMS // max(s * d, 1))
        for a in range(0, n, rows):
            img = image_emb[a:a + rows, None, :]  # [r, 1, d]
            e = model.energy(lab[None], img)  # [r, s]
            t = signed_violation(model, lab[None], img)  # [r, s]
            best = e.min(1, keepdim=True).values
            key = torch.where(e <= best, t, torch.full_like(t, float("inf")))
            pred[a:a + rows, lvl] = key.argmin(1)
            if hits:
                y = true_local[a:a + rows, lvl:lvl + 1].to(e.device)  # type: ignore[index]
                e_y, t_y = e.gather(1, y), t.gather(1, y)
                better = (e < e_y) | ((e == e_y) & (t < t_y))
                rank = better.sum(1)  # labels strictly ahead of the true one
                for k in hits:
                    hits[k][a:a + rows, lvl] = rank < k
    return pred, hits


# ---------------------------------------------------------------------- staged init
def load_label_table(path: str | Path, nodes: tuple[str, ...], geometry: str) -> Tensor:
    """``[N, d]`` label embeddings of a finished run, rows in the order of ``nodes``.

    ``path`` is an exported ``label_embeddings.pt``, the folder holding it (with
    ``label_nodes.json`` the rows are matched by name), or a run's checkpoint directory
    (``best.pt``/``checkpoint.pt`` of a ``label_embedding`` or ``joint_embedding`` run).
    """
    p = Path(path).expanduser()
    names: list[str] | None = None
    src_geometry: str | None = None
    folder = p if p.is_dir() else p.parent
    if p.is_dir() and not (p / EMBEDDINGS_FILE).is_file() and (
            (p / "best.pt").is_file() or (p / "checkpoint.pt").is_file()):
        from hpsearch.train.driver import experiment_from_checkpoint

        exp = experiment_from_checkpoint(p)
        if not hasattr(exp, "embeddings"):
            raise ConfigError(f"init_from={str(path)!r} is a {exp.cfg.model.family!r} run; "
                              "staged init needs a label_embedding (or joint) run")
        x = exp.embeddings().detach().cpu()  # type: ignore[attr-defined]
        names = [str(s) for s in exp.nodes]  # type: ignore[attr-defined]
        src_geometry = getattr(getattr(exp, "model", None), "geometry", None)
    else:
        from hpsearch.embeddings.experiment import load_embedding_tensor

        x = load_embedding_tensor(p)
        if (folder / NODES_FILE).is_file():
            names = [str(s) for s in json.loads((folder / NODES_FILE).read_text())]
        for meta in (LABEL_META_FILE, JOINT_META_FILE):
            if (folder / meta).is_file():
                src_geometry = json.loads((folder / meta).read_text()).get("geometry")
                break
    if src_geometry is not None and src_geometry != geometry:
        raise ConfigError(f"init_from={str(path)!r} holds {src_geometry} embeddings; this "
                          f"family needs {geometry} ones (use a run of the matching family)")
    if names is not None:
        if len(names) != len(x):
            raise ConfigError(f"init_from={str(path)!r}: {len(names)} node names for "
                              f"{len(x)} embedding rows")
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in nodes if n not in index]
        if missing:
            raise ConfigError(f"init_from={str(path)!r} has no embedding for {len(missing)} of "
                              f"the {len(nodes)} labels (e.g. {missing[0]!r}); it was trained on "
                              "another label hierarchy")
        x = x[torch.as_tensor([index[n] for n in nodes], dtype=torch.int64)]
    elif len(x) != len(nodes):
        raise ConfigError(f"init_from={str(path)!r} has {len(x)} rows but the hierarchy has "
                          f"{len(nodes)} labels")
    return x


# ---------------------------------------------------------------------- experiment
class JointEmbeddingExperiment:
    """Trains one joint family on an image dataset with a label hierarchy.

    Args:
        cfg: the trial config; ``cfg.model.family`` must be a ``joint_embedding`` family.
        ctx: device / rank.
        dataset: the loaded dataset (``load_dataset(cfg.data)`` when omitted).
    """

    def __init__(self, cfg: TrialConfig, ctx: RunContext | None = None,
                 dataset: HierDataset | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or RunContext()
        self.device = torch.device(self.ctx.device)
        p: JointEmbeddingParams = task_params(  # type: ignore[assignment]
            cfg.model.family, cfg.model.params, TASK, "joint-embedding")
        self.params = p
        self.data = dataset if dataset is not None else load_dataset(cfg.data)
        h = self.data.hierarchy
        self.hierarchy = h
        self.nodes = tuple(h.names)
        n = h.num_nodes
        self._check_labels()

        self.source = feature_source(cfg.model, p)
        feats = cached_features(self.source, cfg.data, self.data, device=self.device,
                                batch_size=p.feature_batch_size)
        self.features = {s: torch.from_numpy(np.array(f, dtype=np.float32)).to(self.device)
                         for s, f in feats.items()}  # [M_s, F]
        self.level_labels = {s: torch.as_tensor(self.data.split(s).level_labels,
                                                dtype=torch.int64, device=self.device)
                             for s in SPLITS}  # [M_s, L] local
        feature_dim = int(self.features["train"].shape[1])

        init_gen = torch.Generator().manual_seed(cfg.seed)
        self.model: JointEmbedding = build_joint_embedding(cfg.model.family, p, n, feature_dim)
        self.model.reset_parameters(init_gen)
        self.model.set_feature_stats(self.features["train"].cpu())
        self.model.to(self.device)
        if p.init == "from_run":
            self.model.labels.set_embeddings(self._init_table())
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)

        self.label_optimizer = build_optimizer([self.model.labels.weight], p.optimizer,
                                               lr=p.label_lr, momentum=p.momentum)
        w = list(self.model.image_map.parameters())
        if p.image_optimizer == "adam":
            self.image_optimizer: torch.optim.Optimizer = torch.optim.Adam(
                w, lr=p.image_lr, weight_decay=p.image_weight_decay)
        else:
            self.image_optimizer = torch.optim.SGD(w, lr=p.image_lr, momentum=p.momentum,
                                                   weight_decay=p.image_weight_decay)
        self.optimizers = (self.label_optimizer, self.image_optimizer)
        self.schedulers = tuple(build_scheduler(o, cfg.optim) for o in self.optimizers)

        offsets = torch.as_tensor(h.offsets, dtype=torch.int64, device=self.device)
        self.offsets = tuple(h.offsets)
        self.level_sizes = tuple(h.level_sizes)
        train_global = self.level_labels["train"] + offsets  # [M, L] label ids of root paths
        m, levels = train_global.shape
        self.closure = torch.as_tensor(h.closure_edges, dtype=torch.int64,
                                       device=self.device).reshape(-1, 2)
        self.basic = torch.as_tensor(h.basic_edges, dtype=torch.int64,
                                     device=self.device).reshape(-1, 2)
        images = n + torch.arange(m, device=self.device).repeat_interleave(levels)
        image_edges = torch.stack([train_global.reshape(-1), images], dim=1)  # [M·L, 2]
        self.train_pos = torch.cat([self.closure, image_edges])
        self.sampler = JointNegativeSampler(
            n, self.closure, torch.as_tensor(h.depth), train_global,
            strategy=p.negative_strategy, negatives_per_side=p.negatives_per_side,
            device=self.device)
        self.steps = 0
        self._recon_cache: tuple[int, dict[str, float]] | None = None
        self._lca: np.ndarray | None = None  # leaf LCA heights, for mistake severity

    def _check_labels(self) -> None:
        h = self.hierarchy
        if not h.is_leveled:
            raise DataError(f"dataset {self.data.name!r}: joint embeddings classify one label "
                            "per level (eq. 5.1) and need a tree whose leaves all lie on the "
                            "last level")
        for s in SPLITS:
            y = self.data.split(s).level_labels
            if y.ndim != 2 or y.shape[1] != h.num_levels or (len(y) and (
                    (y < 0).any() or (y >= np.asarray(h.level_sizes)).any())):
                raise DataError(f"dataset {self.data.name!r} split {s}: level labels of shape "
                                f"{y.shape} do not fit the hierarchy's levels "
                                f"{list(h.level_sizes)}")

    def _init_table(self) -> Tensor:
        p = self.params
        x = load_label_table(p.init_from, self.nodes, self.model.geometry)  # type: ignore
        if x.ndim != 2 or x.shape[1] != p.dim:
            raise ConfigError(f"init_from={p.init_from!r} holds {x.shape[-1]}-d label "
                              f"embeddings but model.params.dim={p.dim}; set dim to "
                              f"{x.shape[-1]} or use a run of dimension {p.dim}")
        return x

    # ------------------------------------------------------------------ embeddings
    def _embed(self, ids: Tensor, split: str = "train") -> Tensor:
        """Embeddings of node ids (labels < N <= images of ``split``): ``[..., d]``; each
        distinct node is embedded once."""
        n = self.model.num_labels
        uniq, inv = torch.unique(ids.reshape(-1), return_inverse=True)  # sorted: labels first
        lab = uniq[uniq < n]
        img = uniq[uniq >= n] - n
        parts = [self.model.label_embeddings(lab)]
        if len(img):
            parts.append(self.model.image_embeddings(self.features[split][img]))
        table = torch.cat(parts)
        return table[inv].reshape(*ids.shape, -1)

    def _loss(self, pos: Tensor, neg: Tensor, ok: Tensor) -> Tensor:
        b = len(pos)
        emb = self._embed(torch.cat([pos.reshape(-1, 2), neg.reshape(-1, 2)]))  # [B+B·2k, 2, d]
        e = self.model.energy(emb[:, 0], emb[:, 1])
        e_pos, e_neg = e[:b], e[b:].reshape(ok.shape)
        return e_pos.sum() + ((self.model.margin - e_neg).clamp_min(0) * ok).sum()

    # ------------------------------------------------------------------ training
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        params = [q for q in self.model.parameters() if q.requires_grad]
        st = margin_epoch(self.train_pos, self.sampler, self._loss, self.optimizers, params,
                          batch_size=self.cfg.optim.batch_size,
                          grad_clip=self.cfg.optim.grad_clip, generator=self.gen)
        self.steps += st.steps
        lrs = [float(o.param_groups[0]["lr"]) for o in self.optimizers]
        for sch in self.schedulers:
            if sch is not None:
                sch.step()
        mean = st.mean_loss
        finite = all(bool(torch.isfinite(q).all()) for q in params)
        if not np.isfinite(mean) or not finite:
            raise NonFiniteLossError(
                f"joint-embedding loss became {mean} in epoch {epoch} (family "
                f"{self.cfg.model.family}, label_lr {lrs[0]}, image_lr {lrs[1]}); lower "
                "model.params.label_lr / image_lr or set optim.grad_clip")
        return {"loss": mean, "label_lr": lrs[0], "image_lr": lrs[1],
                "positives": float(st.positives),
                "valid_negative_fraction": st.valid_negative_fraction}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def image_embeddings(self, split: str) -> Tensor:
        """``[M_split, d]`` f_i of every image of ``split`` (on the device)."""
        f = self.features[split]
        rows = max(1, CHUNK_ELEMS // max(f.shape[1], 1))
        parts = [self.model.image_embeddings(f[a:a + rows]) for a in range(0, len(f), rows)]
        return torch.cat(parts) if parts else f.new_zeros(0, self.model.dim)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[Tensor, dict[int, Tensor]]:
        """Eq. 5.1 on ``split``: ``(pred [M, L] local labels, {k: hit@k [M, L]})``."""
        return classify_levels(self.model, self.model.label_embeddings(),
                               self.image_embeddings(split), self.offsets, self.level_sizes,
                               self.level_labels[split])

    @torch.no_grad()
    def reconstruction(self) -> dict[str, float]:
        """Label-graph reconstruction over all ordered label pairs (cached per update)."""
        if self._recon_cache is not None and self._recon_cache[0] == self.steps:
            return self._recon_cache[1]
        n = self.model.num_labels
        if n > self.params.recon_max_nodes:
            out = {"recon_skipped": 1.0}
        elif len(self.closure) == 0:
            out = {"recon_skipped": 1.0}  # a flat label set has no label edges
        else:
            out = embedding_reconstruction(self.model.energy, self.model.label_embeddings(),
                                           self.closure, self.basic, chunk_elems=CHUNK_ELEMS)
        self._recon_cache = (self.steps, out)
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        if split not in SPLITS:
            raise ConfigError(f"joint embeddings evaluate one of {SPLITS}, got {split!r}")
        self.model.eval()
        y = self.level_labels[split]
        if len(y) == 0:
            raise DataError(f"split {split!r} of {self.data.name!r} has no images")
        pred, hits = self.predict(split)
        h = self.hierarchy
        pm = levels_to_multihot(pred, h.offsets, h.num_nodes)
        tm = levels_to_multihot(y, h.offsets, h.num_nodes)
        out = level_metrics(pm, tm, h.offsets, h.level_sizes)
        # the classifiers' hierarchy-aware metrics of the eq. 5.1 prediction, same names
        p_np, y_np = pred.cpu().numpy(), y.cpu().numpy()
        if self._lca is None:
            self._lca = leaf_lca_heights(h)
        out["accuracy"] = float((p_np[:, -1] == y_np[:, -1]).mean())
        out.update(mistake_severity(p_np[:, -1], y_np[:, -1], self._lca))
        out["path_consistency"] = path_consistency(p_np, h)
        for k, hk in hits.items():
            out[f"hit_at_{k}"] = float(hk.double().mean())
            for lvl in range(hk.shape[1]):
                out[f"hit_at_{k}_level_{lvl}"] = float(hk[:, lvl].double().mean())
        out.update(self.reconstruction())
        return out

    # ------------------------------------------------------------------ state / export
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [None if s is None else s.state_dict() for s in self.schedulers],
            "steps": self.steps,
            "generator": self.gen.get_state(),
            "feature_source": self.source.key_parts(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        opt_states = state.get("optimizers")  # absent from best.pt (inference state)
        for o, st in zip(self.optimizers, opt_states or [None] * len(self.optimizers),
                         strict=True):
            if st is None:
                continue
            o.load_state_dict(st)
            if isinstance(o, geoopt.optim.RiemannianAdam):
                # torch turns the int "step" into a tensor on load; geoopt's bias correction
                # then rounds differently (see LabelEmbeddingExperiment.load_state_dict)
                for s in o.state.values():
                    if isinstance(s.get("step"), torch.Tensor):
                        s["step"] = int(s["step"].item())
        for sch, st in zip(self.schedulers, state.get("schedulers") or [None, None],
                           strict=True):
            if sch is not None and st is not None:
                sch.load_state_dict(st)
        self.steps = int(state.get("steps", 0))
        if state.get("generator") is not None:
            self.gen.set_state(state["generator"].cpu())
        self._recon_cache = None

    @torch.no_grad()
    def embeddings(self) -> Tensor:
        """``[N, d]`` label embeddings (CPU): lets a joint run seed another (staged init)."""
        return self.model.label_embeddings().detach().cpu()

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write ``label_embeddings.pt`` ([N, d] f_l), ``label_nodes.json``, ``image_map.pt``
        (W, b, feature μ/σ) and ``joint_embedding.json`` (geometry, energy, feature source)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.embeddings(), out_dir / EMBEDDINGS_FILE)
        (out_dir / NODES_FILE).write_text(json.dumps(list(self.nodes)))
        m = self.model
        image_map = {"weight": m.image_map.weight.detach().cpu(),
                     "bias": None if m.image_map.bias is None else m.image_map.bias.detach().cpu(),
                     "feature_mean": m.feature_mean.detach().cpu(),
                     "feature_scale": m.feature_scale.detach().cpu()}
        torch.save(image_map, out_dir / IMAGE_MAP_FILE)
        meta = {"family": self.cfg.model.family, **m.describe(),
                "feature_source": self.source.describe(),
                "feature_source_key": self.source.key_parts(),
                "levels": {"offsets": list(self.offsets), "sizes": list(self.level_sizes)},
                "convention": "edge (u, v) means v is-a u; an image i gets, per level, the "
                              "label u minimising E(f(u), f_i(i)), f_i = map(W ((phi - mean) / "
                              "scale) + b) (thesis eq. 5.1, 5.2)"}
        (out_dir / JOINT_META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return {"task": TASK, "files": [EMBEDDINGS_FILE, NODES_FILE, IMAGE_MAP_FILE,
                                        JOINT_META_FILE],
                "energy": m.labels.energy_kind, "geometry": m.geometry,
                "feature_source": self.source.describe()}


EXPERIMENTS.add(TASK, JointEmbeddingExperiment)
