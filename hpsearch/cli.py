"""Command line: parse, dispatch, print. The only module that reads argv.

Every :class:`HpsearchError` becomes one line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from hpsearch.errors import HpsearchError

DEMO_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under "
                   "--results-dir)")
    p.add_argument("--results-dir", default="results", help="where the default MLflow store, "
                   "Ray state and exports live (default: results)")


def _add_tie_break(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tie-break", metavar="METRIC", help="order runs with an equal --metric "
                   "by this one (e.g. val_edge_gap; the search space's tie_break)")
    p.add_argument("--tie-break-mode", choices=["max", "min"], default="max")


def _tracker(args: argparse.Namespace, experiment: str | None):
    from hpsearch.tracking import Tracker, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(args.results_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HpsearchError(f"no tracking store at {uri}; run 'hpsearch search' first or pass "
                            "--tracking-uri")
    t = Tracker(uri, experiment or "default")
    t.check()
    return t


def cmd_search(args: argparse.Namespace) -> int:
    from hpsearch.search.space import load_space
    from hpsearch.search.tuner import SearchOptions, run_search

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
    if out.num_errors >= out.num_trials:
        errs = _tracker_for(out.tracking_uri, out.experiment).trial_errors(out.search_id, 1)
        first = f"; first error (run {errs[0][0]}): {errs[0][1]}" if errs else ""
        print(f"hpsearch: error: all {out.num_trials} trials failed{first}", file=sys.stderr)
        return 1
    if out.best and out.best.get("value") is not None:
        print(f"best {out.best['metric']} = {out.best['value']:.4f}")
    t = _tracker_for(out.tracking_uri, out.experiment)
    _print_best(t, space.metric, t.best_runs(
        space.metric, space.mode, 3, search_id=out.search_id, tie_break=space.tie_break,
        tie_break_mode=space.tie_break_mode))
    if args.export_best:
        _export_best(out, space, args.export_best)
    return 0


def _tracker_for(uri: str, experiment: str):
    from hpsearch.tracking import Tracker

    return Tracker(uri, experiment)


def _export_best(out, space, dest: str) -> Path:
    t = _tracker_for(out.tracking_uri, out.experiment)
    runs = t.best_runs(space.metric, space.mode, 1, search_id=out.search_id,
                       tie_break=space.tie_break, tie_break_mode=space.tie_break_mode)
    if not runs:
        raise HpsearchError("no finished trial to export")
    bundle = export_run(t, runs[0].info.run_id, Path(dest))
    print(f"exported run {runs[0].info.run_id} -> {bundle}")
    return bundle


def _print_best(t, metric: str, runs: list) -> None:
    """Table of the best trial runs, as ``Tracker.best_runs`` ranked them."""
    from hpsearch.tracking import summarize_params

    if not runs:
        print(f"no runs with metric {metric!r} in experiment {t.experiment_name!r}")
        return
    print(f"{'rank':<5}{metric:<22}{'test_' + metric.removeprefix('val_'):<22}run_id"
          f"{'':<28}status    params")
    # the params that differ between the listed runs (what the search varied), family first
    keys = sorted({k for r in runs for k in r.data.params
                   if k.startswith(("optim.", "model.", "data.")) and k != "data.root"})
    varied = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    shown = ["model.family"] + [k for k in varied if k != "model.family"][:8]
    test_key = "test_" + metric.removeprefix("val_")
    for i, r in enumerate(runs, 1):
        m = r.data.metrics
        tv = f"{m[test_key]:.4f}" if test_key in m else "-"
        val = m.get(f"best_{metric}", m[metric])
        status = r.data.tags.get("hpsearch.status", r.info.status)
        if r.data.tags.get("hpsearch.stopped_early") == "true":
            status = "ASHA-stop"
        print(f"{i:<5}{val:<22.4f}{tv:<22}{r.info.run_id:<34}{status:<10}"
              f"{summarize_params(r.data.params, shown)}")


def cmd_best(args: argparse.Namespace) -> int:
    t = _tracker(args, args.experiment)
    runs = t.best_runs(args.metric, args.mode, args.top, tie_break=args.tie_break,
                       tie_break_mode=args.tie_break_mode)
    if not runs:
        raise HpsearchError(f"no trial runs with metric {args.metric!r} in experiment "
                            f"{args.experiment!r}")
    _print_best(t, args.metric, runs)
    return 0


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


def run_experiment(t, run_id: str, tmp: str):
    """(run, experiment restored at the run's best epoch): from the checkpoint directory Ray
    left on disk, else from the ``checkpoint/best.pt`` artifact uploaded at the trial's end."""
    from hpsearch.train.driver import experiment_from_checkpoint

    run = t.get_run(run_id)
    if run.data.tags.get("hpsearch.role") != "trial":
        raise HpsearchError(f"run {run_id} is not a trial run of an hpsearch search")
    return run, experiment_from_checkpoint(t.checkpoint_dir(run_id, tmp))


def export_run(t, run_id: str, out: Path) -> Path:
    """Export an MLflow trial run's best checkpoint as a bundle."""
    from hpsearch.bundle import write_bundle

    with tempfile.TemporaryDirectory() as tmp:
        run, exp = run_experiment(t, run_id, tmp)
        m = t.best_epoch_metrics(run)  # the exported weights' epoch, not the last one
        return write_bundle(exp, out, extra={"run_id": run_id, "metrics": {
            k: v for k, v in m.items() if k.startswith(("val_", "test_", "best_"))}})


def cmd_export(args: argparse.Namespace) -> int:
    import re

    if args.register and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*", args.register):
        raise HpsearchError(f"--register {args.register!r}: a model name is letters, digits, "
                            "'_', '-', '.' and spaces, starting with a letter or digit")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise HpsearchError(f"--out {args.out} is a file; give a new or empty directory")
    t = _tracker(args, None)
    out = export_run(t, args.run_id, Path(args.out))
    print(f"exported run {args.run_id} -> {out}")
    if args.register:
        version = t.register_bundle(args.run_id, out, args.register)
        print(f"registered as model {args.register!r} version {version} in the MLflow registry")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpsearch.bundle import Predictor, load_bundle

    pred = Predictor(load_bundle(args.bundle))
    results = pred.predict_files(args.images, hedge=args.hedge)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            path = " > ".join(f"{s['label']} ({s['prob']:.3f})" for s in r["path"]) or \
                "(no level reaches the hedge threshold)"
            print(f"{r['image']}: {path}")
    return 0


def cmd_hedge_curve(args: argparse.Namespace) -> int:
    """Accuracy vs. specificity of hedged predictions over τ on a split; logged to the run."""
    import numpy as np

    from hpsearch.bundle import CUMULATIVE_FAMILIES
    from hpsearch.models.hedging import accuracy_specificity_curve
    t = _tracker(args, None)
    with tempfile.TemporaryDirectory() as tmp:
        _, exp = run_experiment(t, args.run_id, tmp)
        if not hasattr(exp, "head"):
            raise HpsearchError(f"run {args.run_id} is not an image classifier")
        out, lab = exp.outputs(args.split)
        exp.evaluate("val")  # calibrate decision thresholds as during training
        dev = next(exp.model.parameters()).device
        probs = [p.cpu() for p in exp.head.level_probs(out.to(dev))]
        taus = np.round(np.linspace(0.0, 1.0, args.points), 4).tolist()
        curve = accuracy_specificity_curve(
            probs, lab, taus, hierarchy=exp.hierarchy,
            cumulative=exp.cfg.model.family in CUMULATIVE_FAMILIES)
        d = Path(tmp) / "hedging"
        d.mkdir()
        (d / f"curve_{args.split}.json").write_text(json.dumps(curve, indent=1))
        rows = ["tau,accuracy,mean_depth,specificity"] + [
            f"{c['tau']},{c['accuracy']:.6f},{c['mean_depth']:.6f},{c['specificity']:.6f}"
            for c in curve]
        (d / f"curve_{args.split}.csv").write_text("\n".join(rows) + "\n")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4.5, 3.5))
            ax.plot([c["specificity"] for c in curve], [c["accuracy"] for c in curve], "o-")
            ax.set_xlabel("specificity (mean depth / levels)")
            ax.set_ylabel("accuracy of hedged prediction")
            ax.set_title(f"{exp.cfg.model.family}, {args.split} split")
            fig.tight_layout()
            fig.savefig(d / f"curve_{args.split}.png", dpi=120)
            plt.close(fig)
        except ImportError:
            pass
        t.log_artifacts(args.run_id, d, "hedging")
        print("\n".join(rows))
    print(f"logged hedging/curve_{args.split}.* to run {args.run_id}")
    return 0


