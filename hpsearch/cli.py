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
from typing import Any, NoReturn

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
from hpsearch.report import best_table, hedge_curve_csv, run_report, write_report  # noqa: E402
from hpsearch.search.space import load_space  # noqa: E402
from hpsearch.tasks import TASKS, TrialConfig  # noqa: E402
from hpsearch.tracking import Tracker, replay_spool  # noqa: E402

DEMO_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
REPORT_EXTRA = ("mistake_severity,hdist_at_5,path_consistency,mahp_250,accuracy,"
                "balanced_accuracy")


# ---------------------------------------------------------------------- commands
def cmd_search(args: argparse.Namespace) -> int:
    from hpsearch.search.progress import next_steps  # Ray: only when searching
    from hpsearch.search.tuner import SearchOptions, run_search

    space = load_space(args.space)
    opts = SearchOptions(num_samples=args.num_samples, max_epochs=args.max_epochs,
                         data_root=args.data_root, experiment=args.experiment,
                         tracking_uri=args.tracking_uri, address=args.address, seed=args.seed,
                         resume=args.resume, results_dir=args.results_dir,
                         verbose=args.verbose, storage=args.storage,
                         optuna_storage=args.optuna_storage, space_file=str(args.space))
    out = run_search(space, opts)
    print(f"\nsearch {out.search_id}: {out.num_trials} trials, {out.num_stopped_early} stopped "
          f"early by {space.scheduler}, {out.num_errors} failed, {out.wall_s:.0f} s")
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
    runs = t.best_runs(space.metric, space.mode, 3, search_id=out.search_id,
                       tie_break=space.tie_break, tie_break_mode=space.tie_break_mode)
    _print_best(t, space.metric, runs)
    if args.export_best:
        rid, bundle = api.export_best(t, out.search_id, space.metric, space.mode,
                                      args.export_best, tie_break=space.tie_break,
                                      tie_break_mode=space.tie_break_mode)
        print(f"exported run {rid} -> {bundle}")
    print("\n" + next_steps(tracking_uri=out.tracking_uri, experiment=out.experiment,
                            search_id=out.search_id,
                            best_run_id=runs[0].info.run_id if runs else None,
                            results_dir=args.results_dir, exported=bool(args.export_best)))
    return 0


def _print_best(t: Tracker, metric: str, runs: list) -> None:
    if not runs:
        print(f"no runs with metric {metric!r} in experiment {t.experiment_name!r}")
        return
    print(best_table(metric, runs))


def cmd_best(args: argparse.Namespace) -> int:
    """The best runs: of the whole experiment with --experiment, of one search with
    --search-id, else of the newest search in the store (and it says which). A multi-objective
    search lists its Pareto front."""
    if args.experiment and not args.search_id:
        t = api.open_tracker(args.tracking_uri, args.results_dir, args.experiment)
        runs = _experiment_best(t, args)  # sets args.metric (the task's by default)
        _print_best(t, args.metric, runs)
        return 0
    t, parent = api.search_of(args.tracking_uri, args.results_dir, args.experiment,
                               args.search_id)
    sid = parent.data.tags.get("hpsearch.search_id")
    pairs = api.objectives_of(parent, args.metric, args.mode)
    print(f"search {sid} (experiment {t.experiment_name!r}"
          + ("" if args.search_id else "; the newest, --search-id or --experiment to choose")
          + ")")
    if len(pairs) == 1:
        metric = pairs[0][0]
        runs = t.best_runs(metric, pairs[0][1], args.top, search_id=sid,
                           tie_break=args.tie_break, tie_break_mode=args.tie_break_mode)
        if not runs:
            raise HpsearchError(f"no trial runs with metric {metric!r} in search {sid}")
        _print_best(t, metric, runs)
        return 0
    ranked = api.best(t.experiment_name, tracking_uri=t.uri, search_id=sid, top=args.top)
    print(pareto_table(pairs, ranked))
    print("export one of the front with: hpsearch export RUN_ID --out DIR")
    return 0


def _experiment_best(t: Tracker, args: argparse.Namespace) -> list:
    """The ``--top`` trial runs of the whole experiment by ``--metric`` (default: the task's,
    set on ``args``), with ``--tie-break``; one line when there are none."""
    args.metric = args.metric or api.default_metric(t)
    runs = t.best_runs(args.metric, args.mode, args.top, tie_break=args.tie_break,
                       tie_break_mode=args.tie_break_mode)
    if not runs:
        raise HpsearchError(f"no trial runs with metric {args.metric!r} in experiment "
                            f"{t.experiment_name!r}")
    return runs


