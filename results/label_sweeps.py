"""Label-only sweeps (thesis §5.5; issue 14): test edge F1 against the share of non-basic
edges in train, several split seeds per cell, run in-process (no Ray, no MLflow).

Each run trains one fixed configuration (no search) on one seeded edge split, evaluates val
every ``--eval-every`` epochs and keeps the best val epoch (strictly higher val F1, or equal
val F1 with a wider val-optimal threshold interval: the ``tie_break: val_edge_gap`` rule of the
shipped searches), and reports test F1 there at the thesis threshold (lowest val-optimal one)
and at the midpoint threshold. Split seed = trial seed = s for s in ``--seeds``, so the spread
of a cell covers both the split and the initialisation. The all-pairs reconstruction is not
computed (it is not needed for edge F1 and costs more than an epoch on ETHEC).

Sweeps (``SWEEPS``):

* ``ethec``: OE, EC and HC at d = 10 on the ETHEC label tree (../shared/data/ethec), the d = 10
  configurations that results/ethec_label_embeddings.md selected (OE, EC: Table 6.1 round t61b;
  HC: ``adam_expmap0`` lr 1e-3, α 0.1, docs/embeddings.md).
* ``cones``: hyperbolic cones on generated trees (Fig. 6.3: L = 4, b = 3 and L = 3, b = 7) and
  on a Debian-WordNet subtree (``carnivore.n.01``: 366 synsets, 1456 closure edges), three
  variants: today's ``adam_expmap0`` (random init), the published recipe ``rsgd`` from
  ``poincare_init`` (Poincaré pre-training 100 epochs at lr 0.03, 20 burn-in epochs at lr/10,
  ×0.7 rescale; then RSGD, margin 0.01), and ``rsgd`` from the random init (the variant whose
  trials stayed at the all-positive F1).
* ``t61``: Table 6.1 on several split seeds: each cell's configuration selected in round t61b
  (the configurations of search_spaces/ethec_tables/ethec_t61s_*.yaml), ``--fractions 0.5``.
* ``rsgd_lr``: the diagnostic: RSGD at lr 3e-4 .. 0.1 from the random init and from
  ``poincare_init`` (tree L = 4, b = 3, 25 %), with the largest top-level norm at the end.
* ``wordnet_lr``: ``rsgd`` + ``poincare_init`` at Ganea et al.'s lr 3e-4 on the WordNet subtree.
* ``pilot``: the learning rates the ``cones`` variants use, chosen on tree L = 4, b = 3 at 25 %,
  split seed 9 (not one of the sweep's seeds).

usage:
  python results/label_sweeps.py run SWEEP [--seeds 0 1 2] [--epochs N] [--eval-every K]
                                 [--fractions 0 0.1 0.25 0.5] [--only SUBSTRING] [--out CSV]
  python results/label_sweeps.py table CSV [--pivot]  # markdown: mean ± sd, min–max, n per cell
  python results/label_sweeps.py pretrain [--source tree:4:3] [--seeds 0 1 2]
      # Poincaré pre-training alone, negatives replacing the parent vs the child: mean norm
      # per depth and the share of closure edges whose parent is nearer the origin

Rows are appended to the CSV as each run finishes (a killed sweep keeps what it finished).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from hpsearch.data.labels import LabelGraph, load_label_hierarchy
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.label_embedding.experiment import LabelEmbeddingExperiment

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.0, 0.1, 0.25, 0.5)
FIELDS = ("sweep", "source", "method", "fraction", "seed", "epochs", "best_epoch",
          "val_f1", "val_gap", "test_f1", "test_f1_midpoint", "n_val", "n_test", "n_train",
          "all_positive_f1", "top_norm_max", "parent_nearer", "init_s", "train_s")


@dataclass(frozen=True)
class Method:
    """One fixed configuration: a family, its ``model.params``, the learning rate, the batch."""

    name: str
    family: str
    lr: float
    params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 10


# d = 10 cells of Table 6.1 round t61b (results/ethec_t61b_midpoint.csv, selected runs)
ETHEC = (
    Method("OE", "order_embedding", 0.0709,
           {"margin": 2.24, "energy": "squared", "negatives_per_side": 10,
            "negative_strategy": "uniform"}),
    Method("EC", "euclidean_cone", 0.0919,
           {"margin": 0.154, "K": 4.36, "energy": "angle", "negatives_per_side": 5,
            "negative_strategy": "uniform"}),
    Method("HC", "hyperbolic_cone", 1e-3,
           {"optimizer": "adam_expmap0", "margin": 0.1, "K": 0.1, "energy": "angle"}),
)
POINCARE = {"init": "poincare_init", "init_epochs": 100, "init_lr": 0.03, "init_burn_in": 20,
            "init_rescale": 0.7, "init_corrupt": "parent"}
CONE_BASE = {"K": 0.1, "energy": "angle", "negative_strategy": "uniform"}


def cones(expmap0_lr: float = 1e-3, rsgd_lr: float = 1e-3) -> tuple[Method, ...]:
    return (
        Method("HC adam_expmap0", "hyperbolic_cone", expmap0_lr,
               {**CONE_BASE, "optimizer": "adam_expmap0", "margin": 0.1}),
        Method("HC rsgd + poincare_init", "hyperbolic_cone", rsgd_lr,
               {**CONE_BASE, "optimizer": "rsgd", "margin": 0.01, **POINCARE}),
        Method("HC rsgd (random init)", "hyperbolic_cone", rsgd_lr,
               {**CONE_BASE, "optimizer": "rsgd", "margin": 0.01}),
    )


PILOT = tuple(
    Method(f"{m.name} lr {lr:g}", m.family, lr, m.params)
    for m, lrs in zip(cones()[:2], ((1e-3, 1e-2), (1e-3, 3e-3, 1e-2)), strict=True)
    for lr in lrs)
# Table 6.1 round t61b, the selected run of each cell (results/ethec_label_embeddings.md,
# "selected params", 3 significant digits; OE d = 3 is left out: its negative strategy is not
# printed there). Same configurations as search_spaces/ethec_tables/ethec_t61s_*.yaml.
_OE, _EC = "order_embedding", "euclidean_cone"
T61 = tuple(Method(f"{fam} d={d}", family, lr, {"dim": d, **p}) for fam, family, d, lr, p in (
    ("OE", _OE, 2, 0.0997, {"margin": 0.555, "negatives_per_side": 10}),
    ("OE", _OE, 5, 0.0400, {"margin": 0.555, "negatives_per_side": 10}),
    ("OE", _OE, 10, 0.0709, {"margin": 2.24, "negatives_per_side": 10}),
    ("OE", _OE, 100, 0.0321, {"margin": 0.503, "negatives_per_side": 5}),
    ("EC", _EC, 2, 0.284, {"margin": 0.0049, "K": 3.14, "negative_strategy": "per_level"}),
    ("EC", _EC, 3, 0.0604, {"margin": 0.0959, "K": 1.85, "negatives_per_side": 10,
                             "negative_strategy": "per_level"}),
    ("EC", _EC, 5, 0.0822, {"margin": 0.0119, "K": 1.54}),
    ("EC", _EC, 10, 0.0919, {"margin": 0.154, "K": 4.36, "energy": "angle"}),
    ("EC", _EC, 100, 0.0441, {"margin": 0.0034, "K": 2.42, "negative_strategy": "per_level"}),
) for p in [{"energy": "squared" if family == _OE else "cosine", "negatives_per_side": 5,
             "negative_strategy": "uniform", **p}])
RSGD_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
RSGD_LR = tuple(
    Method(f"{m.name} lr {lr:g}", m.family, lr, m.params)
    for m in (cones()[2], cones()[1]) for lr in RSGD_LRS)
TREES = ("tree:4:3", "tree:3:7")
WORDNET = ("wordnet:carnivore.n.01",)
SWEEPS: dict[str, tuple[tuple[str, ...], tuple[Method, ...], dict[str, Any]]] = {
    # sources, methods, model.params shared by all (d)
    "ethec": (("ethec",), ETHEC, {"dim": 10}),
    "cones": (TREES + WORDNET, cones(), {"dim": 5}),
    "pilot": (("tree:4:3",), PILOT, {"dim": 5}),
    "rsgd_lr": (("tree:4:3",), RSGD_LR, {"dim": 5}),
    # the published lr (dalab HypCones job) on the WordNet subtree, where 1e-3 peaked early
    "wordnet_lr": (WORDNET, (Method("HC rsgd + poincare_init lr 0.0003", "hyperbolic_cone",
                                    3e-4, cones()[1].params),), {"dim": 5}),
    "t61": (("ethec",), T61, {}),  # run with --fractions 0.5 (and --epochs 300 as t61b)
}


@lru_cache(maxsize=None)
def graph_of(source: str) -> LabelGraph:
    """``ethec`` | ``tree:L:b`` | ``wordnet:<root synset>``."""
    kind, *args = source.split(":")
    if kind == "ethec":
        return load_label_hierarchy("ethec")
    if kind == "tree":
        return load_label_hierarchy("tree", levels=int(args[0]), branching=int(args[1]))
    if kind == "wordnet":
        return load_label_hierarchy("wordnet", root=args[0])
    raise SystemExit(f"unknown source {source!r}; use ethec, tree:L:b or wordnet:<synset>")


def norm_diagnostics(x: torch.Tensor, graph: LabelGraph) -> dict[str, float]:
    """``top_norm_max``: the largest norm of a top-level label (near 1: thrown to the ball
    boundary); ``parent_nearer``: share of closure edges whose parent has the smaller norm."""
    r = x.norm(dim=-1)
    c = torch.as_tensor(graph.closure).reshape(-1, 2)
    depth = torch.as_tensor(graph.hierarchy.depth) if graph.hierarchy is not None else None
    top = float(r[depth == 0].max()) if depth is not None else float("nan")
    return {"top_norm_max": top, "parent_nearer": float((r[c[:, 0]] < r[c[:, 1]]).float().mean())}


def better(f1: float, gap: float, best: tuple[float, float] | None) -> bool:
    """The shipped searches' rule: a higher val F1, or the same val F1 with a wider gap."""
    return best is None or f1 > best[0] or (f1 == best[0] and gap > best[1])