def thesis_table(metrics: dict[str, float], level_sizes: list[int], split: str = "test",
                 level_names: list[str] | None = None) -> str:
    """Markdown table in the layout of the thesis' Tables 4.6/4.8/4.12/4.15: per level N_i,
    micro P/R/F1 and macro P/R/F1, plus the overall row."""
    cols = ["micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall",
            "macro_f1"]
    head = ("| level | N_i | m-P | m-R | m-F1 | M-P | M-R | M-F1 |\n"
            "|---|---|---|---|---|---|---|---|")
    rows = [head]
    for i, n in enumerate(level_sizes):
        name = level_names[i] if level_names else f"level {i}"
        vals = [metrics.get(f"{split}_{c}_level_{i}") for c in cols]
        rows.append(f"| {name} | {n} | " + " | ".join("-" if v is None else f"{v:.4f}"
                                                   for v in vals) + " |")
    vals = [metrics.get(f"{split}_{c}") for c in cols]
    rows.append(f"| overall | {sum(level_sizes)} | " + " | ".join(
        "-" if v is None else f"{v:.4f}" for v in vals) + " |")
    return "\n".join(rows)


def cmd_report(args: argparse.Namespace) -> int:
    """Thesis-style tables for the best run(s) of an experiment, or one run, from MLflow."""
    t = _tracker(args, args.experiment)
    if args.run_id:
        runs = [t.get_run(args.run_id)]
    else:
        runs = t.best_runs(args.metric, args.mode, args.top, tie_break=args.tie_break,
                           tie_break_mode=args.tie_break_mode)
        if not runs:
            raise HpsearchError(f"no trial runs with {args.metric!r} in experiment "
                                f"{args.experiment!r}")
    extra = [k.strip() for k in args.extra.split(",") if k.strip()]
    for r in runs:
        m, p = t.best_epoch_metrics(r), r.data.params  # val_* of the reported (best) epoch
        levels = sorted(int(k.rsplit("_", 1)[1]) for k in m
                        if k.startswith(f"{args.split}_micro_f1_level_"))
        sizes, names = _levels_of(r, len(levels))
        # runs on a checkpoint's frozen features have no backbone of their own: name the source
        net = p.get("model.backbone") or (
            f"features of {p['model.params.feature_checkpoint']}"
            if p.get("model.params.feature_checkpoint") not in (None, "None") else "-")
        src = p.get("data.params.label_source")  # label-only runs: the hierarchy's source
        data = f"labels: {src}" if src not in (None, "None", "dataset") else p.get("data.name")
        print(f"### run {r.info.run_id}  ({p.get('model.family')}, {net}, "
              f"{data}; best epoch {int(m.get('best_epoch', 0))} of "
              f"{r.data.tags.get('hpsearch.epochs_run', '?')}; {args.split} split)\n")
        if levels or not any(k.startswith(f"{args.split}_edge_f1") for k in m):
            print(thesis_table(m, sizes, args.split, names))
        else:  # label-only embeddings: no per-level classification, edge and graph metrics
            print(_edge_table(m, args.split))
        shown = {k: m[f"{args.split}_{k}"] for k in extra if f"{args.split}_{k}" in m}
        if shown:
            print("\n" + "  ".join(f"{args.split}_{k} = {v:.4f}" for k, v in shown.items()))
        print()
    return 0


