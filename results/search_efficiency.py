"""Search efficiency (issue 15 item 1): how much compute each sampler x scheduler pair needs to
find a good trial, counted in trial-epochs (noise-free, unlike wall time on a shared machine).

For one base space, every arm (``tpe_asha``, ``random_asha``, ``tpe_fifo``, ``random_fifo``)
runs the same search (same dimensions, ``num_samples``, ``max_epochs``, concurrency) once per
seed, each a real ``hpsearch search`` (Ray Tune + Optuna + MLflow, one subprocess per search,
as a user starts it; ``--seed s`` seeds the sampler and the trials). Afterwards every trial
run's history of the selection metric is read back from MLflow:

* an evaluation at epoch ``e`` of a trial costs ``e - e_prev`` trial-epochs (``e_prev`` its
  previous evaluation, 0 at first), so a trial's total is the epochs it trained;
* the search's events are ordered by MLflow timestamp (the order the driver saw them), giving
  the best-found-vs-compute curve ``(cumulative trial-epochs, best metric so far)``;
* compute-to-target of an arm on seed ``s`` = the trial-epochs after which its best reached
  ``random_fifo``'s final best on the same seed (``inf``: never reached within the budget).

usage:
  python results/search_efficiency.py run  --space search_spaces/demo.yaml --seeds 0 1 2 3 4 \
      --out /tmp/se/demo [--arms tpe_asha random_fifo ...] [--num-samples N] [--max-epochs E]
  python results/search_efficiency.py report --space search_spaces/demo.yaml --out /tmp/se/demo \
      [--png results/search_efficiency_demo.png] [--csv results/search_efficiency_demo.csv]

``run`` skips a (arm, seed) whose search finished before (a marker file in ``--out``), so an
interrupted benchmark continues. The MLflow store is ``--out``/mlflow.db (``hpsearch
search --results-dir``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

ARMS: dict[str, tuple[str, str]] = {  # arm -> (sampler.type, scheduler)
    "tpe_asha": ("tpe", "asha"),
    "random_asha": ("random", "asha"),
    "tpe_fifo": ("tpe", "fifo"),
    "random_fifo": ("random", "fifo"),
}
BASELINE = "random_fifo"

Event = tuple[float, str, int, float]  # (timestamp ms, trial run id, epoch, metric value)


def arm_space(base: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """The base space with the arm's sampler and scheduler and a name of its own."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    sampler_type, scheduler = ARMS[arm]
    sp = copy.deepcopy(base)
    sampler = dict(sp.get("sampler") or {})
    sampler.update(type=sampler_type, seed=seed)
    if sampler_type == "random":
        sampler.pop("n_startup_trials", None)
        sampler.pop("multivariate", None)
        sampler.pop("constant_liar", None)
    sp["sampler"] = sampler
    sp["scheduler"] = scheduler
    sp["name"] = experiment_name(base["name"], arm, seed)
    return sp


def experiment_name(base: str, arm: str, seed: int) -> str:
    return f"{base}_se_{arm}_s{seed}"


def curve(events: Iterable[Event], mode: str = "max") -> list[tuple[int, float]]:
    """Best-found-vs-compute: ``[(cumulative trial-epochs, best value so far)]``, one point per
    evaluation in timestamp order (ties: by epoch, then run id). Each evaluation costs the
    epochs its trial trained since its previous evaluation."""
    sign = 1.0 if mode == "max" else -1.0
    last: dict[str, int] = {}
    spent, best, out = 0, -math.inf, []
    for ts, run, epoch, value in sorted(events, key=lambda e: (e[0], e[2], e[1])):
        step = epoch - last.get(run, 0)
        if step <= 0:  # the same epoch logged twice (a resumed trial): no new compute
            continue
        last[run] = epoch
        spent += step
        if math.isfinite(value):
            best = max(best, sign * value)
        out.append((spent, sign * best if math.isfinite(best) else math.nan))
    return out


def compute_to_reach(points: Sequence[tuple[int, float]], target: float,
                     mode: str = "max") -> float:
    """Trial-epochs after which the curve's best first reached ``target`` (``inf``: never)."""
    for spent, best in points:
        if not math.isnan(best) and (best >= target if mode == "max" else best <= target):
            return float(spent)
    return math.inf


def search_events(tracker: Any, metric: str) -> list[Event]:
    """Every evaluation of ``metric`` by the experiment's trial runs, from MLflow."""
    out: list[Event] = []
    for r in tracker.runs(role="trial"):
        for h in tracker.metric_history(r.info.run_id, metric):
            out.append((float(h.timestamp), r.info.run_id, int(h.step), float(h.value)))
    return out