def pareto_table(pairs: list[tuple[str, str]], ranked: list) -> str:
    """Multi-objective ranking: the Pareto front (marked *) first, each objective's value at
    the run's best epoch."""
    head = "".join(f"{f'{m} ({mode})':<26}" for m, mode in pairs)
    lines = [f"{'front':<7}{head}{'run_id':<34}name"]
    for r in ranked:
        cells = "".join(f"{r.values[m]:<26.4f}" for m, _ in pairs)
        lines.append(f"{'*' if r.pareto else '':<7}{cells}{r.run_id:<34}{r.name}")
    n = sum(r.pareto for r in ranked)
    lines.append(f"{n} run(s) on the Pareto front (no other run is at least as good in every "
                 "objective and better in one)")
    return "\n".join(lines)


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
        print(f"MLflow model: models:/{args.register}/{version} (serve it: mlflow models serve "
              f"-m models:/{args.register}/{version} --env-manager local)")
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


def cmd_replay_spool(args: argparse.Namespace) -> int:
    """Send what a search could not deliver to MLflow (its spool file) to the server."""
    out = replay_spool(args.spool, args.tracking_uri)
    print(f"replayed {out['writes']} writes: {out['metric_points']} metric points sent, "
          f"{out['skipped_points']} already there, {out['runs_created']} runs created, "
          f"{out['refused']} refused")
    return 0


