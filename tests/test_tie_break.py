"""A second selection criterion for saturated metrics: best epoch, best run, space and CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hpsearch.errors import ConfigError
from hpsearch.metrics.edges import f1_optimal_interval
from hpsearch.search.space import validate_space
from hpsearch.search.tuner import search_tracker
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.runner import BestSoFar, DirectoryReporter, require_metrics, run_trial
from hpsearch.tracking import default_tracking_uri


def test_best_so_far_orders_by_metric_then_tie_break():
    b = BestSoFar(value=1.0, epoch=3, tie=0.2)
    assert b.improves(1.1, "max") and not b.improves(0.9, "max")
    assert not b.improves(1.0, "max")  # no tie-break given: the earlier epoch stays
    assert b.improves(1.0, "max", 0.3) and not b.improves(1.0, "max", 0.2)
    assert b.improves(1.0, "max", 0.1, "min") and not b.improves(1.0, "max", 0.3, "min")
    assert not b.improves(0.9, "max", 5.0)  # the tie-break never overrides the metric
    assert BestSoFar(value=1.0, epoch=0).improves(1.0, "max", 0.0)  # no tie value yet
    assert not b.improves(math.nan, "max", 9.0)


class _Saturating:
    """val_f1 reaches 1.0 at epoch 1 and stays; val_gap keeps growing."""

    hierarchy = None

    def __init__(self, cfg):
        self.cfg, self.epoch = cfg, -1

    def reports(self, split):
        return {}

    def train_one_epoch(self, epoch):
        self.epoch = epoch
        return {"loss": 1.0 / (epoch + 1)}

    def evaluate(self, split):
        return {"f1": min(1.0, 0.5 + 0.5 * self.epoch), "gap": float(self.epoch)}

    def state_dict(self):
        return {"epoch": torch.tensor(self.epoch)}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])


@pytest.mark.parametrize("tie_break,best_epoch", [(None, 1), ("val_gap", 4)])
def test_run_trial_keeps_the_earliest_saturated_epoch_unless_a_tie_break_is_set(
        tmp_path, tie_break, best_epoch):
    cfg = TrialConfig.from_flat({"metric": "val_f1", "tie_break": tie_break,
                                 "optim.epochs": 5})
    rep = DirectoryReporter(tmp_path / "ckpt")
    best = run_trial(cfg, rep, experiment_factory=lambda c, ctx: _Saturating(c))
    assert (best.value, best.epoch) == (1.0, best_epoch)
    last = rep.history[-1]
    assert last["best_epoch"] == best_epoch + 1
    assert ("best_val_gap" in last) == (tie_break is not None)
    saved = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert int(saved["experiment"]["epoch"]) == best_epoch


def test_run_trial_rejects_a_tie_break_the_family_does_not_produce(tmp_path):
    cfg = TrialConfig.from_flat({"metric": "val_f1", "tie_break": "val_nope",
                                 "optim.epochs": 1})
    with pytest.raises(ConfigError, match="'val_nope' is not produced"):
        run_trial(cfg, DirectoryReporter(tmp_path), experiment_factory=lambda c, ctx:
                  _Saturating(c))


def test_tie_break_must_be_a_validation_metric_and_reaches_the_trial_config():
    with pytest.raises(ValueError, match="must be a validation metric"):
        TrialConfig(tie_break="test_edge_gap")
    raw = {"name": "t", "family": "order_embedding", "metric": "val_edge_f1",
           "tie_break": "val_edge_gap", "fixed": {"data.params": {"label_source": "dataset"}}}
    cfg = validate_space(raw, check_registries=False).resolve({})
    assert (cfg.tie_break, cfg.tie_break_mode) == ("val_edge_gap", "max")
    with pytest.raises(ConfigError, match="tie_break: 'val_edge_gapp' is not produced"):
        require_metrics(cfg.model_copy(update={"tie_break": "val_edge_gapp"}),
                         {"edge_f1", "edge_gap"})
    require_metrics(cfg, {"edge_f1", "edge_gap"})


def test_f1_optimal_interval():
    lo, hi, f1, p, r = f1_optimal_interval(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 4.0]))
    assert (lo, hi, f1, p, r) == (1.0, 3.0, 1.0, 1.0, 1.0)
    lo, hi, *_ = f1_optimal_interval(torch.tensor([5.0]), torch.tensor([1.0]))
    assert (lo, hi) == (5.0, math.inf)  # everything predicted an edge: nothing above


def test_best_runs_break_ties_by_the_tie_break_metric(tmp_path: Path):
    results = tmp_path / "results"
    results.mkdir()
    t = search_tracker(default_tracking_uri(results), "exp", results)
    parent = t.search_run("s-1", "s-1", tags={}, params={})
    ids = {}
    for name, f1, gap in (("a", 1.0, 0.1), ("b", 1.0, 0.7), ("c", 0.9, 5.0), ("d", 1.0, 0.4)):
        rid, _ = t.trial_run(parent, "s-1", name, name=name, tags={})
        t.log_metrics(rid, {"best_val_edge_f1": f1, "best_val_edge_gap": gap}, step=1)
        ids[rid] = name
    order = [ids[r.info.run_id] for r in t.best_runs("val_edge_f1", "max", 4,
                                                       tie_break="val_edge_gap")]
    assert order == ["b", "d", "a", "c"]
    order = [ids[r.info.run_id] for r in t.best_runs(
        "val_edge_f1", "max", 4, tie_break="val_edge_gap", tie_break_mode="min")]
    assert order == ["a", "d", "b", "c"]


def test_readme_search_space_example_is_valid_and_its_tie_break_exists():
    """The README's YAML example (with tie_break) validates and passes the metric pre-flight."""
    import re

    import yaml

    from hpsearch.tasks.runner import check_metrics

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "tie_break" in b)
    raw = yaml.safe_load(block)
    raw["fixed"]["data.params"] = {"level_sizes": [2, 4], "max_per_leaf": 12, "min_per_leaf": 6,
                                   "amplitudes": [0.5, 0.3], "grids": [2, 4]}
    cfg = validate_space(raw).resolve({})
    assert cfg.tie_break == raw["tie_break"]
    check_metrics(cfg)  # raises ConfigError for a metric never logged