def run_one(graph: LabelGraph, m: Method, dim_params: dict[str, Any], fraction: float,
            seed: int, epochs: int, eval_every: int) -> dict[str, Any]:
    cfg = TrialConfig.from_flat({
        "model.family": m.family, "optim.epochs": epochs, "optim.batch_size": m.batch_size,
        "optim.schedule": "none", "optim.lr": m.lr, "metric": "val_edge_f1", "seed": seed,
        "model.params": {**dim_params, **m.params, "non_basic_fraction": fraction,
                         "split_seed": seed}})
    t0 = time.perf_counter()
    ex = LabelEmbeddingExperiment(cfg, graph=graph)
    init_s = time.perf_counter() - t0
    best: tuple[float, float] | None = None
    row: dict[str, Any] = {}
    for ep in range(1, epochs + 1):
        ex.train_one_epoch(ep)
        if ep % eval_every and ep != epochs:
            continue
        v = ex._edge_metrics("val")  # picks the thresholds on val
        if better(v["edge_f1"], v["edge_gap"], best):
            best = (v["edge_f1"], v["edge_gap"])
            t = ex._edge_metrics("test")
            row = {"best_epoch": ep, "val_f1": v["edge_f1"], "val_gap": v["edge_gap"],
                   "test_f1": t["edge_f1"], "test_f1_midpoint": t["edge_f1_midpoint"]}
    s = ex.splits
    n_pos, n_neg = len(s.val), len(s.val_neg)
    return {**row, **norm_diagnostics(ex.embeddings(), graph),
            "epochs": epochs, "n_val": n_pos, "n_test": len(s.test),
            "n_train": len(s.train), "all_positive_f1": 2 * n_pos / (2 * n_pos + n_neg),
            "init_s": round(init_s, 1), "train_s": round(time.perf_counter() - t0 - init_s, 1)}


