"""Command line: parse, dispatch, print. The only module that reads argv; a thin layer over
:mod:`hpsearch.api`, :mod:`hpsearch.report` and the search.

Every :class:`HpsearchError` becomes one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

# library deprecation chatter (torch.jit in geoopt, optuna, ray) is not for CLI users; the
# filters must be in place before the imports below load those libraries
for _category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
    warnings.filterwarnings("ignore", category=_category)

from hpsearch import api, bench  # noqa: E402
from hpsearch.bundle import Predictor, load_bundle  # noqa: E402
from hpsearch.class_embeddings import class_embeddings_command  # noqa: E402
from hpsearch.data import DATASETS  # noqa: E402
from hpsearch.errors import HpsearchError  # noqa: E402
from hpsearch.models import BACKBONES, FAMILIES  # noqa: E402
from hpsearch.report import best_table, hedge_curve_csv, run_report  # noqa: E402
from hpsearch.search.space import load_space  # noqa: E402
from hpsearch.tasks import TASKS, TrialConfig  # noqa: E402
from hpsearch.tracking import Tracker  # noqa: E402

DEMO_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
REPORT_EXTRA = ("mistake_severity,hdist_at_5,path_consistency,mahp_250,accuracy,"
                "balanced_accuracy")


# ---------------------------------------------------------------------- commands
def cmd_search(args: argparse.Namespace) -> int:
    from hpsearch.search.tuner import SearchOptions, run_search  # Ray: only when searching

    space = load_space(args.space)
    opts = SearchOptions(num_samples=args.num_samples, max_epochs=args.max_epochs,
                         data_root=args.data_root, experiment=args.experiment,
                         tracking_uri=args.tracking_uri, address=args.address, seed=args.seed,
                         resume=args.resume, results_dir=args.results_dir,
                         verbose=args.verbose)
    out = run_search(space, opts)
    print(f"\nsearch {out.search_id}: {out.num_trials} trials, {out.num_stopped_early} stopped "
          f"early by ASHA, {out.num_errors} failed, {out.wall_s:.0f} s")
    if out.interrupted:
        print(f"hpsearch: search interrupted ({out.num_unfinished} unfinished trial runs marked "
              f"KILLED in MLflow); continue it with: hpsearch search {args.space} --resume"
              + (f" --results-dir {args.results_dir}" if args.results_dir else ""),
              file=sys.stderr)
        return 130
    print(f"MLflow experiment {out.experiment!r} at {out.tracking_uri} "
          f"(parent run {out.parent_run_id})")
    if not out.num_trials:
        print("hpsearch: error: no trial ran", file=sys.stderr)
        return 1
    t = Tracker(out.tracking_uri, out.experiment)
    if out.num_errors >= out.num_trials:
        errs = t.trial_errors(out.search_id, 1)
        first = f"; first error (run {errs[0][0]}): {errs[0][1]}" if errs else ""
        print(f"hpsearch: error: all {out.num_trials} trials failed{first}", file=sys.stderr)
        return 1
    if out.best and out.best.get("value") is not None:
        print(f"best {out.best['metric']} = {out.best['value']:.4f}")
    _print_best(t, space.metric, t.best_runs(
        space.metric, space.mode, 3, search_id=out.search_id, tie_break=space.tie_break,
        tie_break_mode=space.tie_break_mode))
    if args.export_best:
        rid, bundle = api.export_best(t, out.search_id, space.metric, space.mode,
                                      args.export_best, tie_break=space.tie_break,
                                      tie_break_mode=space.tie_break_mode)
        print(f"exported run {rid} -> {bundle}")
    return 0


def _print_best(t: Tracker, metric: str, runs: list) -> None:
    if not runs:
        print(f"no runs with metric {metric!r} in experiment {t.experiment_name!r}")
        return
    print(best_table(metric, runs))


def cmd_best(args: argparse.Namespace) -> int:
    t = api.open_tracker(args.tracking_uri, args.results_dir, args.experiment)
    args.metric = args.metric or api.default_metric(t)
    runs = t.best_runs(args.metric, args.mode, args.top, tie_break=args.tie_break,
                       tie_break_mode=args.tie_break_mode)
    if not runs:
        raise HpsearchError(f"no trial runs with metric {args.metric!r} in experiment "
                            f"{args.experiment!r}")
    _print_best(t, args.metric, runs)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.register and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*", args.register):
        raise HpsearchError(f"--register {args.register!r}: a model name is letters, digits, "
                            "'_', '-', '.' and spaces, starting with a letter or digit")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise HpsearchError(f"--out {args.out} is a file; give a new or empty directory")
    t = api.open_tracker(args.tracking_uri, args.results_dir, None)
    out = api.export_run(t, args.run_id, Path(args.out))
    print(f"exported run {args.run_id} -> {out}")
    if args.register:
        version = t.register_bundle(args.run_id, out, args.register)
        print(f"registered as model {args.register!r} version {version} in the MLflow registry")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    pred = Predictor(load_bundle(args.bundle))
    for r in pred.predict_files(args.images, hedge=args.hedge):
        if args.json:
            print(json.dumps(r))
        else:
            path = " > ".join(f"{s['label']} ({s['prob']:.3f})" for s in r["path"]) or \
                "(no level reaches the hedge threshold)"
            print(f"{r['image']}: {path}")
    return 0


def cmd_hedge_curve(args: argparse.Namespace) -> int:
    """Accuracy vs. specificity of hedged predictions over τ on a split; logged to the run."""
    t = api.open_tracker(args.tracking_uri, args.results_dir, None)
    curve = api.hedge_curve(t, args.run_id, args.split, args.points)
    print(hedge_curve_csv(curve).rstrip("\n"))
    print(f"logged hedging/curve_{args.split}.* to run {args.run_id}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Thesis-style tables for the best run(s) of an experiment, or one run, from MLflow."""
    t = api.open_tracker(args.tracking_uri, args.results_dir, args.experiment)
    if args.run_id:
        runs = [t.get_run(args.run_id)]
    else:
        args.metric = args.metric or api.default_metric(t)
        runs = t.best_runs(args.metric, args.mode, args.top, tie_break=args.tie_break,
                           tie_break_mode=args.tie_break_mode)
        if not runs:
            raise HpsearchError(f"no trial runs with {args.metric!r} in experiment "
                                f"{args.experiment!r}")
    extra = [k.strip() for k in args.extra.split(",") if k.strip()]
    for r in runs:
        print(run_report(t, r, args.split, extra))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One trial in this process, no Ray (debugging and the in-process test)."""
    parsed = {k: _parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = (load_space(args.space).resolve({}, parsed) if args.space else
           TrialConfig.from_flat(parsed))
    best = api.train(cfg, args.out, resume=args.resume, echo=print)
    print(f"best {cfg.metric} = {best.value:.4f} at epoch {best.epoch + 1}; checkpoint in "
          f"{args.out}")
    return 0


def _parse_value(v: str):
    """A ``--set KEY=VALUE`` value as YAML reads it (numbers, booleans, lists, strings)."""
    import yaml

    return yaml.safe_load(v)


def cmd_families(args: argparse.Namespace) -> int:
    for name in FAMILIES.names():
        spec = FAMILIES.get(name)
        print(f"{name:<22}{spec.task:<18}{spec.description}")
    print()
    for name in TASKS.names():
        task = TASKS.get(name)
        print(f"task {name:<17}exports {task.exports:<11}{task.description}")
    print(f"\nbackbones: {', '.join(BACKBONES.names())}")
    print(f"datasets:  {', '.join(DATASETS.names())}")
    return 0


def cmd_class_embeddings(args: argparse.Namespace) -> int:
    print(class_embeddings_command(args.hierarchy_file, args.out, args.method, args.dim,
                                   args.is_a, args.class_list))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: a real search on the embedded data, then best, export, predict."""
    args.space = str(DEMO_SPACE)
    if args.export_best is None:
        args.export_best = str(Path(args.results_dir) / "exports" / f"demo-{os.getpid()}")
    rc = cmd_search(args)
    bundle = Path(args.export_best)
    if rc == 0 and bundle.exists():
        imgs, truth = api.demo_images(bundle)
        print("\npredictions of the exported bundle on held-out synthetic test images:")
        for img, true in zip(imgs, truth, strict=True):
            cmd_predict(argparse.Namespace(bundle=str(bundle), images=[img], hedge=None,
                                           json=False))
            print(f"    true: {' > '.join(true)}")
        print("\nwith --hedge 0.5 (stop at the deepest level the model is sure of):")
        cmd_predict(argparse.Namespace(bundle=str(bundle), images=imgs, hedge=0.5, json=False))
    return rc


