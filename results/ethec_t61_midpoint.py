"""Table 6.1 with the midpoint threshold: re-evaluate every Table 6.1 trial's best checkpoint.

Two rounds of searches:

* ``t61``: the searches of results/run_ethec_tables.sh (``ethec_t61_*.yaml``, three rounds of
  searches pooled per cell, 22-23 Nov);
* ``t61b``: one search per cell on one code version with ``tie_break: val_edge_gap``
  (``ethec_t61b_*.yaml``, run by ``results/run_ethec_tables.sh t61b``).

Every trial kept the weights of its best val epoch in MLflow (``checkpoint/best.pt``). This
script rebuilds each one
(``experiment_from_checkpoint``: same config, same seeded split), evaluates val (which picks both
thresholds) and test, and

* checks that the thesis-protocol test F1 it recomputes equals the ``test_edge_f1`` the search
  logged for that epoch (the reproduction check: a mismatch is counted and printed);
* adds the test F1 at the midpoint threshold (metrics/edges.py), with TP / FP / FN.

The fixed val/test *negatives* come from the negative sampler, whose random stream changed in
commit c478f8b (23 Nov 01:38:40 UTC); the positives did not change. Runs started before that
commit are therefore evaluated on the negatives that code drew (its ``negatives.py``, read
with ``git show c478f8b^:...``), runs after it on today's: each run is scored on the val/test
set it was selected on, which the reproduction check confirms.

Selection is on val only. ``t61``: the rule of results/ethec_label_embeddings.md, unchanged:
the highest ``best_val_edge_f1`` over the pooled searches of a cell, ties to the earlier best
epoch, then the earlier trial. ``t61b``: the highest ``best_val_edge_f1``, ties to the larger
``best_val_edge_gap`` (the search's tie_break), then the earlier best epoch and trial. The
midpoint threshold has the same val F1 by construction, so it cannot change which run is
selected.

The per-cell table adds a 95 % bootstrap interval of the selected run's test F1 (2000
resamples of the 62 test positives and, independently, of their negatives; seed 0): what one
test edge more or less is worth against the thesis' single number.

usage: python results/ethec_t61_midpoint.py [t61|t61b] [EVIDENCE_DIR]
       (defaults t61 and /tmp/ethec-evidence; the store is EVIDENCE_DIR/<round>/mlflow.db)
writes results/ethec_<round>_midpoint.csv (one row per trial) and prints the per-cell table.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml

from hpsearch.tasks.runner import experiment_from_checkpoint
from hpsearch.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
THESIS = {("order_embedding", d): v for d, v in zip((2, 3, 5, 10, 100),
                                                     (.8271, .9302, .9457, .9920, .9920))}
THESIS.update({("euclidean_cone", d): v for d, v in zip((2, 3, 5, 10, 100),
                                                        (.8550, .9979, .9593, .9919, .9752))})


SAMPLER_CHANGE = datetime(2026, 11, 23, 1, 38, 40, tzinfo=timezone.utc)  # commit c478f8b


def old_sampler_module():
    src = subprocess.run(["git", "-C", str(ROOT), "show",
                          "c478f8b^:hpsearch/data/negatives.py"],
                         check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("negatives_before_c478f8b", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(compile(src, "negatives_before_c478f8b.py", "exec"), mod.__dict__)
    return mod


def use_old_eval_negatives(exp, old) -> None:
    """Redraw the fixed val/test negatives as splits._fixed_negatives did before c478f8b."""
    p, sp = exp.params, exp.splits
    sampler = old.NegativeSampler(sp.num_nodes, sp.closure, node_level=sp.node_level,
                                  strategy=p.eval_negative_strategy,
                                  negatives_per_side=p.eval_negatives_per_side, max_rounds=200)
    for i, split in enumerate(("val", "test")):
        pos = exp.eval_pairs[split][0]
        seed = int(np.random.default_rng([p.split_seed, 2, i]).integers(2**62))
        neg, ok = sampler.sample(pos.cpu(), generator=torch.Generator().manual_seed(seed))
        exp.eval_pairs[split] = (pos, neg[ok].reshape(-1, 2).to(pos.device))
    exp.threshold = exp.threshold_midpoint = None


def counts(exp, split: str, t: float) -> tuple[int, int, int]:
    pos, neg = exp.eval_pairs[split]
    with torch.no_grad():
        e_pos, e_neg = exp.model.pair_energy(pos), exp.model.pair_energy(neg)
    tp = int((e_pos <= t).sum())
    return tp, int((e_neg <= t).sum()), len(e_pos) - tp


def bootstrap_f1(exp, t: float, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    pos, neg = exp.eval_pairs["test"]
    with torch.no_grad():
        hit_p = (exp.model.pair_energy(pos) <= t).double().cpu()
        hit_n = (exp.model.pair_energy(neg) <= t).double().cpu()
    g = torch.Generator().manual_seed(seed)
    tp = hit_p[torch.randint(len(hit_p), (n, len(hit_p)), generator=g)].sum(1)
    fp = hit_n[torch.randint(len(hit_n), (n, len(hit_n)), generator=g)].sum(1)
    f1 = 2 * tp / (2 * tp + fp + (len(hit_p) - tp))
    lo, hi = torch.quantile(f1, torch.tensor([0.025, 0.975], dtype=f1.dtype)).tolist()
    return lo, hi


def main(rnd: str, evid: Path) -> None:
    db = evid / rnd / "mlflow.db"
    cells: dict[tuple[str, int], list] = {}
    for space_file in sorted((ROOT / "search_spaces/ethec_tables").glob(f"ethec_{rnd}_*_d*.yaml")):
        sp = yaml.safe_load(space_file.read_text())
        t = Tracker(f"sqlite:///{db}", sp["name"])
        try:
            runs = t.client.search_runs([t.existing_experiment_id()],
                                        filter_string="tags.`hpsearch.role` = 'trial'",
                                        max_results=1000)
        except Exception:  # noqa: BLE001 - cell not run in this evidence dir
            continue
        runs = [r for r in runs if "best_val_edge_f1" in r.data.metrics]
        cells.setdefault((sp["family"], sp["fixed"]["model.params.dim"]), []).extend(
            (t, sp["name"], r) for r in runs)

    rows, mismatches, old = [], 0, old_sampler_module()
    with tempfile.TemporaryDirectory(prefix="hpsearch-t61-") as tmp:
        for (family, d), runs in sorted(cells.items()):
            runs.sort(key=lambda x: (-x[2].data.metrics["best_val_edge_f1"],
                                     -x[2].data.metrics.get("best_val_edge_gap", 0.0)
                                     if rnd == "t61b" else 0.0,
                                     x[2].data.metrics.get("best_epoch", 1e9),
                                     x[2].info.start_time))
            for i, (t, name, r) in enumerate(runs):
                rid = r.info.run_id
                exp = experiment_from_checkpoint(t.checkpoint_dir(rid, Path(tmp) / rid))
                started = datetime.fromtimestamp(r.info.start_time / 1000, timezone.utc)
                if started < SAMPLER_CHANGE:
                    use_old_eval_negatives(exp, old)
                val, test = exp.evaluate("val"), exp.evaluate("test")
                logged = r.data.metrics.get("test_edge_f1")
                same = logged is not None and abs(test["edge_f1"] - logged) < 1e-9
                mismatches += not same
                lo = counts(exp, "test", test["threshold"])
                mid = counts(exp, "test", test["threshold_midpoint"])
                ci = (bootstrap_f1(exp, test["threshold"]) + bootstrap_f1(
                    exp, test["threshold_midpoint"])) if i == 0 else ("",) * 4
                rows.append({
                    "method": family, "d": d, "experiment": name, "run_id": rid,
                    "selected": int(i == 0),
                    "best_val_edge_f1": round(r.data.metrics["best_val_edge_f1"], 4),
                    "best_val_edge_gap": round(r.data.metrics.get("best_val_edge_gap", val[
                        "edge_gap"]), 4),
                    "best_epoch": int(r.data.metrics.get("best_epoch", -1)),
                    "val_edge_f1_recomputed": round(val["edge_f1"], 4),
                    "test_edge_f1_logged": "" if logged is None else round(logged, 4),
                    "test_edge_f1": round(test["edge_f1"], 4),
                    "reproduced": int(same),
                    "eval_negatives": "before c478f8b" if started < SAMPLER_CHANGE else "current",
                    "test_tp_fp_fn": "/".join(map(str, lo)),
                    "test_edge_f1_midpoint": round(test["edge_f1_midpoint"], 4),
                    "test_tp_fp_fn_midpoint": "/".join(map(str, mid)),
                    "test_edge_f1_ci95": "" if i else f"{ci[0]:.4f}-{ci[1]:.4f}",
                    "test_edge_f1_midpoint_ci95": "" if i else f"{ci[2]:.4f}-{ci[3]:.4f}",
                    "threshold": test["threshold"],
                    "threshold_midpoint": test["threshold_midpoint"],
                    "thesis": THESIS.get((family, d), "")})
    for r in rows:
        if not r["reproduced"]:
            print(f"NOT REPRODUCED {r['experiment']} {r['run_id']}: logged "
                  f"{r['test_edge_f1_logged']}, recomputed {r['test_edge_f1']}")
    out = ROOT / "results" / f"ethec_{rnd}_midpoint.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} trials -> {out}; thesis-protocol test F1 reproduced for "
          f"{len(rows) - mismatches}, mismatched for {mismatches}")
    print("| method | d | run | best val F1 (gap) | best ep | test F1, thesis threshold [95 % CI] "
          "| TP/FP/FN | test F1, midpoint [95 % CI] | TP/FP/FN | thesis "
          "| tied at best val F1: n, midpoint test range |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["selected"]:
            continue
        tied = [x for x in rows if (x["method"], x["d"]) == (r["method"], r["d"])
                and x["best_val_edge_f1"] == r["best_val_edge_f1"]]
        rng = (f"{len(tied)}: {min(x['test_edge_f1_midpoint'] for x in tied):.4f}-"
               f"{max(x['test_edge_f1_midpoint'] for x in tied):.4f}")
        print(f"| {r['method']} | {r['d']} | {r['run_id'][:12]} | {r['best_val_edge_f1']} "
              f"({r['best_val_edge_gap']}) | {r['best_epoch']} | {r['test_edge_f1']:.4f} "
              f"[{r['test_edge_f1_ci95']}] | {r['test_tp_fp_fn']} | "
              f"{r['test_edge_f1_midpoint']:.4f} [{r['test_edge_f1_midpoint_ci95']}] | "
              f"{r['test_tp_fp_fn_midpoint']} | {r['thesis']} | {rng} |")


if __name__ == "__main__":
    rnd = sys.argv[1] if len(sys.argv) > 1 else "t61"
    if rnd not in ("t61", "t61b"):
        sys.exit(f"round must be t61 or t61b, got {rnd!r}")
    main(rnd, Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/ethec-evidence"))