def _load_base(path: str) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def run(args: argparse.Namespace) -> None:
    base = _load_base(args.space)
    out = Path(args.out)
    (out / "spaces").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for arm in args.arms:
            sp = arm_space(base, arm, seed)
            done = out / f"{sp['name']}.done"
            if done.exists():
                print(f"{sp['name']}: done before, skipped", flush=True)
                continue
            f = out / "spaces" / f"{sp['name']}.yaml"
            f.write_text(yaml.safe_dump(sp, sort_keys=False))
            cmd = [sys.executable, "-m", "hpsearch.cli", "search", str(f), "--results-dir",
                   str(out), "--seed", str(seed), "-v", "0"]
            if args.num_samples:
                cmd += ["--num-samples", str(args.num_samples)]
            if args.max_epochs:
                cmd += ["--max-epochs", str(args.max_epochs)]
            t0 = time.time()
            with open(out / f"{sp['name']}.log", "w") as log:
                rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            wall = time.time() - t0
            with open(out / "walltimes.txt", "a") as w:
                w.write(f"{sp['name']} wall_s={wall:.0f} rc={rc} "
                        f"load={Path('/proc/loadavg').read_text().split()[:3]}\n")
            print(f"{sp['name']}: rc={rc} wall {wall:.0f} s", flush=True)
            if rc == 0:
                done.write_text(f"{wall:.0f}\n")


def report(args: argparse.Namespace) -> None:
    from hpsearch.tracking import Tracker  # MLflow's client: only the report needs it

    base = _load_base(args.space)
    metric, mode = base["metric"], base.get("mode", "max")
    uri = f"sqlite:///{Path(args.out).resolve() / 'mlflow.db'}"
    curves: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for seed in args.seeds:
        for arm in args.arms:
            t = Tracker(uri, experiment_name(base["name"], arm, seed))
            try:
                ev = search_events(t, metric)
            except Exception:  # noqa: BLE001 - this search has not run (no experiment)
                continue
            if ev:
                curves[(arm, seed)] = curve(ev, mode)
    rows = []
    for (arm, seed), pts in sorted(curves.items()):
        base_pts = curves.get((BASELINE, seed))
        target = base_pts[-1][1] if base_pts else math.nan
        rows.append({"arm": arm, "seed": seed, "trial_epochs": pts[-1][0],
                     "final_best": pts[-1][1], "target": target,
                     "to_target": compute_to_reach(pts, target, mode)
                     if not math.isnan(target) else math.nan})
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["arm"])
            w.writeheader()
            w.writerows(rows)
    print(f"| arm | seeds | trial-epochs, median (min-max) | final best {metric}, median "
          f"(min-max) | reached {BASELINE}'s final best | trial-epochs to reach it, median "
          "(min-max; inf = not reached) |")
    print("|---|---|---|---|---|---|")
    for arm in args.arms:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        te = [r["trial_epochs"] for r in rs]
        fb = [r["final_best"] for r in rs]
        tt = [r["to_target"] for r in rs]
        reached = sum(math.isfinite(v) for v in tt)
        print(f"| {arm} | {len(rs)} | {statistics.median(te):g} ({min(te)}-{max(te)}) | "
              f"{statistics.median(fb):.4f} ({min(fb):.4f}-{max(fb):.4f}) | {reached}/{len(rs)}"
              f" | {statistics.median(tt):g} ({min(tt):g}-{max(tt):g}) |")
    if args.png and curves:
        _plot(curves, args.arms, metric, args.png)


def _plot(curves: dict[tuple[str, int], list[tuple[int, float]]], arms: Sequence[str],
          metric: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arm in enumerate(arms):
        per_seed = [pts for (a, _), pts in curves.items() if a == arm]
        if not per_seed:
            continue
        grid = range(1, max(p[-1][0] for p in per_seed) + 1)
        med, lo, hi = [], [], []
        for x in grid:  # best so far at x trial-epochs, per seed (a seed that stopped: its end)
            vals = [next((b for s, b in reversed(p) if s <= x), math.nan) for p in per_seed]
            vals = [v for v in vals if not math.isnan(v)]
            med.append(statistics.median(vals) if vals else math.nan)
            lo.append(min(vals) if vals else math.nan)
            hi.append(max(vals) if vals else math.nan)
        c = f"C{i}"
        ax.step(list(grid), med, where="post", color=c, label=f"{arm} (median of {len(per_seed)})")
        ax.fill_between(list(grid), lo, hi, step="post", color=c, alpha=0.15)
    ax.set_xlabel("compute (trial-epochs)")
    ax.set_ylabel(f"best {metric} so far")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--space", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
        p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
        if name == "run":
            p.add_argument("--num-samples", type=int)
            p.add_argument("--max-epochs", type=int)
        else:
            p.add_argument("--png")
            p.add_argument("--csv")
    args = ap.parse_args(argv)
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