EDGE_ROWS = (("held-out edges, thesis threshold (Table 6.1)",
              ("edge_f1", "edge_precision", "edge_recall", "threshold")),
             ("held-out edges, midpoint threshold",
              ("edge_f1_midpoint", "edge_precision_midpoint", "edge_recall_midpoint",
               "threshold_midpoint")))


def _edge_table(m: dict[str, float], split: str) -> str:
    """Edge prediction and graph reconstruction of a label-embedding run as Markdown."""
    def cell(k: str) -> str:
        return f"{m[f'{split}_{k}']:.4f}" if f"{split}_{k}" in m else "-"

    lines = ["| edges | F1 | precision | recall | threshold |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cell(k) for k in keys) + " |"
              for name, keys in EDGE_ROWS]
    lines += ["", "| graph reconstruction (Table 6.2) | TPR | TNR | full-F1 | basic-F1 |",
              "|---|---|---|---|---|",
              "| all ordered label pairs | " + " | ".join(
                  cell(k) for k in ("recon_tpr", "recon_tnr", "full_f1", "recon_basic_f1"))
              + " |"]
    return "\n".join(lines)


def _levels_of(run, n_levels: int) -> tuple[list[int], list[str] | None]:
    """Label count and name per level, read from the run's dataset (counts 0 and no names when
    the dataset is not available here)."""
    from hpsearch.config import TrialConfig
    from hpsearch.data.labels import dataset_hierarchy

    try:
        flat = {k: None if v == "None" else _parse_value(v) for k, v in run.data.params.items()}
        cfg = TrialConfig.from_flat(flat)
        h = dataset_hierarchy(cfg.data)  # no image decoding just to count labels
        return list(h.level_sizes), list(h.level_names) or None
    except Exception:  # noqa: BLE001 - dataset not available here: sizes unknown
        return [0] * n_levels, None


def cmd_train(args: argparse.Namespace) -> int:
    """One trial in this process, no Ray (debugging and the in-process test)."""
    from hpsearch.config import TrialConfig
    from hpsearch.search.space import load_space
    from hpsearch.train.driver import DirectoryReporter, run_trial

    overrides = dict(kv.split("=", 1) for kv in args.set)
    parsed = {k: _parse_value(v) for k, v in overrides.items()}
    if args.space:
        cfg = load_space(args.space).resolve({}, parsed)
    else:
        cfg = TrialConfig.from_flat(parsed)
    rep = DirectoryReporter(Path(args.out), echo=print)
    best = run_trial(cfg, rep, resume_from=Path(args.out) if args.resume else None)
    print(f"best {cfg.metric} = {best.value:.4f} at epoch {best.epoch + 1}; checkpoint in "
          f"{args.out}")
    return 0


