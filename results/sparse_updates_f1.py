"""Dense vs row-sparse label-table updates (issue 15 item 3): the same ETHEC d = 10 runs of
``results/label_sweeps.py`` (sweep ``ethec``: its EC and HC configurations, 40 epochs, the
best-val-epoch rule with val evaluated every epoch, split seed = trial seed), once with
``model.params.sparse_updates`` off and once on, seed by seed.

usage:
  python results/sparse_updates_f1.py [--methods EC HC] [--seeds 0 1 2] [--epochs 40]
                                      [--fraction 0.5] [--out results/sparse_updates_f1.csv]
  python results/sparse_updates_f1.py --table CSV   # markdown: mean ± sd per (method, mode)

Rows are appended to the CSV as each run finishes.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_sweeps import ETHEC, graph_of, run_one, write_row  # noqa: E402

FIELDS = ("method", "sparse_updates", "fraction", "seed", "epochs", "best_epoch", "val_f1",
          "test_f1", "test_f1_midpoint", "n_test", "train_s")


def table(path: str) -> str:
    cells: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            cells[(r["method"], r["sparse_updates"])].append(r)
    lines = ["| method | sparse_updates | n | val F1 | test F1 mean ± sd (min–max) | "
             "test F1 per seed | train s / run |", "|---|---|---|---|---|---|---|"]
    for (m, sp), rs in sorted(cells.items()):
        t = [float(r["test_f1"]) for r in rs]
        v = [float(r["val_f1"]) for r in rs]
        sd = statistics.stdev(t) if len(t) > 1 else 0.0
        per = ", ".join(f"{r['seed']}: {float(r['test_f1']):.3f}" for r in rs)
        lines.append(f"| {m} | {sp} | {len(t)} | {statistics.fmean(v):.3f} | "
                     f"{statistics.fmean(t):.3f} ± {sd:.3f} ({min(t):.3f}–{max(t):.3f}) | "
                     f"{per} | {statistics.fmean(float(r['train_s']) for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["EC", "HC"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent
                                         / "sparse_updates_f1.csv"))
    ap.add_argument("--table")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return
    g = graph_of("ethec")
    methods = [m for m in ETHEC if m.name in a.methods]
    new = not Path(a.out).exists()
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for m in methods:
            for seed in a.seeds:
                for sparse in (False, True):
                    mm = replace(m, params={**m.params, "sparse_updates": sparse})
                    r = run_one(g, mm, {"dim": 10}, a.fraction, seed, a.epochs, 1)
                    row = {"method": m.name, "sparse_updates": sparse, "fraction": a.fraction,
                           "seed": seed, **r}
                    write_row(w, f, row)
                    print(f"{m.name} sparse={sparse} seed {seed}: val {r['val_f1']:.3f} "
                          f"test {r['test_f1']:.3f} (ep {r['best_epoch']}, {r['train_s']} s)",
                          flush=True)


if __name__ == "__main__":
    main()
