"""The live view of a search (hpsearch.search.progress) driven by fake trials, the lines a search
ends with, and the preparation progress bars (same cache with the bar forced on)."""

from __future__ import annotations

import io
import logging
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from hpsearch.search.progress import ERROR_KEY, LiveView, fmt_duration, next_steps

SEARCHED = ["optim.lr", "optim.optimizer", "optim.momentum", "data.resample"]


@dataclass
class FakeTrial:
    """What Tune's reporters read of a trial."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0
    error_file: str | None = None


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def trials4() -> list[FakeTrial]:
    return [
        FakeTrial("a", {"optim.lr": 0.0123, "optim.optimizer": "sgd", "optim.momentum": 0.9,
                        "data.resample": "none", "__hpsearch_base": {"x": 1}}),
        FakeTrial("b", {"optim.lr": 0.2, "optim.optimizer": "adamw",
                        "data.resample": "inverse_sqrt"}),
        FakeTrial("c", {"optim.lr": 0.05, "optim.optimizer": "adamw", "data.resample": "none"}),
        FakeTrial("d", {"optim.lr": 0.01, "optim.optimizer": "sgd", "optim.momentum": 0.6,
                        "data.resample": "none"}),
    ]


def view(out: io.StringIO, tty: bool, clock: Clock, **kw: Any) -> LiveView:
    v = LiveView(metric="val_micro_f1", mode="max", searched=SEARCHED, num_samples=4,
                 max_epochs=10, max_concurrent=2, search="demo-1", out=out, tty=tty,
                 clock=clock, **kw)
    v.setup(start_time=clock.t, total_samples=4)
    return v


def step(v: LiveView, trials: list, done: bool = False) -> None:
    """What tune.run does after every controller step."""
    if v.should_report(trials, done=done):
        v.report(trials, done, "sched", "resources")


def result(epoch: int, t: float, f1: float, best: float | None = None, **kw: Any) -> dict:
    return {"epoch": float(epoch), "time_total_s": t, "val_micro_f1": f1,
            "best_val_micro_f1": f1 if best is None else best, "best_epoch": float(epoch),
            "train_images_per_s": 1234.0, "train_loss": 0.5, **kw}


def play(v: LiveView, clock: Clock) -> list[FakeTrial]:
    """A search: a finishes, b is stopped early, c errors, d runs; then the search ends."""
    ts = trials4()
    step(v, ts)  # nothing created yet that runs
    ts[0].status = ts[1].status = "RUNNING"
    step(v, ts)
    for ep in range(1, 11):
        clock.t += 10
        ts[0].last_result = result(ep, 10.0 * ep, 0.3 + 0.02 * ep)
        if ep <= 2:
            ts[1].last_result = result(ep, 10.0 * ep, 0.2)
        if ep == 2:
            ts[1].status = "TERMINATED"  # ASHA
            ts[2].status = "RUNNING"
        if ep == 3:
            ts[2].status = "TERMINATED"
            ts[2].last_result = {"val_micro_f1": float("nan"),
                                 ERROR_KEY: "ConfigError: momentum needs sgd", "done": True}
            ts[3].status = "RUNNING"
        if ep >= 4:
            ts[3].last_result = result(ep - 3, 10.0 * (ep - 3), 0.25)
        step(v, ts)
    ts[0].status = "TERMINATED"
    step(v, ts)
    step(v, ts, done=True)
    return ts


def test_event_mode_one_line_per_event():
    out, clock = io.StringIO(), Clock()
    v = view(out, tty=False, clock=clock, epoch_every_s=25.0)
    play(v, clock)
    text = out.getvalue()
    lines = text.splitlines()
    assert "\x1b[" not in text  # no cursor control in a log
    started = [ln for ln in lines if " started: " in ln]
    assert [ln.split()[1] for ln in started] == ["#1", "#2", "#3", "#4"]
    # the conditional momentum shows where sampled, not elsewhere
    assert "trial #1 started: lr=0.0123 optimizer=sgd momentum=0.9 resample=none" in lines
    assert "trial #2 started: lr=0.2 optimizer=adamw resample=inverse_sqrt" in lines
    assert "__hpsearch" not in text
    assert any(ln.startswith("trial #1 finished (epoch 10/10): best val_micro_f1=0.5000 at "
                             "epoch 10") for ln in lines)
    assert "trial #2 stopped early at epoch 2/10: best val_micro_f1=0.2000 at epoch 2" in lines
    assert "trial #3 errored at no epoch: ConfigError: momentum needs sgd" in lines
    # epoch lines: at most one per trial per 25 s of the (fake) clock, 10 s per epoch
    epochs1 = [ln for ln in lines if ln.startswith("trial #1 epoch ")]
    assert [ln.split()[3] for ln in epochs1] == ["1/10", "4/10", "7/10", "10/10"]
    assert "val_micro_f1=0.3200 1234 img/s | 0/4 ended, 2 running, ETA ≤ " in epochs1[0]
    # each event once: no line repeated, no table
    assert len(lines) == len(set(lines))
    assert lines[-1].startswith("demo-1: 4 trials in 1m40s (1 finished, 1 stopped early, "
                                "1 errored, 1 unfinished); best #1 val_micro_f1=0.5000")
    assert sum(1 for ln in lines if ln.startswith("demo-1:")) == 1


def test_tty_mode_redraws_one_block():
    out, clock = io.StringIO(), Clock()
    v = view(out, tty=True, clock=clock)
    ts = play(v, clock)
    text = out.getvalue()
    assert text.count("\x1b[J") > 5  # redrawn in place, not appended
    last = text.rsplit("\x1b[J", 1)[-1]
    blk = last.splitlines()
    assert blk[0].startswith("demo-1: 3/4 ended (1 finished, 1 stopped, 1 errored), 1 running, "
                             "0 pending, 1m40s elapsed, ETA ≤ ")
    assert blk[1].startswith("  #4   epoch 7/10 val_micro_f1=0.2500 1234 img/s  lr=0.01 "
                             "optimizer=sgd momentum=0.6 resample=none")
    assert blk[2].startswith("  best #1: val_micro_f1=0.5000 (epoch 10) lr=0.0123")
    assert len(blk) == 3
    # ended trials leave one permanent line each (above the block), values included
    for n, word in ((1, "finished"), (2, "stopped early"), (3, "errored")):
        assert text.count(f"trial #{n} {word}") == 1
    assert "trial #2 stopped early at epoch 2/10: best val_micro_f1=0.2000 at epoch 2  " \
           "lr=0.2 optimizer=adamw resample=inverse_sqrt" in text
    # the amount moved up is the height of the previous block
    ups = [int(m) for m in re.findall(r"\x1b\[(\d+)F\x1b\[J", text)]
    assert ups and all(1 <= u <= 4 for u in ups)
    assert v.counts(ts) == {"finished": 1, "stopped": 1, "errored": 1, "running": 1,
                            "pending": 0}


class TtyIO(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tty_erases_the_block_before_a_log_line():
    """A warning Ray logs between two redraws lands where the block was, not inside it."""
    out, clock = TtyIO(), Clock()
    handler = logging.StreamHandler(out)
    log = logging.getLogger("test_progress.fake_ray")
    log.addHandler(handler)
    log.propagate = False
    try:
        v = view(out, tty=True, clock=clock)
        ts = trials4()
        ts[0].status, ts[0].last_result = "RUNNING", result(1, 10.0, 0.3)
        step(v, ts)
        drawn = out.getvalue().count("\n")
        log.warning("took 0.8 s, may be a bottleneck")
        text = out.getvalue()
        assert text.endswith(f"\x1b[{drawn}F\x1b[Jtook 0.8 s, may be a bottleneck\n")
        step(v, ts)  # drawn again below the warning, without moving up over it
        after = out.getvalue()[len(text):]
        assert after.startswith("demo-1: 0/4 ended") and "\x1b[" not in after
        step(v, ts, done=True)
        assert not handler.filters  # unhooked when the search ends
    finally:
        log.removeHandler(handler)


def test_eta_hand_computed():
    """4 trials x 10 epochs, 2 at once: a finished (10 ep, 100 s), b stopped (2 ep, 20 s),
    c running (3 ep, 30 s), d pending. 10 s per trial-epoch; done = 10 + 10 + 3 = 23 of 40;
    workers = min(2, 4 - 2 ended) = 2; ETA = 17 * 10 / 2 = 85 s."""
    clock = Clock()
    v = view(io.StringIO(), tty=False, clock=clock)
    ts = trials4()
    ts[0].status, ts[0].last_result = "TERMINATED", result(10, 100.0, 0.5)
    ts[1].status, ts[1].last_result = "TERMINATED", result(2, 20.0, 0.2)
    ts[2].status, ts[2].last_result = "RUNNING", result(3, 30.0, 0.3)
    assert v.eta_s(ts) == pytest.approx(85.0)
    clock.t += 83
    assert v.header(ts[:3]).endswith("1 running, 1 pending, 1m23s elapsed, ETA ≤ 1m25s")
    # one trial left: one worker, whatever max_concurrent says
    ts[2].status = "TERMINATED"
    ts[3].status, ts[3].last_result = "RUNNING", result(4, 40.0, 0.3)
    # 10 s/epoch; done = 30 + 4 = 34; 6 left on min(2, 1) worker
    assert v.eta_s(ts) == pytest.approx(60.0)
    assert v.eta_s(trials4()) is None  # nothing reported yet
    assert "ETA ?" in v.header(trials4())


def test_min_mode_best_and_retry_line():
    out, clock = io.StringIO(), Clock()
    v = LiveView(metric="val_loss", mode="min", searched=["optim.lr"], num_samples=2,
                 max_epochs=3, out=out, tty=False, clock=clock)
    ts = [FakeTrial("x", {"optim.lr": 0.1}, "RUNNING", {"epoch": 1.0, "val_loss": 2.0}),
          FakeTrial("y", {"optim.lr": 0.2}, "RUNNING", {"epoch": 1.0, "val_loss": 1.0})]
    assert v.best(ts)[0] is ts[1]
    step(v, ts)
    ts[0].num_failures, ts[0].status = 1, "PENDING"
    step(v, ts)
    assert "trial #1 failed (1x so far), retrying from its last checkpoint" in out.getvalue()
    ts[1].status = "ERROR"
    ts[1].error_file = "/tmp/x/error.txt"
    step(v, ts)
    assert "trial #2 errored at epoch 1/3: see /tmp/x/error.txt" in out.getvalue()


def test_pickles_without_its_stream():
    out = io.StringIO()
    v = LiveView(metric="m", mode="max", searched=[], num_samples=1, max_epochs=1, out=out)
    w = pickle.loads(pickle.dumps(v))
    assert w._out is None and w.metric == "m"


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 42.4, 85, 3599, 7620)] == \
        ["0s", "42s", "1m25s", "59m59s", "2h07m"]


def test_next_steps_default_store(tmp_path):
    rd = tmp_path / "res"
    uri = f"sqlite:///{rd.resolve() / 'mlflow.db'}"
    text = next_steps(tracking_uri=uri, experiment="demo", search_id="demo-20260101-000000",
                      best_run_id="abc123", results_dir=str(rd))
    lines = text.splitlines()
    assert lines[0] == "next steps:"
    assert f"  mlflow ui --backend-store-uri {uri}" in lines
    assert (f"  hpsearch best --experiment demo --search-id demo-20260101-000000 --results-dir "
            f"{rd}") in lines
    assert (f"  hpsearch report --experiment demo --search-id demo-20260101-000000 "
            f"--results-dir {rd} --out {rd}/report-demo-20260101-000000") in lines
    assert f"  hpsearch export abc123 --out {rd}/exports/abc123 --results-dir {rd}" in lines


def test_next_steps_other_store_quoted_no_export():
    text = next_steps(tracking_uri="http://mlflow:5000", experiment="my exp",
                      best_run_id="r1", exported=True, results_dir="results")
    assert "open http://mlflow:5000 in a browser" in text
    assert "hpsearch best --experiment 'my exp' --tracking-uri http://mlflow:5000" in text
    assert "export" not in text.replace("exports", "")
    assert "--results-dir" not in text


def test_cache_build_same_with_progress_bar(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from hpsearch.data.cache import cached_image_array

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (70, 12, 12, 3), dtype=np.uint8)
    files = []
    for i in range(70):  # >= 64 files: the threaded path
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(arr[i]).save(files[-1])
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("HPSEARCH_PROGRESS", flag)
        a = cached_image_array(["arr"], lambda: arr, 8, cache=tmp_path / f"c{flag}")
        p = cached_image_array(["png"], files, 8, cache=tmp_path / f"c{flag}", workers=2)
        got[flag] = (np.array(a), np.array(p))
        err = capsys.readouterr().err
        assert ("image cache" in err) == (flag == "1")
        if flag == "1":
            assert "70/70" in err
    assert np.array_equal(got["0"][0], got["1"][0])
    assert np.array_equal(got["0"][1], got["1"][1])
    assert got["1"][1].shape == (70, 8, 8, 3)


def test_error_key_is_the_trainables():
    """The view reads the trainable's terminal-error key without importing torch: a copy
    that must stay equal."""
    from hpsearch.search import trainable

    assert ERROR_KEY == trainable.ERROR_KEY


def test_summary_names_the_peak_resource_use():
    """Tune's executor line ("Logical resource usage: ...") is not printed at every step; the
    last line says the busiest it was (how many trials the cluster really ran at once)."""
    out, clock = io.StringIO(), Clock()
    v = view(out, tty=False, clock=clock)
    ts = trials4()
    ts[0].status = "RUNNING"
    v.report(ts, False, "sched", "Logical resource usage: 1.0/2 CPUs, 0/0 GPUs")
    ts[1].status = "RUNNING"
    v.report(ts, False, "sched", "Logical resource usage: 2.0/2 CPUs, 0/0 GPUs (0.0/1.0 x)")
    ts[0].status = ts[1].status = "TERMINATED"
    v.report(ts, True, "sched", "Logical resource usage: 0/2 CPUs, 0/0 GPUs")
    last = out.getvalue().strip().splitlines()[-1]
    assert last.endswith("peak resource use 2.0/2 CPUs, 0/0 GPUs"), last
