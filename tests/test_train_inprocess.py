"""A trial in the plain process (no Ray): trains, checkpoints every epoch, resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpsearch.data import load_dataset
from hpsearch.data.transforms import epoch_indices
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.runner import (
    DirectoryReporter,
    load_checkpoint,
    run_trial,
    staging_dir,
    sweep_staging,
)

from .conftest import TINY_DATA

CFG = {"data.params": TINY_DATA, "model.width": 8, "optim.epochs": 3, "optim.lr": 0.05,
       "optim.batch_size": 32}


def test_synthetic_data_is_deterministic_and_hierarchical():
    cfg = TrialConfig.from_flat(CFG)
    a, b = load_dataset(cfg.data), load_dataset(cfg.data)
    assert np.array_equal(a.train.images, b.train.images)
    assert a.hierarchy.level_sizes == (2, 4, 8)
    # every leaf appears in every split
    for split in (a.train, a.val, a.test):
        assert set(split.level_labels[:, -1]) == set(range(8))


def test_default_synthetic_data_finest_level_is_hardest():
    """Coarse traits are easier than fine ones: nearest class mean on raw pixels."""
    a = load_dataset(TrialConfig().data)
    assert a.hierarchy.level_sizes == (4, 10, 25, 60)
    counts = np.bincount(a.train.level_labels[:, -1])
    assert counts.max() >= 8 * counts.min()  # long tail
    x = a.train.images.reshape(len(a.train), -1).astype(np.float32)
    xt = a.test.images.reshape(len(a.test), -1).astype(np.float32)
    acc = []
    for lvl in range(4):
        y, yt = a.train.level_labels[:, lvl], a.test.level_labels[:, lvl]
        means = np.stack([x[y == c].mean(0) for c in range(a.hierarchy.level_sizes[lvl])])
        d = (xt**2).sum(1)[:, None] - 2 * xt @ means.T + (means**2).sum(1)[None]
        acc.append((d.argmin(1) == yt).mean())
    assert acc[0] > 0.95 and acc[3] < acc[0] - 0.05


def test_weighted_sharded_sampler_covers_disjoint_shares():
    w = np.full(10, 0.1)
    r0 = epoch_indices(10, epoch=0, seed=1, rank=0, world_size=2)
    r1 = epoch_indices(10, epoch=0, seed=1, rank=1, world_size=2)
    assert sorted(np.concatenate([r0, r1])) == list(range(10))
    d0 = epoch_indices(10, epoch=0, seed=1, rank=0, world_size=2, weights=w)
    assert len(d0) == 5
    assert not np.array_equal(epoch_indices(10, epoch=1, seed=1), r0)


def test_trial_trains_checkpoints_and_resumes(tmp_path):
    cfg = TrialConfig.from_flat(CFG)
    rep = DirectoryReporter(tmp_path / "ck")
    best = run_trial(cfg, rep)
    assert len(rep.history) == 3
    last = rep.history[-1]
    for key in ("train_loss", "val_micro_f1", "val_macro_f1", "val_micro_f1_level_2",
                "test_micro_f1", "test_mistake_severity", "best_val_micro_f1"):
        assert key in last and np.isfinite(last[key]), key
    assert rep.history[0]["train_loss"] > last["train_loss"]
    assert last["val_micro_f1_level_0"] > 0.6  # the coarse level is learnt in 3 epochs
    table = (tmp_path / "ck" / "reports" / "per_label_f1_test.csv").read_text().splitlines()
    assert table[0].startswith("level,label,train_count") and len(table) == 1 + 2 + 4 + 8
    state = load_checkpoint(tmp_path / "ck")
    assert state["epoch"] == 2 and state["best"]["epoch"] == best.epoch
    # best.pt holds weights (no optimizer state: checkpoint.pt has that) and still restores
    import torch

    from hpsearch.tasks import experiment_from_checkpoint

    best_pt = torch.load(tmp_path / "ck" / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best_pt["experiment"] and "optimizer" in state["experiment"]
    exp = experiment_from_checkpoint(tmp_path / "ck")
    for k, v in exp.model.state_dict().items():
        assert torch.equal(v, best_pt["experiment"]["model"][k]), k
    # continue the same trial to 5 epochs: only epochs 4 and 5 run
    cfg5 = cfg.replace(optim__epochs=5)
    rep2 = DirectoryReporter(tmp_path / "ck")
    run_trial(cfg5, rep2, resume_from=tmp_path / "ck")
    assert [m["epoch"] for m in rep2.history] == [4.0, 5.0]


def test_eval_every_reports_every_k_epochs_and_the_last(tmp_path):
    cfg = TrialConfig.from_flat({**CFG, "optim.epochs": 5, "optim.eval_every": 2})
    rep = DirectoryReporter(tmp_path / "ck")
    run_trial(cfg, rep)
    assert [m["epoch"] for m in rep.history] == [2.0, 4.0, 5.0]


def test_checkpoint_staging_is_removed_when_report_raises(tmp_path, monkeypatch):
    """A scheduler stopping a trial makes ``report`` raise: its checkpoint must not leak."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[Path] = []

    def stop_at_second(metrics, ckpt_dir):
        seen.append(ckpt_dir)
        assert (ckpt_dir / "checkpoint.pt").exists()
        if len(seen) == 2:
            raise KeyboardInterrupt("stopped by the scheduler")

    cfg = TrialConfig.from_flat(CFG)
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, stop_at_second)
    assert len(seen) == 2 and not any(p.exists() for p in seen)
    assert not list(tmp_path.glob("hpsearch-ckpt-*"))


def test_sweep_removes_staging_of_dead_processes_only(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    mine = staging_dir("ckpt", root=tmp_path)
    host = mine.name.split("-")[2]
    orphan = tmp_path / f"hpsearch-ckpt-{host}-{dead_pid}-abc"
    orphan_resume = tmp_path / f"hpsearch-resume-{host}-{dead_pid}-def"
    other_host = tmp_path / f"hpsearch-ckpt-otherhost{host}-{dead_pid}-ghi"
    unrelated = tmp_path / f"hpsearch-bench-{host}-{dead_pid}-jkl"
    for d in (orphan, orphan_resume, other_host, unrelated):
        (d / "x").mkdir(parents=True)
    assert sweep_staging(tmp_path) == 2
    assert not orphan.exists() and not orphan_resume.exists()
    assert mine.exists() and other_host.exists() and unrelated.exists()
