"""Compare the trial runs of two demo searches in their MLflow SQLite stores.

    python results/compare_demo_runs.py OLD/mlflow.db NEW/mlflow.db

One line per trial, matched by its sampled config (lr, optimizer, momentum, weight decay,
resampling, class weights): epochs run, best val micro-F1, test micro-F1 of the best epoch.
"""

from __future__ import annotations

import sqlite3
import sys

SAMPLED = ("optim.lr", "optim.optimizer", "optim.momentum", "optim.weight_decay",
           "data.resample", "data.class_weights")


def trials(db: str) -> list[tuple]:
    c = sqlite3.connect(db)
    runs = [r[0] for r in c.execute(
        "select run_uuid from tags where key = 'hpsearch.role' and value = 'trial'")]
    out = []
    for r in runs:
        p = dict(c.execute("select key, value from params where run_uuid = ?", (r,)))
        m = dict(c.execute("select key, value from latest_metrics where run_uuid = ?", (r,)))
        t = dict(c.execute("select key, value from tags where run_uuid = ?", (r,)))
        out.append((tuple(p.get(k) for k in SAMPLED), t.get("hpsearch.epochs_run"),
                    round(m.get("best_val_micro_f1", -1), 6),
                    round(m.get("test_micro_f1", -1), 6)))
    return sorted(out)


def main(old: str, new: str) -> None:
    a, b = trials(old), trials(new)
    for x, y in zip(a, b, strict=False):
        print("same" if x == y else "DIFF", f"lr={x[0][0][:8]}", x[1:], "|",
              y[1:] if x != y else "")
    print("configs identical:", [x[0] for x in a] == [y[0] for y in b],
          "trials identical:", a == b)


if __name__ == "__main__":
    main(*sys.argv[1:3])
