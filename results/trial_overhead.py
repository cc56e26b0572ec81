"""Where a trial's time goes (issue 15 item 2): its training epochs against everything else.

``inprocess``: one trial of the space's fixed values (the search dimensions at the values given
by ``--set``) through the real epoch loop, :func:`hpsearch.tasks.runner.run_trial` with a
:class:`DirectoryReporter`, no Ray, no MLflow. The loop's pieces are timed by wrapping them in
place (the functions the runner module calls and the experiment's methods): ``train`` (the
epochs' training passes), ``evaluate_val``, ``evaluate_test`` (run when the best val epoch
improves), ``checkpoint`` (``save_checkpoint`` + ``write_report``), ``report`` (the reporter:
copying the checkpoint directory), ``setup`` (building the experiment: dataset open and cache
check, model, optimizer) and the rest (``other``).

``search``: a real ``hpsearch search`` of the same space; afterwards each trial run in MLflow
gives its wall time (run end - run start, as the driver opened and closed it) and the sum of
its ``train_epoch_time_s`` history, so ``outside = 1 - train / wall`` per trial; the search's
own wall time is measured around the subprocess.

usage:
  python results/trial_overhead.py inprocess --space search_spaces/demo.yaml --epochs 12 \
      [--set optim.lr=0.05 optim.optimizer=sgd ...] [--json OUT]
  python results/trial_overhead.py search --space search_spaces/demo.yaml --out /tmp/ov \
      [--num-samples 4] [--max-epochs 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml


def _timed(store: dict[str, float], key: str, fn: Any) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            store[key] += time.perf_counter() - t0
    return wrapper


def inprocess(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hpsearch.search.space import load_space
    from hpsearch.tasks import runner
    from hpsearch.tasks.base import build_experiment
    from hpsearch.tasks.runner import DirectoryReporter, run_trial

    torch.set_num_threads(args.threads)
    parsed = {"optim.epochs": args.epochs}
    for kv in args.set or []:
        k, v = kv.split("=", 1)
        parsed[k] = yaml.safe_load(v)
    cfg = load_space(args.space).resolve({}, parsed)  # as 'hpsearch train --space' does
    t: dict[str, float] = defaultdict(float)

    def factory(c: Any, ctx: Any) -> Any:
        t0 = time.perf_counter()
        exp = build_experiment(c, ctx)
        t["setup"] += time.perf_counter() - t0
        exp.train_one_epoch = _timed(t, "train", exp.train_one_epoch)
        evaluate = exp.evaluate

        def timed_eval(split: str) -> Any:
            return _timed(t, f"evaluate_{split}", evaluate)(split)
        exp.evaluate = timed_eval
        return exp

    saved = runner.save_checkpoint, runner.write_report
    runner.save_checkpoint = _timed(t, "checkpoint", saved[0])
    runner.write_report = _timed(t, "checkpoint", saved[1])
    try:
        with tempfile.TemporaryDirectory() as d:
            rep = DirectoryReporter(Path(d) / "out")
            rep_call = _timed(t, "report", rep.__call__)
            t0 = time.perf_counter()
            run_trial(cfg, rep_call, experiment_factory=factory)
            wall = time.perf_counter() - t0
    finally:
        runner.save_checkpoint, runner.write_report = saved
    parts = {k: round(v, 3) for k, v in t.items()}
    parts["other"] = round(wall - sum(t.values()), 3)
    out = {"wall_s": round(wall, 3), "epochs": args.epochs, "parts_s": parts,
           "share": {k: round(v / wall, 4) for k, v in parts.items()},
           "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


def search(args: argparse.Namespace) -> None:
    from hpsearch.tracking import Tracker

    sp = yaml.safe_load(Path(args.space).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hpsearch.cli", "search", args.space, "--results-dir", str(out),
           "-v", "0"]
    if args.num_samples:
        cmd += ["--num-samples", str(args.num_samples)]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    t0 = time.time()
    rc = subprocess.call(cmd)
    wall = time.time() - t0
    tr = Tracker(f"sqlite:///{out.resolve() / 'mlflow.db'}", sp["name"])
    rows = []
    for r in tr.runs(role="trial"):
        train = sum(h.value for h in tr.metric_history(r.info.run_id, "train_epoch_time_s"))
        run_wall = (r.info.end_time - r.info.start_time) / 1000
        rows.append((run_wall, train, len(tr.metric_history(r.info.run_id, "epoch"))))
    print(f"search rc={rc} wall {wall:.1f} s, {len(rows)} trials, loadavg "
          f"{Path('/proc/loadavg').read_text().split()[:3]}")
    for run_wall, train, n in rows:
        print(f"  trial: {n} epochs, run wall {run_wall:.1f} s, training {train:.1f} s, "
              f"outside {1 - train / run_wall:.1%}")
    if rows:
        print(f"median outside {statistics.median(1 - tr_ / w for w, tr_, _ in rows):.1%}; "
              f"sum of training {sum(r[1] for r in rows):.1f} s in {wall:.1f} s of search")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inprocess")
    p.add_argument("--space", required=True)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*")
    p.add_argument("--json")
    s = sub.add_parser("search")
    s.add_argument("--space", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--num-samples", type=int)
    s.add_argument("--max-epochs", type=int)
    args = ap.parse_args(argv)
    inprocess(args) if args.cmd == "inprocess" else search(args)


if __name__ == "__main__":
    main()
