"""Tables and figures of finished runs: what ``hpsearch report``, ``best`` and ``hedge-curve``
print or draw. Rendering only: runs come from :mod:`hpsearch.tracking`, numbers from the runs.

:func:`write_report` writes the report of one search as Markdown + PNGs (``hpsearch report
--out DIR``): the thesis tables of the best runs, per-label F1 against training-set size
(thesis Fig. 4.1), loss/F1 curves per epoch (Fig. 4.3), label embeddings in 2-D with their cones
(Figs. 6.1-6.5), Optuna's history / importances / parallel coordinates, the Pareto front of a
multi-objective search and the ASHA rung curves. A figure is drawn only where the runs hold
its data; what is missing is one line in the Markdown, never an empty axes or a traceback.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.data.labels import dataset_hierarchy
from hpsearch.errors import HpsearchError
from hpsearch.search.objectives import OBJECTIVES_TAG, decode, pareto_front
from hpsearch.tasks import experiment_from_checkpoint, task_of, validate_trial
from hpsearch.tasks.checkpoint import REPORTS_DIR
from hpsearch.tracking import CONFIG_ARTIFACT, TAG, Tracker, summarize_params

LEVEL_COLUMNS = ("micro_precision", "micro_recall", "micro_f1", "macro_precision",
                 "macro_recall", "macro_f1")
EDGE_ROWS = (("held-out edges, thesis threshold (Table 6.1)",
              ("edge_f1", "edge_precision", "edge_recall", "threshold")),
             ("held-out edges, midpoint threshold",
              ("edge_f1_midpoint", "edge_precision_midpoint", "edge_recall_midpoint",
               "threshold_midpoint")))


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def thesis_table(metrics: dict[str, float], level_sizes: list[int], split: str = "test",
                 level_names: list[str] | None = None, macro: str | None = None) -> str:
    """Markdown table in the layout of the thesis' Tables 4.6/4.8/4.12/4.15: per level N_i,
    micro P/R/F1 and macro P/R/F1, plus the overall row.

    ``macro`` picks the macro convention: ``"active"`` (``macro_*``, labels with
    TP + FP + FN > 0) or ``"thesis"`` (``macro_*_thesis``, all labels, 0/0 scoring 1; use it
    for a table meant to sit beside one of the thesis'). Either is named in a caption line above
    the table; ``None`` (default) prints the ``"active"`` columns with no caption, as before.
    Cells a run did not log are ``-``."""
    captions = {  # the caption names the convention shown
        "active": "Macro P/R/F1 (M-P, M-R, M-F1): hpsearch convention, mean over the labels "
                  "true or predicted in the split (labels with TP + FP + FN = 0 left out).",
        "thesis": "Macro P/R/F1 (M-P, M-R, M-F1): thesis convention (published code, "
                  "MetricsMultiLevel), mean over all N_i labels of the row, a label neither true "
                  "nor predicted scoring P = R = F1 = 1.",
    }
    if macro not in (None, *captions):
        raise HpsearchError(f"thesis_table macro={macro!r} is not a convention; use "
                            "'active' or 'thesis'")
    suffix = "_thesis" if macro == "thesis" else ""
    cols = [c + (suffix if c.startswith("macro_") else "") for c in LEVEL_COLUMNS]
    rows = [captions[macro], ""] if macro else []
    rows += ["| level | N_i | m-P | m-R | m-F1 | M-P | M-R | M-F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for i, n in enumerate(level_sizes):
        name = level_names[i] if level_names else f"level {i}"
        vals = [metrics.get(f"{split}_{c}_level_{i}") for c in cols]
        rows.append(f"| {name} | {n} | " + " | ".join(_cell(v) for v in vals) + " |")
    vals = [metrics.get(f"{split}_{c}") for c in cols]
    rows.append(f"| overall | {sum(level_sizes)} | " + " | ".join(_cell(v) for v in vals)
                + " |")
    return "\n".join(rows)


def edge_table(m: dict[str, float], split: str) -> str:
    """Edge prediction and graph reconstruction of a label-embedding run as Markdown."""
    def cell(k: str) -> str:
        return _cell(m.get(f"{split}_{k}"))

    lines = ["| edges | F1 | precision | recall | threshold |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cell(k) for k in keys) + " |"
              for name, keys in EDGE_ROWS]
    lines += ["", "| graph reconstruction (Table 6.2) | TPR | TNR | full-F1 | basic-F1 |",
              "|---|---|---|---|---|",
              "| all ordered label pairs | " + " | ".join(
                  cell(k) for k in ("recon_tpr", "recon_tnr", "full_f1", "recon_basic_f1"))
              + " |"]
    return "\n".join(lines)


def best_table(metric: str, runs: Sequence[Any]) -> str:
    """The best trial runs, in the order given, with the params the search varied."""
    lines = [f"{'rank':<5}{metric:<22}{'test_' + metric.removeprefix('val_'):<22}run_id"
             f"{'':<28}status    params"]
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
        lines.append(f"{i:<5}{val:<22.4f}{tv:<22}{r.info.run_id:<34}{status:<10}"
                     f"{summarize_params(r.data.params, shown)}")
    return "\n".join(lines)


def run_levels(tracker: Tracker, run: Any, n_levels: int
               ) -> tuple[list[int], list[str] | None, str]:
    """Label count and name per level of a run's dataset, and the run's task (``report`` of
    the task's spec): read from the trial config the run logged. Counts 0 and no names when
    the run has no logged config or its dataset is not available here."""
    raw = tracker.load_dict(run.info.run_id, CONFIG_ARTIFACT)
    if raw is None:  # a run logged before trial configs were
        report = "edges" if any("edge_f1" in k for k in run.data.metrics) else "levels"
        return [0] * n_levels, None, report
    cfg = validate_trial(raw)
    report = task_of(cfg).report
    try:
        h = dataset_hierarchy(cfg.data)  # no image decoding just to count labels
    except HpsearchError:  # dataset not available here: sizes unknown
        return [0] * n_levels, None, report
    return list(h.level_sizes), list(h.level_names) or None, report


def run_report(tracker: Tracker, run: Any, split: str, extra: Sequence[str]) -> str:
    """The Markdown report of one trial run at its best epoch: the task's tables, then the
    ``extra`` metrics that the run has."""
    m, p = tracker.best_epoch_metrics(run), run.data.params  # val_* of the best epoch
    levels = sorted(int(k.rsplit("_", 1)[1]) for k in m
                    if k.startswith(f"{split}_micro_f1_level_"))
    sizes, names, kind = run_levels(tracker, run, len(levels))
    # runs on a checkpoint's frozen features have no backbone of their own: name the source
    net = p.get("model.backbone") or (
        f"features of {p['model.params.feature_checkpoint']}"
        if p.get("model.params.feature_checkpoint") not in (None, "None") else "-")
    src = p.get("data.params.label_source")  # label-only runs: the hierarchy's source
    data = f"labels: {src}" if src not in (None, "None", "dataset") else p.get("data.name")
    out = [f"### run {run.info.run_id}  ({p.get('model.family')}, {net}, {data}; best epoch "
           f"{int(m.get('best_epoch', 0))} of {run.data.tags.get('hpsearch.epochs_run', '?')}; "
           f"{split} split)\n"]
    if kind == "edges" and not levels:
        out.append(edge_table(m, split))
    elif f"{split}_macro_f1_thesis" in m:  # both macro conventions, each under its name
        out.append(thesis_table(m, sizes, split, names, macro="active") + "\n\n"
                   + thesis_table(m, sizes, split, names, macro="thesis"))
    else:
        out.append(thesis_table(m, sizes, split, names))
    shown = {k: m[f"{split}_{k}"] for k in extra if f"{split}_{k}" in m}
    if shown:
        out.append("\n" + "  ".join(f"{split}_{k} = {v:.4f}" for k, v in shown.items()))
    return "\n".join(out) + "\n"


def hedge_curve_csv(curve: Sequence[dict[str, float]]) -> str:
    """The accuracy/specificity curve as CSV text."""
    rows = ["tau,accuracy,mean_depth,specificity"] + [
        f"{c['tau']},{c['accuracy']:.6f},{c['mean_depth']:.6f},{c['specificity']:.6f}"
        for c in curve]
    return "\n".join(rows) + "\n"


def plot_hedge_curve(curve: Sequence[dict[str, float]], path: Path, title: str) -> bool:
    """Accuracy against specificity of hedged predictions as a PNG; False without matplotlib."""
    try:
        import matplotlib  # optional: figures are skipped where it is not installed
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([c["specificity"] for c in curve], [c["accuracy"] for c in curve], "o-")
    ax.set_xlabel("specificity (mean depth / levels)")
    ax.set_ylabel("accuracy of hedged prediction")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ============================================================ the report of one search (figures)
REPORT_ARTIFACT = "report"  # artifact folder of the search's parent run
INDEX = "index.md"
PER_LABEL_CSV = "per_label_f1_{split}.csv"  # ClassifierExperiment.reports
MAX_NAMED_LABELS = 40  # label names written beside the points up to this many labels
CONE_LEVELS = 2  # cones drawn for the labels with children on the top levels only
MAX_IMAGES = 300  # image embeddings drawn among the labels (joint runs), a fixed sample
_LEVEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                 "tab:pink", "tab:gray")


def _plt() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib  # a declared dependency, imported here: only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator  # with pyplot (see _plt)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)


def find_search(tracker: Tracker, search_id: str | None = None) -> Any:
    """The parent run of search ``search_id``; without one the experiment's latest search
    (newest start time). One-line :class:`HpsearchError` when there is none."""
    runs = tracker.runs(role="search")
    if search_id is not None:
        runs = [r for r in runs if r.data.tags.get(f"{TAG}search_id") == search_id]
        if not runs:
            ids = sorted({r.data.tags.get(f"{TAG}search_id", "?")
                          for r in tracker.runs(role="search")})
            raise HpsearchError(f"no search {search_id!r} in experiment "
                                f"{tracker.experiment_name!r}; its searches: "
                                f"{', '.join(ids) or 'none'}")
    if not runs:
        raise HpsearchError(f"experiment {tracker.experiment_name!r} has no search (parent run "
                            "tagged hpsearch.role=search); run 'hpsearch search' first")
    return max(runs, key=lambda r: r.info.start_time or 0)


def search_objectives(parent: Any, trials: Sequence[Any]) -> list[tuple[str, str]]:
    """``[(metric, mode), ...]`` of a search: its ``hpsearch.objectives`` tag, else its
    ``hpsearch.metric`` tag (max), else the task's default metric of its first trial."""
    obj = decode(parent.data.tags.get(f"{TAG}{OBJECTIVES_TAG}"))
    if obj:
        return obj
    metric = parent.data.tags.get(f"{TAG}metric")
    if not metric:
        edges = any("edge_f1" in k for r in trials for k in r.data.metrics)
        metric = "val_edge_f1" if edges else "val_micro_f1"
    return [(metric, parent.data.params.get("mode", "max"))]


def _rank_key(metric: str) -> str:
    return f"best_{metric}" if metric.startswith("val_") else metric


def ranked_trials(trials: Sequence[Any], metric: str, mode: str) -> list[Any]:
    """The trials that reported ``metric``, best first (by ``best_<metric>``: the best epoch)."""
    key = _rank_key(metric)

    def value(r: Any) -> float:
        return r.data.metrics.get(key, r.data.metrics.get(metric, math.nan))

    ok = [r for r in trials if math.isfinite(value(r))]
    return sorted(ok, key=lambda r: -value(r) if mode == "max" else value(r))


def _short(run_id: str) -> str:
    return run_id[:8]


class _Report:
    """The Markdown being written and the PNGs beside it."""

    def __init__(self, tracker: Tracker, out: Path, parent: Any, trials: list[Any],
                 split: str) -> None:
        self.t, self.out, self.parent, self.trials, self.split = tracker, out, parent, trials, \
            split
        self.md: list[str] = []
        self.pngs: list[Path] = []
        self.skipped: list[str] = []
        self._history: dict[tuple[str, str], list[Any]] = {}

    def figure(self, name: str, title: str, caption: str) -> Path:
        """Path of a new PNG ``name``; its Markdown reference and caption are added."""
        path = self.out / name
        self.pngs.append(path)
        self.md += [f"![{title}]({name})", "", f"*{caption}*", ""]
        return path

    def skip(self, what: str, why: str) -> None:
        line = f"- {what}: skipped, {why}."
        self.skipped.append(line)
        self.md += [line, ""]

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of metric ``key`` of a run, by step (the last value of a step)."""
        if (run_id, key) not in self._history:
            self._history[(run_id, key)] = self.t.metric_history(run_id, key)
        by_step = {int(h.step): float(h.value) for h in
                   sorted(self._history[(run_id, key)], key=lambda h: (h.step, h.timestamp))}
        return sorted(by_step.items())


# ------------------------------------------------------------------ per-label F1 (Fig. 4.1)
def _per_label_rows(tracker: Tracker, run: Any, split: str, tmp: Path) -> list[dict[str, str]]:
    """The rows of the run's ``reports/per_label_f1_<split>.csv``: from its checkpoint directory
    on disk, else from the run's ``reports/`` artifact; [] when it has neither."""
    name = PER_LABEL_CSV.format(split=split)
    ckpt = run.data.tags.get(f"{TAG}checkpoint")
    text = None
    if ckpt and (Path(ckpt) / REPORTS_DIR / name).is_file():
        text = (Path(ckpt) / REPORTS_DIR / name).read_text()
    else:
        try:
            text = tracker.download(run.info.run_id, f"{REPORTS_DIR}/{name}", tmp).read_text()
        except Exception:  # noqa: BLE001 - no such artifact (not a classifier, older run)
            return []
    return list(csv.DictReader(io.StringIO(text)))


def per_label_figure(rows: Sequence[dict[str, str]], path: Path, title: str) -> int:
    """Thesis Fig. 4.1: per-label F1 against the label's number of training images, coloured by
    level, with the marginal histograms of both. Returns how many labels were not scored (F1
    NaN: neither true nor predicted on the split), which are left out."""
    plt = _plt()
    pts = [(int(r["level"]), int(r["train_count"]), float(r["f1"])) for r in rows]
    scored = [p for p in pts if math.isfinite(p[2])]
    fig = plt.figure(figsize=(6.4, 5.2))
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.08,
                          hspace=0.05)
    ax = fig.add_subplot(gs[1, 0])
    top = fig.add_subplot(gs[0, 0], sharex=ax)
    right = fig.add_subplot(gs[1, 1], sharey=ax)
    counts = np.array([max(p[1], 1) for p in scored], dtype=float)
    f1 = np.array([p[2] for p in scored])
    levels = sorted({p[0] for p in scored})
    for lvl in levels:
        sel = np.array([p[0] == lvl for p in scored])
        ax.scatter(counts[sel], f1[sel], s=14, alpha=0.75, color=_LEVEL_COLORS[lvl % 8],
                   label=f"level {lvl}")
    ax.set_xscale("log")
    ax.set_xlabel("training images of the label (log scale)")
    ax.set_ylabel("F1 of the label")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    bins = np.logspace(0, math.log10(max(counts.max(), 2)) + 0.05, 20)
    top.hist(counts, bins=bins, color="0.5")
    top.set_ylabel("labels", fontsize=8)
    top.tick_params(labelbottom=False, labelsize=7)
    right.hist(f1, bins=np.linspace(0, 1, 21), orientation="horizontal", color="0.5")
    right.set_xlabel("labels", fontsize=8)
    right.tick_params(labelleft=False, labelsize=7)
    top.set_title(title, fontsize=9)
    _save(fig, path)
    return len(pts) - len(scored)


def _section_per_label(rep: _Report, best: Sequence[Any]) -> None:
    classifiers = [r for r in best if not _is_edges(r)]
    if not classifiers:
        return
    rep.md += ["## Per-label F1 against training-set size (thesis Fig. 4.1)", ""]
    run = classifiers[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = _per_label_rows(rep.t, run, rep.split, Path(tmp))
    if not rows:
        rep.skip("per-label F1", f"run {run.info.run_id} has no "
                 f"{REPORTS_DIR}/{PER_LABEL_CSV.format(split=rep.split)} in its checkpoint or "
                 "artifacts (threshold-decision heads and runs logged before it existed)")
        return
    name = f"per_label_f1_{_short(run.info.run_id)}.png"
    path = rep.out / name
    unscored = per_label_figure(rows, path, f"run {_short(run.info.run_id)}, {rep.split} split")
    rep.figure(name, "per-label F1", f"{rep.split} F1 of each label of the best run "
               f"{run.info.run_id} against its number of training images (x log scale), with "
               "the histograms of both" + (f"; {unscored} labels neither true nor predicted on "
                                           f"the {rep.split} split are not drawn"
                                           if unscored else "") + ".")


# ------------------------------------------------------------------ curves (Fig. 4.3)
def _is_edges(run: Any) -> bool:
    return any(k.startswith("val_edge_f1") for k in run.data.metrics)


def _score_names(run: Any) -> list[str]:
    m = run.data.metrics
    names = [k for k in ("micro_f1", "macro_f1") if f"val_{k}" in m]
    return names or [k for k in ("edge_f1",) if f"val_{k}" in m]


def _section_curves(rep: _Report, run: Any) -> None:
    plt = _plt()
    rid = run.info.run_id
    rep.md += ["## Loss and F1 per epoch (thesis Fig. 4.3)", ""]
    scores = _score_names(run)
    edges = _is_edges(run)
    fig, (a_loss, a_f1) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    missing, drawn = [], 0
    styles = {"train": ("tab:blue", "-"), "val": ("tab:orange", "-"),
              "test": ("tab:green", "-")}
    for split, (color, _) in styles.items():
        pts = rep.history(rid, f"{split}_loss")
        if pts:
            kw = dict(drawstyle="steps-post") if split == "test" else dict(marker="o", ms=3)
            a_loss.plot(*zip(*pts, strict=True), color=color, label=f"{split} loss", **kw)
            drawn += 1
        else:
            missing.append(f"{split}_loss")
        for score, ls in zip(scores, ("-", "--"), strict=False):
            if split == "train" and edges:
                continue  # label embeddings have no train F1: their edges are the train set
            pts = rep.history(rid, f"{split}_{score}")
            if pts:
                kw = dict(drawstyle="steps-post") if split == "test" else dict(marker="o", ms=3)
                a_f1.plot(*zip(*pts, strict=True), color=color, ls=ls,
                          label=f"{split} {score.replace('_', ' ')}", **kw)
                drawn += 1
            else:
                missing.append(f"{split}_{score}")
    if not drawn:
        plt.close(fig)
        rep.skip("curves", f"run {rid} has no loss or F1 history")
        return
    best_epoch = run.data.metrics.get("best_epoch")
    for ax, what in ((a_loss, "loss"), (a_f1, "F1")):
        _integer_epochs(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="0.6", ls=":", lw=1)
        if ax.lines:
            ax.legend(fontsize=7)
    a_loss.set_title(f"run {_short(rid)}", fontsize=9)
    if not a_loss.lines:
        a_loss.text(0.5, 0.5, "no loss logged", ha="center", transform=a_loss.transAxes)
    name = f"curves_{_short(rid)}.png"
    _save(fig, rep.out / name)
    cap = (f"best run {rid}: train / val loss and F1 at every evaluated epoch; the test curve "
           "is a step line because a trial evaluates test only when validation improves: at "
           "epoch e it shows the test value of the best validation epoch up to e (dotted line: "
           "the final best epoch)")
    cap += (". F1: held-out edge F1 at the val-chosen threshold (no train F1: the train edges "
            "are what the loss fits)" if edges else ". Train F1 is the running F1 of the "
            "epoch's own training batches (train-mode forward passes while the weights "
            "change), not a second pass")
    if missing:
        cap += f"; not logged by this run: {', '.join(missing)}"
    rep.md += [f"![curves]({name})", "", f"*{cap}.*", ""]
    rep.pngs.append(rep.out / name)


# ------------------------------------------------------------------ embeddings (Figs. 6.1-6.5)
def _embedding_parts(exp: Any) -> dict[str, Any] | None:
    """Label vectors, basic edges, levels, geometry, K and names of a label- or joint-embedding
    experiment; None for an experiment without label embeddings (a classifier)."""
    if not hasattr(exp, "embeddings"):
        return None
    model = exp.model
    geometry = getattr(model, "geometry", None)
    if geometry is None:
        return None
    x = exp.embeddings().detach().cpu().double().numpy()
    splits = getattr(exp, "splits", None)
    basic = np.asarray(splits.basic if splits is not None else exp.basic.cpu()).reshape(-1, 2)
    h = exp.hierarchy
    level = (np.asarray(h.depth) if h is not None else np.asarray(splits.node_level))
    K = getattr(model, "K", None)
    if K is None:
        K = getattr(getattr(model, "labels", None), "K", None)
    parts = {"x": x, "basic": basic, "level": level, "geometry": geometry,
             "K": float(K) if K else 0.0, "names": list(getattr(exp, "nodes", [])),
             "images": None}
    if hasattr(exp, "image_embeddings"):  # joint runs: the test images in the same space
        try:
            img = exp.image_embeddings("test").detach().cpu().double().numpy()
            labels = np.asarray(exp.level_labels["test"].cpu())[:, 0]
            keep = np.random.default_rng(0).permutation(len(img))[:MAX_IMAGES]
            parts["images"] = (img[keep], labels[keep])
        except Exception:  # noqa: BLE001 - features not rebuildable here: labels only
            parts["images"] = None
    return parts


def _project(x: np.ndarray, geometry: str) -> tuple[np.ndarray, str]:
    """2-D coordinates and how they were obtained. The first two coordinates for every
    geometry: for order embeddings they keep the coordinate-wise order of every pair, and in the
    Poincaré ball the projection stays inside the unit disk (PCA would keep neither)."""
    d = x.shape[1]
    if d == 2:
        return x, "d = 2: the embeddings themselves"
    if d == 1:
        return np.stack([x[:, 0], np.zeros(len(x))], axis=1), "d = 1: on a line"
    return x[:, :2], (f"d = {d}: projected on the first two coordinates (a linear "
                      "projection: not PCA, so that the order / ball structure of those "
                      "coordinates is kept; cones are drawn only for d = 2)")


def _euclidean_cone_poly(apex: np.ndarray, K: float, reach: float) -> np.ndarray | None:
    """The wedge of the Euclidean cone at ``apex`` (thesis eq. 2.4: axis apex/||apex||,
    half-aperture ψ = arcsin(K/||apex||), clamped at π/2 below ||apex|| = K), cut at ``reach``."""
    r = float(np.linalg.norm(apex))
    if r == 0:
        return None
    psi = math.asin(min(1.0, K / r))
    theta = math.atan2(apex[1], apex[0])
    angles = np.linspace(theta - psi, theta + psi, 40)
    rim = apex[None, :] + reach * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([apex[None, :], rim])


def _mobius_add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xy, x2, y2 = float(x @ y), float(x @ x), float(y @ y)
    return ((1 + 2 * xy + y2) * x + (1 - x2) * y) / (1 + 2 * xy + x2 * y2)


def _geodesic(x: np.ndarray, direction: np.ndarray, n: int = 60) -> np.ndarray:
    """Points of the Poincaré-disk geodesic leaving ``x`` along ``direction`` up to (almost)
    the boundary: x ⊕ (tanh(s) û), s from 0 to large (exp_x, curvature −1)."""
    u = direction / np.linalg.norm(direction)
    return np.array([_mobius_add(x, math.tanh(s) * u) for s in np.linspace(0, 6, n)])


def _hyperbolic_cone_poly(apex: np.ndarray, K: float) -> np.ndarray | None:
    """The hyperbolic cone at ``apex`` in the Poincaré disk (thesis eq. 2.9: half-aperture
    ψ = arcsin(K (1 − ||x||²) / ||x||) around the radial axis, bounded by the two geodesics
    leaving x at ±ψ) closed by the arc of the unit circle between their ends."""
    r = float(np.linalg.norm(apex))
    if r == 0:
        return None
    psi = math.asin(min(1.0, K * (1 - r * r) / r))
    theta = math.atan2(apex[1], apex[0])
    sides = [_geodesic(apex, np.array([math.cos(theta + s), math.sin(theta + s)]))
             for s in (-psi, psi)]
    a0, a1 = (math.atan2(g[-1, 1], g[-1, 0]) for g in sides)
    # the arc through the axis' end (angle theta): unwrap both ends around theta
    d0 = (a0 - theta + math.pi) % (2 * math.pi) - math.pi
    d1 = (a1 - theta + math.pi) % (2 * math.pi) - math.pi
    arc = theta + np.linspace(d0, d1, 60)
    return np.vstack([sides[0], np.stack([np.cos(arc), np.sin(arc)], axis=1),
                      sides[1][::-1]])


def embedding_figure(parts: dict[str, Any], path: Path, title: str) -> str:
    """Label embeddings on the plane (order embeddings, Euclidean cones) or in the Poincaré disk
    (hyperbolic cones) with their basic edges parent → child, coloured by level; the cones of
    the labels for cone models in d = 2. Returns the projection's description."""
    plt = _plt()
    geometry = parts["geometry"]
    xy, how = _project(parts["x"], geometry)
    level = parts["level"]
    exact = parts["x"].shape[1] == 2
    fig, ax = plt.subplots(figsize=(6.2, 6.2))
    if geometry == "hyperbolic_cone":
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="k", lw=1))
        lim = 1.05
    else:
        span = np.abs(xy).max() if len(xy) else 1.0
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pad = 0.08 * float(max(hi - lo)) + 1e-9
        lim = None
    if exact and parts["K"] > 0 and geometry in ("euclidean_cone", "hyperbolic_cone"):
        reach = 3 * float(span) if geometry == "euclidean_cone" else 0.0
        parents = {int(u) for u, _ in parts["basic"]}
        for i in sorted(parents):
            if level[i] > CONE_LEVELS - 1:
                continue  # deeper cones would cover the plane: the top levels' only
            poly = (_euclidean_cone_poly(xy[i], parts["K"], reach) if geometry ==
                    "euclidean_cone" else _hyperbolic_cone_poly(xy[i], parts["K"]))
            if poly is not None:
                c = _LEVEL_COLORS[int(level[i]) % 8]
                ax.fill(poly[:, 0], poly[:, 1], color=c, alpha=0.12, lw=0)
                ax.plot(poly[:, 0], poly[:, 1], color=c, alpha=0.5, lw=0.6)
    for u, v in parts["basic"]:
        ax.plot([xy[u, 0], xy[v, 0]], [xy[u, 1], xy[v, 1]], color="0.55", lw=0.6, zorder=1)
    if parts["images"] is not None:
        img, lab = parts["images"]
        ixy, _ = _project(img, geometry)
        ax.scatter(ixy[:, 0], ixy[:, 1], s=5, marker="x", alpha=0.5, zorder=2,
                   c=[_LEVEL_COLORS[int(g) % 8] for g in lab], label="test images (by level-0 "
                   "label)")
    for lvl in sorted({int(v) for v in level}):
        sel = level == lvl
        ax.scatter(xy[sel, 0], xy[sel, 1], s=18, color=_LEVEL_COLORS[lvl % 8], zorder=3,
                   edgecolor="k", lw=0.3, label=f"level {lvl}")
    if len(xy) <= MAX_NAMED_LABELS and parts["names"]:
        for i, name in enumerate(parts["names"]):
            ax.annotate(str(name), xy[i], fontsize=6, xytext=(2, 2), textcoords="offset points")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    else:
        ax.set_xlim(min(lo[0] - pad, 0 - pad), hi[0] + pad)
        ax.set_ylim(min(lo[1] - pad, 0 - pad), hi[1] + pad)
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    _save(fig, path)
    return how