# ---------------------------------------------------------------------- argument types
def _at_least(lo: int):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {n}")
        return n
    return parse


def _probability(v: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not 0.0 <= x <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {v}")
    return x


def _key_value(v: str) -> str:
    if "=" not in v or not v.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. optim.lr=0.1), got {v!r}")
    return v


# ---------------------------------------------------------------------- parser
def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under "
                   "--results-dir)")
    p.add_argument("--results-dir", default="results", help="where the default MLflow store, "
                   "Ray state and exports live (default: results)")


def _add_ranking(p: argparse.ArgumentParser, top: int) -> None:
    p.add_argument("--experiment", default="demo")
    p.add_argument("--metric", help="rank by this metric (default: the task's, e.g. "
                   "val_micro_f1 for classifiers, val_edge_f1 for label embeddings)")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--tie-break", metavar="METRIC", help="order runs with an equal --metric "
                   "by this one (e.g. val_edge_gap; the search space's tie_break)")
    p.add_argument("--tie-break-mode", choices=["max", "min"], default="max")
    p.add_argument("--top", type=_at_least(1), default=top)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=int, help="number of trials (overrides the space)")
    p.add_argument("--max-epochs", type=int, help="epochs of an unstopped trial")
    p.add_argument("--data-root", help="dataset directory (overrides data.root)")
    p.add_argument("--experiment", help="MLflow experiment (default: the space's name)")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--seed", type=int, help="sampler and training seed")
    p.add_argument("--resume", action="store_true", help="resume the newest unfinished "
                   "search of this space")
    p.add_argument("--export-best", metavar="DIR", help="export the best run to DIR")
    p.add_argument("-v", "--verbose", type=int, default=1, help="Tune verbosity 0-3")
    _add_tracking(p)