def write_row(w: csv.DictWriter, f: Any, row: dict[str, Any]) -> None:
    """One result row, floats rounded to 4 digits, flushed at once (a killed sweep keeps
    what it finished)."""
    w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    f.flush()


def cmd_run(a: argparse.Namespace) -> None:
    sources, methods, dim_params = SWEEPS[a.sweep]
    out = Path(a.out or ROOT / "results" / f"label_sweeps_{a.sweep}.csv")
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        for source in sources:
            g = graph_of(source)
            for m in methods:
                for frac in a.fractions:
                    for seed in a.seeds:
                        cell = f"{source} | {m.name} | {frac:g} | {seed}"
                        if a.only and a.only not in cell:
                            continue
                        r = run_one(g, m, dim_params, frac, seed, a.epochs, a.eval_every)
                        row = {"sweep": a.sweep, "source": source, "method": m.name,
                               "fraction": frac, "seed": seed, **r}
                        write_row(w, f, row)
                        print(f"{cell}: val {r['val_f1']:.3f} test {r['test_f1']:.3f} "
                              f"(ep {r['best_epoch']}, {r['init_s']}+{r['train_s']} s)",
                              flush=True)


def summarize(rows: list[dict[str, str]]) -> dict[tuple[str, str, float], dict[str, Any]]:
    """Per (source, method, fraction): n, mean, sd, min, max of test F1 (thesis threshold),
    mean midpoint test F1, mean val F1, mean best epoch, the all-positive F1."""
    cells: dict[tuple[str, str, float], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        cells[(r["source"], r["method"], float(r["fraction"]))].append(r)
    out = {}
    for key, rs in cells.items():
        t = [float(r["test_f1"]) for r in rs]
        out[key] = {
            "n": len(t), "mean": statistics.fmean(t),
            "sd": statistics.stdev(t) if len(t) > 1 else 0.0, "min": min(t), "max": max(t),
            "mid": statistics.fmean(float(r["test_f1_midpoint"]) for r in rs),
            "val": statistics.fmean(float(r["val_f1"]) for r in rs),
            "epoch": statistics.fmean(float(r["best_epoch"]) for r in rs),
            "epochs": max(int(r["epochs"]) for r in rs),
            "allpos": statistics.fmean(float(r["all_positive_f1"]) for r in rs),
            "n_test": rs[0]["n_test"],
        }
    return out


def cmd_table(a: argparse.Namespace) -> None:
    with open(a.csv) as f:
        s = summarize(list(csv.DictReader(f)))
    if a.pivot:  # one row per (source, method), one column per fraction
        fracs = sorted({k[2] for k in s})
        print("| source | method | " + " | ".join(f"{x:.0%}" for x in fracs) + " |")
        print("|---|---|" + "---|" * len(fracs))
        for src, m in dict.fromkeys((k[0], k[1]) for k in s):
            cells = [s.get((src, m, x)) for x in fracs]
            print(f"| {src} | {m} | " + " | ".join(
                "–" if c is None else f"{c['mean']:.3f} ± {c['sd']:.3f} ({c['min']:.3f}–"
                f"{c['max']:.3f}, n {c['n']})" for c in cells) + " |")
        return
    print("| source | method | non-basic in train | test F1 mean ± sd | min–max | n | "
          "midpoint mean | val F1 mean | best epoch mean / epochs | all-positive F1 | "
          "test edges |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (src, m, frac), c in s.items():
        print(f"| {src} | {m} | {frac:.0%} | **{c['mean']:.3f}** ± {c['sd']:.3f} | "
              f"{c['min']:.3f}–{c['max']:.3f} | {c['n']} | {c['mid']:.3f} | {c['val']:.3f} | "
              f"{c['epoch']:.0f} / {c['epochs']} | {c['allpos']:.3f} | {c['n_test']} |")


def cmd_pretrain(a: argparse.Namespace) -> None:
    import numpy as np

    from hpsearch.data.edge_splits import make_edge_splits
    from hpsearch.tasks.label_embedding.pretrain import poincare_pretrain

    g = graph_of(a.source)
    depth = np.asarray(g.hierarchy.depth)
    for corrupt in ("parent", "child"):
        for seed in a.seeds:
            s = make_edge_splits(len(g.nodes), np.asarray(g.closure), non_basic_fraction=0.25,
                                 basic=g.basic_edges, node_level=depth, seed=seed)
            x = poincare_pretrain(s.train, len(g.nodes), 5, closure=s.closure, corrupt=corrupt,
                                  generator=torch.Generator().manual_seed(seed))
            r = x.norm(dim=-1).numpy()
            by = " / ".join(f"{r[depth == d].mean():.2f}" for d in range(depth.max() + 1))
            print(f"{a.source} corrupt={corrupt} seed {seed}: mean norm by depth {by}; "
                  f"parent nearer the origin for "
                  f"{norm_diagnostics(x, g)['parent_nearer']:.1%} of closure edges")


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("sweep", choices=sorted(SWEEPS))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--epochs", type=int, default=50)
    r.add_argument("--eval-every", type=int, default=5)
    r.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    r.add_argument("--only", default=None, help="run only cells whose 'source | method | "
                   "fraction | seed' label contains this")
    r.add_argument("--out", default=None)
    t = sub.add_parser("table")
    t.add_argument("csv")
    t.add_argument("--pivot", action="store_true", help="one column per fraction")
    pr = sub.add_parser("pretrain")
    pr.add_argument("--source", default="tree:4:3")
    pr.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args(argv)
    {"run": cmd_run, "table": cmd_table, "pretrain": cmd_pretrain}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