GEOMETRY_NAMES = {"order": "order embedding, Euclidean plane",
                  "euclidean_cone": "Euclidean cones, Euclidean plane",
                  "hyperbolic_cone": "hyperbolic cones, Poincaré disk"}


def _section_embeddings(rep: _Report, best: Sequence[Any]) -> list[str]:
    """The best embedding run's label table in 2-D; returns notes for the caller's log."""
    runs = [r for r in best if _is_edges(r) or "joint" in r.data.tags.get(f"{TAG}family", "")]
    if not runs:
        return []
    run = runs[0]
    rid = run.info.run_id
    rep.md += ["## Label embeddings (thesis Figs. 6.1-6.5)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exp = experiment_from_checkpoint(rep.t.checkpoint_dir(rid, tmp))
            parts = _embedding_parts(exp)
        except Exception as e:  # noqa: BLE001 - a missing checkpoint or dataset: one line
            rep.skip("label embeddings", f"run {rid}'s checkpoint could not be restored here "
                     f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
            return []
    if parts is None:
        return []
    name = f"embedding_{_short(rid)}.png"
    geometry = parts["geometry"]
    how = embedding_figure(parts, rep.out / name, f"run {_short(rid)}: "
                           f"{GEOMETRY_NAMES.get(geometry, geometry)}")
    cones = ""
    if geometry in ("euclidean_cone", "hyperbolic_cone"):
        euc = geometry == "euclidean_cone"
        psi, eq = ("K/‖x‖", "2.4") if euc else ("K(1−‖x‖²)/‖x‖", "2.9")
        cones = (f"; shaded: the cone of each label with children on levels 0-"
                 f"{CONE_LEVELS - 1} (apex at its embedding, axis radial, "
                 f"half-aperture ψ = arcsin({psi}), K = {parts['K']:g}, thesis eq. {eq})"
                 if parts["x"].shape[1] == 2 else "; cones not drawn (d > 2)")
    imgs = ("; crosses: a fixed sample of test images embedded in the same space"
            if parts["images"] is not None else "")
    rep.md += [f"![label embeddings]({name})", "",
               f"*best embedding run {rid} ({GEOMETRY_NAMES.get(geometry, geometry)}): "
               f"{len(parts['x'])} labels coloured by level, grey "
               f"segments the basic edges parent → child ({how}){cones}{imgs}.*", ""]
    rep.pngs.append(rep.out / name)
    notes = []
    if "joint" in run.data.tags.get(f"{TAG}family", "") and parts["images"] is None:
        notes.append("image embeddings omitted: the run's features could not be rebuilt")
        rep.md += ["- image embeddings: skipped, the run's frozen features could not be "
                   "rebuilt here.", ""]
    return notes


# ------------------------------------------------------------------ Optuna
def _load_study(parent: Any) -> tuple[Any | None, str]:
    """(the search's Optuna study, "") or (None, why not) from the parent's
    ``hpsearch.optuna_storage`` / ``hpsearch.optuna_study`` tags. A SQLite file that does not
    exist is not opened (opening would create it)."""
    url = parent.data.tags.get(f"{TAG}optuna_storage")
    name = parent.data.tags.get(f"{TAG}optuna_study")
    if not url or not name:
        return None, "the search's parent run has no hpsearch.optuna_storage / optuna_study tags"
    if url.startswith("sqlite:///"):
        f = Path(url.removeprefix("sqlite:///").split("?")[0])
        if not f.is_file():
            return None, f"its Optuna storage {url} does not exist here"
    if ":***@" in url:
        return None, f"its Optuna storage {url} is recorded without its password"
    try:
        import optuna  # heavy: only the Optuna figures need it

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        return optuna.load_study(study_name=name, storage=storage), ""
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's / Optuna's many errors: one line
        return None, (f"its Optuna study {name!r} in {url} could not be read "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")


def _visible_colours(fig: Any) -> None:
    """Optuna's parallel-coordinate lines use a colour map that fades to white at the best
    value: on a white axes the best trials vanish. Viridis stays visible end to end."""
    for ax in fig.axes:
        for coll in ax.collections:
            if getattr(coll, "get_array", lambda: None)() is not None:
                coll.set_cmap("viridis")
                if getattr(coll, "colorbar", None) is not None:
                    coll.colorbar.update_normal(coll)


def _optuna_plot(rep: _Report, name: str, title: str, caption: str,
                 draw: Callable[[], Any], post: Callable[[Any], None] | None = None) -> None:
    plt = _plt()
    try:
        # rc_context: Optuna switches the global style to ggplot; the other figures keep theirs
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every call
            ax = draw()
            ax0 = np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax
            fig = ax0.figure
            w, h = fig.get_size_inches()
            fig.set_size_inches(max(w, 7.0), max(h, 4.2))
            if post is not None:
                post(fig)
            _save(fig, rep.out / name)
    except Exception as e:  # noqa: BLE001 - too few trials / no varied parameter: one line
        plt.close("all")
        rep.skip(title, f"Optuna could not draw it ({type(e).__name__}: "
                 f"{str(e).splitlines()[0][:160] if str(e) else ''})")
        return
    rep.pngs.append(rep.out / name)
    rep.md += [f"![{title}]({name})", "", f"*{caption}*", ""]


def _section_optuna(rep: _Report, objectives: Sequence[tuple[str, str]]) -> None:
    rep.md += ["## Optuna", ""]
    study, why = _load_study(rep.parent)
    if study is None:
        rep.skip("Optuna figures", why)
        return
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        rep.skip("Optuna figures", f"study {study.study_name!r} has no completed trial")
        return
    metric = objectives[0][0]
    multi = len(study.directions) > 1
    kw: dict[str, Any] = ({"target": lambda t: t.values[0], "target_name": metric}
                          if multi else {"target_name": metric})
    first = f" (the first objective of {len(study.directions)})" if multi else ""
    n = f"{len(done)} completed trials of study {study.study_name!r}"
    _optuna_plot(rep, "optuna_history.png", "optimisation history",
                 f"{metric}{first} of every trial in Optuna's order"
                 + ("" if multi else ", and the best so far") + f"; {n}.",
                 lambda: ovm.plot_optimization_history(study, **kw))
    _optuna_plot(rep, "optuna_importances.png", "parameter importances",
                 f"fANOVA importance of each searched parameter for {metric}{first} "
                 f"(Optuna's default evaluator); {n}: with few trials these are rough.",
                 lambda: ovm.plot_param_importances(study, **kw))
    _optuna_plot(rep, "optuna_parallel.png", "parallel coordinates",
                 f"every completed trial's parameters, coloured by {metric}{first}; {n}.",
                 lambda: ovm.plot_parallel_coordinate(study, **kw), post=_visible_colours)


# ------------------------------------------------------------------ Pareto front
def _section_pareto(rep: _Report, objectives: Sequence[tuple[str, str]]) -> None:
    if len(objectives) < 2:
        return
    plt = _plt()
    rep.md += ["## Pareto front", ""]
    names = [m for m, _ in objectives]
    modes = [mode for _, mode in objectives]
    pts, runs = [], []
    for r in rep.trials:
        m = rep.t.best_epoch_metrics(r)  # each objective at the run's best epoch
        v = [m.get(k, m.get(_rank_key(k), math.nan)) for k in names]
        if all(math.isfinite(x) for x in v):
            pts.append(v)
            runs.append(r)
    if len(pts) < 2:
        rep.skip("Pareto front", f"{len(pts)} trial run(s) have every objective "
                 f"({', '.join(names)})")
        return
    front = set(pareto_front(pts, modes))
    a = np.array(pts)
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    rest = [i for i in range(len(a)) if i not in front]
    ax.scatter(a[rest, 0], a[rest, 1], s=22, color="0.6", label="dominated trials")
    f = sorted(front, key=lambda i: a[i, 0])
    ax.plot(a[f, 0], a[f, 1], "o-", color="tab:red", ms=6, label="Pareto front")
    ax.set_xlabel(f"{names[0]} ({modes[0]})")
    ax.set_ylabel(f"{names[1]} ({modes[1]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(a)} trials, {len(front)} on the front", fontsize=9)
    _save(fig, rep.out / "pareto_front.png")
    rep.pngs.append(rep.out / "pareto_front.png")
    more = (f"; the front is over all {len(names)} objectives, drawn in the first two"
            if len(names) > 2 else "")
    rep.md += ["![Pareto front](pareto_front.png)", "",
               f"*each trial at its best epoch (Tracker.best_epoch_metrics); red: the non-"
               f"dominated trials{more}.*", ""]
    rows = ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows += [f"| {runs[i].info.run_id} | " + " | ".join(f"{x:.4f}" for x in pts[i]) + " |"
             for i in sorted(front)]
    rep.md += rows + [""]


# ------------------------------------------------------------------ ASHA rungs
def asha_rungs(grace: int, eta: float, max_epochs: int) -> list[int]:
    """ASHA's milestones below ``max_epochs``: grace · eta^k (Li et al. 2020; Ray's
    ``ASHAScheduler`` with ``time_attr="epoch"``)."""
    out, k = [], 0
    while grace * eta ** k < max_epochs:
        out.append(int(round(grace * eta ** k)))
        k += 1
    return out


def _section_asha(rep: _Report, metric: str) -> None:
    plt = _plt()
    rep.md += ["## Trials per epoch (ASHA rungs)", ""]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    stopped = drawn = 0
    for r in sorted(rep.trials, key=lambda r: r.info.start_time or 0):
        pts = rep.history(r.info.run_id, metric)
        if not pts:
            continue
        early = r.data.tags.get(f"{TAG}stopped_early") == "true"
        stopped += early
        drawn += 1
        x, y = zip(*pts, strict=True)
        (line,) = ax.plot(x, y, lw=1.2, alpha=0.8, ls="--" if early else "-", marker=".",
                          ms=4)
        ax.plot(x[-1], y[-1], "X" if early else "o", color=line.get_color(), ms=7 if early
                else 4)
    if not drawn:
        plt.close(fig)
        rep.skip("trial curves", f"no trial run has a {metric} history")
        return
    p = rep.parent.data.params
    rungs: list[int] = []
    if p.get("scheduler") == "asha" and p.get("grace_period") and p.get("reduction_factor") \
            and p.get("max_epochs"):
        rungs = asha_rungs(int(p["grace_period"]), float(p["reduction_factor"]),
                           int(p["max_epochs"]))
        for i, e in enumerate(rungs):
            ax.axvline(e, color="0.4", ls=":", lw=1, label="ASHA rungs" if i == 0 else None)
    ax.plot([], [], "kX", ls="--", label="stopped early")
    ax.plot([], [], "ko", ls="-", ms=4, label="ran to the end")
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{drawn} trials, {stopped} stopped early", fontsize=9)
    _save(fig, rep.out / "trials.png")
    rep.pngs.append(rep.out / "trials.png")
    sched = p.get("scheduler", "unknown")
    extra = (f"dotted: ASHA's rungs at epochs {', '.join(map(str, rungs))} (grace period "
             f"{p['grace_period']}, reduction factor {p['reduction_factor']})" if rungs else
             f"scheduler {sched}: no rungs to mark")
    rep.md += ["![trials](trials.png)", "",
               f"*{metric} of every trial at each evaluated epoch; dashed lines ending in a "
               f"cross: trials the scheduler stopped early (tag hpsearch.stopped_early); "
               f"{extra}.*", ""]


# ------------------------------------------------------------------ the whole report
def write_report(tracker: Tracker, out_dir: str | Path, *, search_id: str | None = None,
                 split: str = "test", top: int = 3, log: bool = True) -> Path:
    """Write the report of one search as ``out_dir/index.md`` plus PNGs; returns index.md.

    The search is ``search_id``, else the experiment's latest (parent run tagged
    ``hpsearch.role=search``); the Markdown names it. With ``log`` the folder is also logged
    as the parent run's ``report/`` artifacts. A piece the runs do not afford (no embeddings in
    a classifier search) is left out; one whose data is missing (no Optuna study, no per-label
    table) is one line saying so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parent = find_search(tracker, search_id)
    sid = parent.data.tags.get(f"{TAG}search_id", parent.info.run_id)
    trials = [r for r in tracker.runs(role="trial")
              if r.data.tags.get(f"{TAG}search_id") == sid]
    objectives = search_objectives(parent, trials)
    metric, mode = objectives[0]
    ranked = ranked_trials(trials, metric, mode)
    rep = _Report(tracker, out, parent, trials, split)
    how = "given" if search_id is not None else "the latest search of the experiment"
    status: dict[str, int] = {}
    for r in trials:
        s = r.data.tags.get(f"{TAG}status", r.info.status)
        status[s] = status.get(s, 0) + 1
    rep.md += [f"# Search `{sid}`", "",
               f"Experiment `{tracker.experiment_name}`, search `{sid}` ({how}; parent run "
               f"`{parent.info.run_id}`), {len(trials)} trial runs ("
               + ", ".join(f"{n} {s}" for s, n in sorted(status.items())) + "). "
               "Objectives: " + ", ".join(f"`{m}` ({md})" for m, md in objectives)
               + f"; runs ranked by `{metric}` at their best epoch; tables on the {split} "
               "split.", ""]
    if not ranked:
        rep.md += [f"No trial run reported `{metric}`: no tables or run figures.", ""]
    best = ranked[:top]
    if best:
        rep.md += [f"## Best {len(best)} run(s)", ""]
        for r in best:
            rep.md += [run_report(tracker, r, split, ()), ""]
        _section_per_label(rep, best)
        _section_curves(rep, best[0])
        _section_embeddings(rep, best)
    _section_optuna(rep, objectives)
    _section_pareto(rep, objectives)
    _section_asha(rep, metric)
    index = out / INDEX
    index.write_text("\n".join(rep.md).rstrip() + "\n")
    if log:
        tracker.log_artifacts(parent.info.run_id, out, REPORT_ARTIFACT)
    return index