def _searching(sub) -> None:
    p = sub.add_parser("search", help="run a search from a YAML space")
    p.add_argument("space", help="search-space YAML (see search_spaces/)")
    _add_search_args(p)
    p.set_defaults(fn=cmd_search)
    p = sub.add_parser("demo", help="search on the embedded data, print the best run, export "
                       "it and predict with it")
    _add_search_args(p)
    p.set_defaults(fn=cmd_demo)


def _results(sub) -> None:
    p = sub.add_parser("best", help="top runs of an experiment from MLflow")
    _add_ranking(p, top=5)
    _add_tracking(p)
    p.set_defaults(fn=cmd_best)
    p = sub.add_parser("report", help="thesis-style per-level tables of the best runs")
    _add_ranking(p, top=1)
    p.add_argument("--run-id")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--extra", default=REPORT_EXTRA,
                   help="more metrics to print, comma-separated")
    _add_tracking(p)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("hedge-curve", help="accuracy vs. specificity of hedged predictions "
                       "over tau on a split, logged as an artifact of the run")
    p.add_argument("run_id")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--points", type=_at_least(2), default=21)
    _add_tracking(p)
    p.set_defaults(fn=cmd_hedge_curve)


def _models(sub) -> None:
    p = sub.add_parser("export", help="write a self-contained bundle of a trial run")
    p.add_argument("run_id")
    p.add_argument("--out", required=True)
    p.add_argument("--register", metavar="MODEL", help="also upload the bundle to the run and "
                   "register it as a new version of MODEL in the MLflow Model Registry")
    _add_tracking(p)
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("predict", help="predict label paths for images with a bundle")
    p.add_argument("bundle")
    p.add_argument("images", nargs="+")
    p.add_argument("--hedge", type=_probability, metavar="TAU",
                   help="stop at the deepest level with probability >= TAU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)


def _tools(sub) -> None:
    p = sub.add_parser("train", help="train one config in this process (no Ray, no MLflow)")
    p.add_argument("--space", help="take fixed values from this space")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", type=_key_value,
                   help="dotted overrides, e.g. optim.lr=0.1")
    p.add_argument("--out", default="results/train-checkpoint")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("families", help="list model families, backbones and datasets")
    p.set_defaults(fn=cmd_families)
    p = sub.add_parser("class-embeddings", help="Barz & Denzler class embeddings of a "
                       "hierarchy file")
    p.add_argument("hierarchy_file")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=["unitsphere", "approx"], default="unitsphere")
    p.add_argument("--dim", type=int)
    p.add_argument("--is-a", action="store_true", help="lines are 'child parent'")
    p.add_argument("--class-list", help="file with the target classes, one per line")
    p.set_defaults(fn=cmd_class_embeddings)
    p = sub.add_parser("bench", add_help=False, help="benchmarks whose figures go to results/ "
                       "('hpsearch bench --help' lists them)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)  # main() hands them to bench.main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpsearch", description="Hyperparameter search for "
                                 "hierarchical-label image models (Ray Tune + Optuna + MLflow)")
    sub = ap.add_subparsers(dest="command", required=True)
    for group in (_searching, _results, _models, _tools):
        group(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser takes every later argument, --help included
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except HpsearchError as e:
        print(f"hpsearch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
