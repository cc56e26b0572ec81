"""Tables and figures of finished runs: what ``hpsearch report``, ``best`` and ``hedge-curve``
print or draw. Rendering only: runs come from :mod:`hpsearch.tracking`, numbers from the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpsearch.data.labels import dataset_hierarchy
from hpsearch.errors import HpsearchError
from hpsearch.tasks import task_of, validate_trial
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker, summarize_params

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
                 level_names: list[str] | None = None) -> str:
    """Markdown table in the layout of the thesis' Tables 4.6/4.8/4.12/4.15: per level N_i,
    micro P/R/F1 and macro P/R/F1, plus the overall row."""
    rows = ["| level | N_i | m-P | m-R | m-F1 | M-P | M-R | M-F1 |",
            "|---|---|---|---|---|---|---|---|"]
    for i, n in enumerate(level_sizes):
        name = level_names[i] if level_names else f"level {i}"
        vals = [metrics.get(f"{split}_{c}_level_{i}") for c in LEVEL_COLUMNS]
        rows.append(f"| {name} | {n} | " + " | ".join(_cell(v) for v in vals) + " |")
    vals = [metrics.get(f"{split}_{c}") for c in LEVEL_COLUMNS]
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
    out.append(edge_table(m, split) if kind == "edges" and not levels else
               thesis_table(m, sizes, split, names))
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