def cmd_hedge_curve(args: argparse.Namespace) -> int:
    """Accuracy vs. specificity of hedged predictions over τ on a split; logged to the run."""
    t = api.open_tracker(args.tracking_uri, args.results_dir, None)
    curve = api.hedge_curve(t, args.run_id, args.split, args.points)
    print(hedge_curve_csv(curve).rstrip("\n"))
    print(f"logged hedging/curve_{args.split}.* to run {args.run_id}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Thesis-style tables for the best run(s) of an experiment, or one run, from MLflow; with
    --out, a search's whole report (Markdown + figures), logged on its parent run."""
    if args.out:
        t, parent = api.search_of(args.tracking_uri, args.results_dir, args.experiment,
                                  args.search_id)
        sid = parent.data.tags.get("hpsearch.search_id")
        index = write_report(t, args.out, search_id=sid, split=args.split, top=args.top)
        print(f"report of search {sid} (experiment {t.experiment_name!r}) -> {index}; logged "
              "as report/ on the search's parent run")
        return 0
    if args.experiment is None and not args.run_id:
        t, parent = api.search_of(args.tracking_uri, args.results_dir, None, args.search_id)
        print(f"experiment {t.experiment_name!r} (of the newest search; --experiment to "
              "choose)")
    else:
        t = api.open_tracker(args.tracking_uri, args.results_dir, args.experiment)
    if args.run_id:
        runs = [t.get_run(args.run_id)]
    else:
        runs = _experiment_best(t, args)
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


def cmd_rerun(args: argparse.Namespace) -> int:
    """Retrain a tracked trial from its config.json; its best-epoch metrics beside the
    original's (read-only on the store)."""
    t = api.open_tracker(args.tracking_uri, args.results_dir, None)
    out = Path(args.out or Path(args.results_dir) / f"rerun-{args.run_id}")
    r = api.rerun(t, args.run_id, out)
    print(f"rerun of run {r.run_id}: {r.epochs} epochs (as the original), {r.threads} torch "
          f"thread{'s' * (r.threads != 1)}, "
          f"{'deterministic' if r.cfg.deterministic else 'not deterministic'}; "
          f"checkpoint in {r.out}")
    if r.code_then and r.code_then != r.code_now:
        print(f"note: the original ran {r.code_then}, this is {r.code_now}")
    print(rerun_table(r))
    return 0


def rerun_table(r: api.Rerun) -> str:
    """The headline metrics of a rerun beside the original's, and a verdict over all."""
    rows = r.compared()
    by_key = {k: (a, b) for k, a, b in rows}
    metric = r.cfg.metric
    test = "test_" + metric.removeprefix("val_")
    tie = [r.cfg.tie_break] if r.cfg.tie_break else []
    shown = [k for k in ("epoch", metric, *tie, test, "train_loss") if k in by_key]
    differ = sorted((k for k, a, b in rows if a != b), key=lambda k: -abs(
        by_key[k][1] - by_key[k][0]))
    shown += [k for k in differ[:5] if k not in shown]
    width = max(len(k) for k in [*shown, "at the best epoch"])
    lines = [f"{'at the best epoch':<{width}}  {'original':>14}  {'rerun':>14}  difference"]
    for k in shown:
        a, b = by_key[k]
        lines.append(f"{'best epoch' if k == 'epoch' else k:<{width}}  {a:>14.10g}  "
                     f"{b:>14.10g}  {b - a:+.3g}")
    if not rows:
        lines.append("no metric to compare (the original logged none)")
    elif not differ:
        lines.append(f"all {len(rows)} metrics at the best epoch are identical, bit for bit")
    else:
        k = differ[0]
        lines.append(f"{len(differ)} of {len(rows)} metrics differ; the most: {k} by "
                     f"{by_key[k][1] - by_key[k][0]:+.3g}")
    return "\n".join(lines)


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
class _Formatter(argparse.HelpFormatter):
    """``--help`` with every option's default: appended as ``(default: X)`` unless the help
    already says what happens by default, or there is none worth printing (a flag, None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or "(default" in text or d is None or isinstance(d, bool)
                or d is argparse.SUPPRESS or d == []):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``hpsearch: error: ...``, exit 2) instead of the usage
    block, like every other error of the CLI; its sub-command parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hpsearch: error: {message} ('{self.prog} --help' lists the "
                  "options)\n")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under "
                   "--results-dir)")
    p.add_argument("--results-dir", default="results", help="where the default MLflow store, "
                   "Ray state and exports live")


def _add_ranking(p: argparse.ArgumentParser, top: int) -> None:
    p.add_argument("--experiment", help="MLflow experiment to rank (default: the newest "
                   "search in the store)")
    p.add_argument("--search-id", help="rank the runs of this search (default: the newest "
                   "search, of --experiment when given)")
    p.add_argument("--metric", help="rank by this metric (default: the task's, e.g. "
                   "val_micro_f1 for classifiers, val_edge_f1 for label embeddings)")
    p.add_argument("--mode", choices=["max", "min"], default="max",
                   help="whether a larger --metric is better")
    p.add_argument("--tie-break", metavar="METRIC", help="order runs with an equal --metric "
                   "by this one (e.g. val_edge_gap; the search space's tie_break)")
    p.add_argument("--tie-break-mode", choices=["max", "min"], default="max",
                   help="whether a larger --tie-break is better")
    p.add_argument("--top", type=_at_least(1), default=top, help="how many runs")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-samples", type=_at_least(1), help="number of trials (default: the "
                   "space's budget.num_samples)")
    p.add_argument("--max-epochs", type=_at_least(1), help="epochs of an unstopped trial "
                   "(default: the space's budget.max_epochs)")
    p.add_argument("--data-root", help="dataset directory (default: the space's data.root)")
    p.add_argument("--experiment", help="MLflow experiment (default: the space's name)")
    p.add_argument("--address", help="join a running Ray cluster: HOST:PORT (its GCS port, "
                   "the one 'ray start --head --port' took), ray://HOST:PORT (Ray Client) or "
                   "auto (RAY_ADDRESS, else the newest 'ray start' cluster on this machine; use "
                   "it inside 'ray job submit'); the token of a token-auth cluster comes from "
                   "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (default: start a "
                   "private local cluster; RAY_ADDRESS is ignored without --address auto)")
    p.add_argument("--storage", metavar="PATH_OR_URI", help="where Ray Tune keeps experiment "
                   "state and checkpoints: a path every node mounts, or file:// s3:// gs:// "
                   "(default: --results-dir/ray); --resume looks there")
    p.add_argument("--optuna-storage", metavar="URL", help="Optuna RDB storage of the study "
                   "(sqlite:///PATH, postgresql://...; default: the space's sampler.storage, "
                   "else sqlite:///RESULTS_DIR/optuna.db); optuna-dashboard URL reads it")
    p.add_argument("--seed", type=int, help="sampler and training seed (default: the space's "
                   "sampler.seed)")
    p.add_argument("--resume", action="store_true", help="resume the newest unfinished "
                   "search of this space")
    p.add_argument("--export-best", metavar="DIR", help="export the best run to DIR "
                   "(default: no export; 'demo' exports to --results-dir/exports)")
    p.add_argument("-v", "--verbose", type=int, choices=range(4), default=1,
                   help="Tune verbosity 0-3")
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
    p.add_argument("--run-id", help="report this run instead of the best ones")
    p.add_argument("--out", metavar="DIR", help="write the search's report (index.md + PNG "
                   "figures) to DIR and log it as report/ on its parent run")
    p.add_argument("--split", choices=["val", "test"], default="test",
                   help="split whose tables to print")
    p.add_argument("--extra", default=REPORT_EXTRA,
                   help="more metrics to print, comma-separated")
    _add_tracking(p)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("hedge-curve", help="accuracy vs. specificity of hedged predictions "
                       "over tau on a split, logged as an artifact of the run")
    p.add_argument("run_id", help="MLflow run id of a classifier trial")
    p.add_argument("--split", choices=["val", "test"], default="test",
                   help="split to draw the curve on")
    p.add_argument("--points", type=_at_least(2), default=21,
                   help="number of tau values in [0, 1]")
    _add_tracking(p)
    p.set_defaults(fn=cmd_hedge_curve)


def _models(sub) -> None:
    p = sub.add_parser("replay-spool", help="send the MLflow writes a search could not "
                       "deliver (the spool file it named) to the tracking server")
    p.add_argument("spool", help="mlflow-spool-<search>.jsonl written at the end of a search")
    p.add_argument("--tracking-uri", help="send to this server instead of the one the spool "
                   "names")
    p.set_defaults(fn=cmd_replay_spool)
    p = sub.add_parser("export", help="write a self-contained bundle of a trial run (signed "
                       "when HPSEARCH_BUNDLE_KEY is set: docs/security.md)")
    p.add_argument("run_id", help="MLflow run id of a trial")
    p.add_argument("--out", required=True, help="bundle directory to write (new or empty)")
    p.add_argument("--register", metavar="MODEL", help="also upload the bundle to the run and "
                   "register it as a new version of MODEL in the MLflow Model Registry")
    _add_tracking(p)
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("predict", help="predict label paths for images with a bundle "
                       "(its signature checked when HPSEARCH_BUNDLE_KEY is set)")
    p.add_argument("bundle", help="bundle directory written by 'hpsearch export'")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--hedge", type=_probability, metavar="TAU",
                   help="stop at the deepest level with probability >= TAU (default: predict "
                   "every level)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(fn=cmd_predict)


def _tools(sub) -> None:
    p = sub.add_parser("train", help="train one config in this process (no Ray, no MLflow)")
    p.add_argument("--space", help="take fixed values from this space (default: the "
                   "TrialConfig defaults)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", type=_key_value,
                   help="dotted overrides, e.g. optim.lr=0.1; deterministic=true trains "
                   "bit-reproducibly (deterministic kernels, seeded generators, fixed threads)")
    p.add_argument("--out", default="results/train-checkpoint", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in "
                   "--out")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("rerun", help="retrain a tracked trial from its config.json in this "
                       "process (no Ray; logs nothing) and compare its best-epoch metrics "
                       "with the original's")
    p.add_argument("run_id", help="MLflow run id of a trial")
    p.add_argument("--out", help="checkpoint directory of the rerun (default: "
                   "--results-dir/rerun-RUN_ID)")
    _add_tracking(p)
    p.set_defaults(fn=cmd_rerun)
    p = sub.add_parser("families", help="list model families, backbones and datasets")
    p.set_defaults(fn=cmd_families)
    p = sub.add_parser("class-embeddings", help="Barz & Denzler class embeddings of a "
                       "hierarchy file")
    p.add_argument("hierarchy_file", help="'parent child' per line")
    p.add_argument("--out", required=True, help="file to write the embeddings to")
    p.add_argument("--method", choices=["unitsphere", "approx"], default="unitsphere",
                   help="exact unit-sphere construction or the low-dimensional approximation")
    p.add_argument("--dim", type=_at_least(1), help="embedding dimension (default: the "
                   "number of classes)")
    p.add_argument("--is-a", action="store_true", help="lines are 'child parent'")
    p.add_argument("--class-list", help="file with the target classes, one per line "
                   "(default: the leaves)")
    p.set_defaults(fn=cmd_class_embeddings)
    p = sub.add_parser("bench", add_help=False, help="benchmarks whose figures go to results/ "
                       "('hpsearch bench --help' lists them)")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)  # main() hands them to bench.main


def build_parser() -> _Parser:
    ap = _Parser(prog="hpsearch", description="Hyperparameter search for hierarchical-label "
                 "image models (Ray Tune + Optuna + MLflow)")
    ap.add_argument("--version", action="version", version=api.code_version())
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (_searching, _results, _models, _tools):
        group(sub)
    ap.commands = dict(sub.choices)
    return ap


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown option is reported by the sub-command it was given to, so
    the hint names that command's ``--help``."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:
        (ap.commands.get(args.command) or ap).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser takes every later argument, --help included
        return bench.main(argv[1:])
    args = _parse(argv)
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