def _parse_value(v: str):
    import yaml

    return yaml.safe_load(v)


def cmd_families(args: argparse.Namespace) -> int:
    from hpsearch.data import DATASETS
    from hpsearch.models import BACKBONES, FAMILIES

    for name in FAMILIES.names():
        spec = FAMILIES.get(name)
        print(f"{name:<22}{spec.task:<18}{spec.description}")
    print(f"\nbackbones: {', '.join(BACKBONES.names())}")
    print(f"datasets:  {', '.join(DATASETS.names())}")
    return 0


def cmd_class_embeddings(args: argparse.Namespace) -> int:
    from hpsearch.class_embeddings import class_embeddings_command

    print(class_embeddings_command(args.hierarchy_file, args.out, args.method, args.dim,
                                   args.is_a, args.class_list))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: a real search on the embedded data, then best, export, predict."""
    args.space = str(DEMO_SPACE)
    if args.export_best is None:
        args.export_best = str(Path(args.results_dir) / "exports" /
                               f"demo-{os.getpid()}")
    rc = cmd_search(args)
    bundle = Path(args.export_best)
    if rc == 0 and bundle.exists():
        imgs, truth = _demo_images(bundle)
        print("\npredictions of the exported bundle on held-out synthetic test images:")
        for img, true in zip(imgs, truth, strict=True):
            cmd_predict(argparse.Namespace(bundle=str(bundle), images=[img], hedge=None,
                                           json=False))
            print(f"    true: {' > '.join(true)}")
        print("\nwith --hedge 0.5 (stop at the deepest level the model is sure of):")
        cmd_predict(argparse.Namespace(bundle=str(bundle), images=imgs, hedge=0.5, json=False))
    return rc


def _demo_images(bundle: Path) -> tuple[list[str], list[list[str]]]:
    import numpy as np
    import torch
    from torchvision.io import write_png

    from hpsearch.bundle import load_bundle
    from hpsearch.data import load_dataset

    cfg = load_bundle(bundle).config
    data = load_dataset(cfg.data)
    h, test = data.hierarchy, data.test
    out = bundle.parent / f"{bundle.name}-demo-images"
    out.mkdir(exist_ok=True)
    paths, truth = [], []
    for i in np.random.default_rng(0).choice(len(test), size=4, replace=False):
        p = out / f"test_{i}.png"
        write_png(torch.from_numpy(test.images[i].copy()).permute(2, 0, 1), str(p))
        paths.append(str(p))
        truth.append([h.names[h.global_index(lvl, int(x))]
                      for lvl, x in enumerate(test.level_labels[i])])
    return paths, truth


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpsearch", description="Hyperparameter search for "
                                 "hierarchical-label image models (Ray Tune + Optuna + MLflow)")
    sub = ap.add_subparsers(dest="command", required=True)

    def search_args(p: argparse.ArgumentParser) -> None:
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

    p = sub.add_parser("search", help="run a search from a YAML space")
    p.add_argument("space", help="search-space YAML (see search_spaces/)")
    search_args(p)
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("demo", help="search on the embedded data, print the best run, export "
                       "it and predict with it")
    search_args(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("best", help="top runs of an experiment from MLflow")
    p.add_argument("--experiment", default="demo")
    p.add_argument("--metric", default="val_micro_f1")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    _add_tie_break(p)
    p.add_argument("--top", type=_at_least(1), default=5)
    _add_tracking(p)
    p.set_defaults(fn=cmd_best)

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

    p = sub.add_parser("report", help="thesis-style per-level tables of the best runs")
    p.add_argument("--experiment", default="demo")
    p.add_argument("--run-id")
    p.add_argument("--metric", default="val_micro_f1")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    _add_tie_break(p)
    p.add_argument("--top", type=_at_least(1), default=1)
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--extra", default="mistake_severity,hdist_at_5,path_consistency,mahp_250,"
                   "accuracy,balanced_accuracy", help="more metrics to print, comma-separated")
    _add_tracking(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("hedge-curve", help="accuracy vs. specificity of hedged predictions "
                       "over tau on a split, logged as an artifact of the run")
    p.add_argument("run_id")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--points", type=_at_least(2), default=21)
    _add_tracking(p)
    p.set_defaults(fn=cmd_hedge_curve)

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
    return ap


def main(argv: list[str] | None = None) -> int:
    import warnings

    # library deprecation chatter (torch.jit in geoopt, optuna, ray) is not for CLI users
    for cat in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
