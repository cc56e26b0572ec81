"""What a search prints while it runs, and the lines it ends with.

:class:`LiveView` is the Tune ``ProgressReporter`` of a search (``RunConfig(progress_reporter=)``)
in place of ``CLIReporter``, whose reprinted tables made a 12-trial demo print over a thousand
lines without saying when it would end:

* on a terminal it redraws one compact block in place (plain ANSI: cursor up, clear to the end
  of the screen): a header with the trials ended / running / pending out of ``num_samples``,
  the elapsed time and an ETA, one line per running trial (its number, the searched values it
  uses, epoch, metric, images/s) and the best trial so far. A trial that ends leaves one line
  above the block, so the terminal keeps the history;
* anywhere else (a CI log, a file, Slurm's output) it prints one line per event: a trial
  started (with its values), a trial's epoch (at most every ``epoch_every_s`` seconds per
  trial), a trial finished / stopped early / errored (with its best value). Nothing is ever
  reprinted.

Trial numbers are 1-based in creation order (Tune's trial list; kept across a restore), the
numbers of the MLflow runs ``<search>/<n>``. The values shown are the searched dimensions present
in that trial's config: a conditional dimension (``when:``) appears only in the trials that
sampled it.

:func:`next_steps` is the text a finished search ends with: how to look at it (MLflow UI, ``best``,
``report``, ``export``) with the real store, experiment and run.

Rich was not worth a dependency here: the block is a handful of lines redrawn at most once a
second, which two ANSI sequences do; the non-terminal mode is plain lines anyway.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ray.tune.progress_reporter import ProgressReporter, RemoteReporterMixin

# hpsearch.search.trainable.ERROR_KEY: a trial that ended with a deterministic error reports it
# in its last result (TERMINATED for Tune). Not imported from there: that module pulls torch.
ERROR_KEY = "hpsearch_error"
# Tune's executor line in sys_info: "Logical resource usage: 2.0/2 CPUs, 0/0 GPUs (...)"
_USAGE = re.compile(r"Logical resource usage: (([0-9.]+)/[0-9.]+ CPUs[^\n(]*)")
INTERNAL_PREFIX = "__hpsearch"  # codec.INTERNAL_PREFIX: the constants every config carries
RATE_KEY = "train_images_per_s"
_UP_CLEAR = "\x1b[{n}F\x1b[J"  # cursor to the start of the line n up, clear to the screen's end


def trial_number(numbers: dict[str, int], trial: Any, trials: list | None) -> int:
    """A trial's 1-based number in its search: its place in Tune's trial list (creation
    order, kept across a restore; Optuna's trial number + 1), remembered in ``numbers`` once
    given. The MLflow run names and the live view number trials with it."""
    n = numbers.get(trial.trial_id)
    if n is None:
        n = (trials.index(trial) + 1 if trials is not None and trial in trials
             else len(numbers) + 1)
        numbers[trial.trial_id] = n
    return n


def fmt_value(v: Any) -> str:
    """A sampled value, short: ``0.0123``, ``sgd``, ``true``, ``[64,32]``."""
    if isinstance(v, str) and v.startswith("json:"):  # codec.encode_choice
        try:
            v = json.loads(v[5:])
        except ValueError:
            return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list | dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def fmt_duration(s: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its last part (``optim.lr`` -> ``lr``), unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


class LiveView(ProgressReporter, RemoteReporterMixin):
    """The progress of one search: a live block on a terminal, one line per event elsewhere.

    Args:
        metric: the metric of the search (``val_micro_f1``); trials report ``best_<metric>``.
        mode: ``max`` or ``min``.
        searched: the space's searched dimension names (dotted keys), in space order.
        num_samples: trials of the search.
        max_epochs: epochs of a trial that is not stopped early.
        max_concurrent: trials that run at once.
        search: the search id (``demo-20260101-120000``), shown in the header.
        out: where to write (default: ``sys.stdout`` at the time of writing).
        tty: redraw in place (True) or print events (False); default: ``out.isatty()``.
        epoch_every_s: in event mode, at most one epoch line per trial this often.
        redraw_every_s: on a terminal, redraw at most this often (and at every change).
        max_rows: running trials listed in the block; the rest are counted.
        clock: seconds since the epoch (tests pass a fake one).

    The ETA of the search is ``remaining trial-epochs × seconds per trial-epoch / workers``:

    * seconds per trial-epoch: the summed ``time_total_s`` of every trial that reported, over
      the summed epochs they reported (so a trial's start-up cost is part of it);
    * remaining trial-epochs: ``num_samples × max_epochs`` minus the epochs done, where a trial
      that ended (finished, stopped early, errored) counts as all ``max_epochs`` done and a
      running one as the epochs it reported;
    * workers: ``max_concurrent``, but no more than the trials that have not ended.

    It is the time left if no further trial is stopped early; ASHA stops most of them, hence
    ``ETA ≤``. Unknown (``ETA ?``) until the first epoch is reported.
    """

    def __init__(self, *, metric: str, mode: str, searched: Sequence[str], num_samples: int,
                 max_epochs: int, max_concurrent: int = 1, search: str = "",
                 out: TextIO | None = None, tty: bool | None = None,
                 epoch_every_s: float = 30.0, redraw_every_s: float = 1.0, max_rows: int = 20,
                 clock: Callable[[], float] = time.time) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.searched = list(searched)
        self.labels = _labels(self.searched)
        self.num_samples, self.max_epochs = int(num_samples), int(max_epochs)
        self.max_concurrent = max(1, int(max_concurrent))
        self.search = search
        self.epoch_every_s, self.redraw_every_s = epoch_every_s, redraw_every_s
        self.max_rows = max_rows
        self.clock = clock
        self._out = out
        self._tty_arg = tty
        self._reset(clock())

    # Tune pickles the run config (tuner.pkl; a Ray Client run ships the reporter to the
    # cluster): the stream stays behind, and a restored view starts afresh
    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_out"], d["_hooks"], d["_showwarning"], d["_lock"] = None, [], None, None
        d["clock"] = None if d["clock"] is time.time else d["clock"]
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self.clock = self.clock or time.time
        self._reset(self.clock())

    def _reset(self, start: float) -> None:
        self._start = start
        self._numbers: dict[str, int] = {}
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._failures: dict[str, int] = {}
        self._epoch_line: dict[str, tuple[float, float]] = {}  # trial -> (time, epoch) printed
        self._drawn = 0  # lines of the live block on screen
        self._last_draw = -math.inf
        self._signature: tuple = ()
        self._pending: list[str] = []
        self._finished = False
        self._hooks: list[tuple[Any, Any]] = []  # (handler, filter) cleared-before-logging
        self._lock = threading.RLock()  # Ray logs from its threads: erase() vs. report()
        self._showwarning: Any = None

    # ------------------------------------------------------------------ Tune's interface
    def setup(self, start_time: float | None = None, total_samples: int | None = None,
              metric: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        """Tune calls this when ``fit`` starts: the clock starts then."""
        self._unhook()
        self._reset(start_time if start_time is not None else self.clock())
        if total_samples and total_samples > 0:
            self.num_samples = int(total_samples)
        if self.tty and self.output_queue is None:
            self._hook()

    # Ray, MLflow and Optuna log warnings to the terminal between two redraws; moving up over
    # them would leave a stale block behind. So the block is erased just before a log record
    # or a warning is written to a terminal, and drawn again below it at the next report.
    def _hook(self) -> None:
        view = self

        class _Erase(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                view.erase()
                return True

        erase = _Erase()
        loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger))]
        for lg in loggers:
            for h in lg.handlers:
                stream = getattr(h, "stream", None)
                try:
                    on_tty = bool(stream is not None and stream.isatty())
                except (AttributeError, ValueError):
                    on_tty = False
                if on_tty and erase not in h.filters:
                    h.addFilter(erase)
                    self._hooks.append((h, erase))
        self._showwarning = shown = warnings.showwarning

        def showwarning(*args: Any, **kwargs: Any) -> None:
            view.erase()
            shown(*args, **kwargs)

        warnings.showwarning = showwarning

    def _unhook(self) -> None:
        for h, f in self._hooks:
            h.removeFilter(f)
        self._hooks = []
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None

    def erase(self) -> None:
        """Remove the live block from the terminal (it is drawn again at the next report)."""
        with self._lock:
            if self.tty and self._drawn:
                self._emit(_UP_CLEAR.format(n=self._drawn))
                self._drawn = 0

    @property
    def tty(self) -> bool:
        if self._tty_arg is not None:
            return bool(self._tty_arg)
        try:
            return bool(self._stream().isatty())
        except (AttributeError, ValueError):
            return False

    def should_report(self, trials: list, done: bool = False) -> bool:
        if done:
            return not self._finished
        self._pending = self._events(trials)
        if not self.tty:
            return bool(self._pending)
        return (bool(self._pending) or self._sig(trials) != self._signature
                or not self._drawn or self.clock() - self._last_draw >= self.redraw_every_s)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        with self._lock:
            self._note_usage(sys_info)
            self._report(trials, done)

    def _note_usage(self, sys_info: Sequence[str]) -> None:
        """Keep the busiest "Logical resource usage" Tune reported (its executor's line, e.g.
        ``2.0/2 CPUs, 0/0 GPUs``): the summary says how much of the cluster the search used
        at its peak (a cluster that never runs two trials at once shows here)."""
        for info in sys_info:
            m = _USAGE.search(str(info))
            if m:
                used = float(m.group(2))
                if used >= getattr(self, "_peak_cpus", -1.0):
                    self._peak_cpus, self._peak_usage = used, m.group(1).strip()

    def _report(self, trials: list, done: bool) -> None:
        events = self._pending if not done else self._events(trials)
        self._pending = []
        now = self.clock()
        if not self.tty:
            lines = events
            if done and not self._finished:
                lines = [*lines, self._summary(trials, now)]
            self._emit("".join(f"{ln}\n" for ln in lines))
        else:
            size = shutil.get_terminal_size((120, 24))
            block = [ln[:size.columns - 1] for ln in self.block(trials, now)]
            if len(block) > size.lines - 1:  # taller than the screen: no moving up over it
                block = [*block[:size.lines - 2], block[-1]]
            text = _UP_CLEAR.format(n=self._drawn) if self._drawn else ""
            text += "".join(f"{ln}\n" for ln in events) + "".join(f"{ln}\n" for ln in block)
            self._emit(text)
            self._drawn = len(block)
            self._last_draw, self._signature = now, self._sig(trials)
        if done:
            self._finished = True
            self._unhook()

    def display(self, string: str) -> None:
        """Write ``string`` (on the driver: Ray Client hands the remote view's text here)."""
        out = self._stream()
        out.write(string)
        out.flush()

    # ------------------------------------------------------------------ what is shown
    def block(self, trials: list, now: float | None = None) -> list[str]:
        """The live block: header, running trials, best so far."""
        now = self.clock() if now is None else now
        lines = [self.header(trials, now)]
        running = [t for t in trials if self._state(t) == "running"]
        for t in running[:self.max_rows]:
            lines.append("  " + self._trial_line(t, trials))
        if len(running) > self.max_rows:
            lines.append(f"  … and {len(running) - self.max_rows} more running")
        best = self.best(trials)
        if best is not None:
            t, value = best
            lines.append(f"  best #{self._number(t, trials)}: {self._metric_text(t, value)} "
                         f"{self._values(t)}".rstrip())
        return lines

    def header(self, trials: list, now: float | None = None) -> str:
        """``<search>: 3/12 ended (2 finished, 1 stopped, 0 errored), 4 running, 5 pending,
        1m23s elapsed, ETA ≤ 4m10s``."""
        now = self.clock() if now is None else now
        c = self.counts(trials)
        ended = c["finished"] + c["stopped"] + c["errored"]
        eta = self.eta_s(trials)
        prefix = f"{self.search}: " if self.search else ""
        return (f"{prefix}{ended}/{self.num_samples} ended ({c['finished']} finished, "
                f"{c['stopped']} stopped, {c['errored']} errored), {c['running']} running, "
                f"{c['pending']} pending, {fmt_duration(now - self._start)} elapsed, "
                + ("ETA ?" if eta is None else f"ETA ≤ {fmt_duration(eta)}"))

    def counts(self, trials: list) -> dict[str, int]:
        c = dict.fromkeys(("finished", "stopped", "errored", "running"), 0)
        for t in trials:
            s = self._state(t)
            if s in c:
                c[s] += 1
        c["pending"] = max(0, self.num_samples - sum(c.values()))
        return c

    def eta_s(self, trials: list) -> float | None:
        """Seconds the search has left if no further trial is stopped early (class docstring);
        None before any epoch was reported."""
        secs = epochs = 0.0
        done = 0.0
        ended = 0
        for t in trials:
            r = self._result(t)
            ep, tt = _num(r.get("epoch")), _num(r.get("time_total_s"))
            if ep and tt is not None and ep > 0:
                secs, epochs = secs + tt, epochs + ep
            if self._state(t) in ("finished", "stopped", "errored"):
                done, ended = done + self.max_epochs, ended + 1
            else:
                done += min(ep or 0.0, self.max_epochs)
        if epochs <= 0:
            return None
        remaining = max(0.0, self.num_samples * self.max_epochs - done)
        workers = max(1, min(self.max_concurrent, self.num_samples - ended))
        return remaining * (secs / epochs) / workers

    def best(self, trials: list) -> tuple[Any, float] | None:
        """The trial with the best ``best_<metric>`` (else ``<metric>``) so far, and it."""
        out = None
        for t in trials:
            v = self._best_value(t)
            if v is None:
                continue
            if out is None or (v > out[1] if self.mode == "max" else v < out[1]):
                out = (t, v)
        return out

    # ------------------------------------------------------------------ events
    def _events(self, trials: list) -> list[str]:
        """Lines for what happened since the last call (and remember it)."""
        now = self.clock()
        lines: list[str] = []
        for t in trials:
            tid, state = t.trial_id, self._state(t)
            n = self._number(t, trials)
            fails = int(getattr(t, "num_failures", 0) or 0)
            if fails > self._failures.get(tid, 0):
                self._failures[tid] = fails
                if state not in ("errored",):
                    lines.append(f"trial #{n} failed ({fails}x so far), retrying from its last "
                                 "checkpoint")
            if state == "pending":
                continue
            if tid not in self._started and tid not in self._ended:
                self._started.add(tid)
                if not self.tty:  # on a terminal the block shows the running trials' values
                    lines.append(f"trial #{n} started: {self._values(t)}".rstrip(": "))
            if state == "running":
                if not self.tty:
                    line = self._epoch_event(t, n, now)
                    if line:
                        lines.append(f"{line} | {self._short_status(trials)}")
                continue
            if tid in self._ended:
                continue
            self._ended.add(tid)
            end = self._end_line(t, n, state)
            lines.append(f"{end}  {self._values(t)}".rstrip() if self.tty else end)
        return lines

    def _short_status(self, trials: list) -> str:
        """``3/12 ended, 4 running, ETA ≤ 4m10s``."""
        c = self.counts(trials)
        eta = self.eta_s(trials)
        return (f"{c['finished'] + c['stopped'] + c['errored']}/{self.num_samples} ended, "
                f"{c['running']} running, "
                + ("ETA ?" if eta is None else f"ETA ≤ {fmt_duration(eta)}"))

    def _epoch_event(self, t: Any, n: int, now: float) -> str | None:
        ep = _num(self._result(t).get("epoch"))
        if not ep:
            return None
        last = self._epoch_line.get(t.trial_id)
        if last is not None and (ep <= last[1] or now - last[0] < self.epoch_every_s):
            return None
        self._epoch_line[t.trial_id] = (now, ep)
        return f"trial #{n} {self._progress_text(t)}"

    def _end_line(self, t: Any, n: int, state: str) -> str:
        r = self._result(t)
        ep = _num(r.get("epoch"))
        at = f"epoch {int(ep)}/{self.max_epochs}" if ep else "no epoch"
        best = self._best_value(t)
        best_txt = (f"best {self.metric}={best:.4f}" + (
            f" at epoch {int(_num(r.get('best_epoch')))}" if _num(r.get("best_epoch")) else "")
            if best is not None else f"no {self.metric}")
        if state == "errored":
            why = str(r.get(ERROR_KEY) or "")
            if not why:
                err = getattr(t, "error_file", None)
                why = f"see {err}" if err else "see the trial's error.txt"
            return f"trial #{n} errored at {at}: {why[:300]}"
        if state == "stopped":
            return f"trial #{n} stopped early at {at}: {best_txt}"
        return f"trial #{n} finished ({at}): {best_txt}"

    def _summary(self, trials: list, now: float) -> str:
        c = self.counts(trials)
        best = self.best(trials)
        text = (f"{self.search + ': ' if self.search else ''}{len(trials)} trials in "
                f"{fmt_duration(now - self._start)} ({c['finished']} finished, {c['stopped']} "
                f"stopped early, {c['errored']} errored")
        text += f", {c['running']} unfinished)" if c["running"] else ")"
        if best is not None:
            text += f"; best #{self._number(best[0], trials)} {self.metric}={best[1]:.4f}"
        if getattr(self, "_peak_usage", None):
            text += f"; peak resource use {self._peak_usage}"
        return text

    # ------------------------------------------------------------------ one trial
    def _trial_line(self, t: Any, trials: list) -> str:
        return f"#{self._number(t, trials):<3} {self._progress_text(t)}  {self._values(t)}" \
            .rstrip()

    def _progress_text(self, t: Any) -> str:
        r = self._result(t)
        ep = _num(r.get("epoch"))
        parts = [f"epoch {int(ep) if ep else 0}/{self.max_epochs}"]
        v = _num(r.get(self.metric))
        if v is not None:
            parts.append(f"{self.metric}={v:.4f}")
        rate = _num(r.get(RATE_KEY))
        if rate is not None:
            parts.append(f"{rate:.0f} img/s")
        return " ".join(parts)

    def _metric_text(self, t: Any, value: float) -> str:
        be = _num(self._result(t).get("best_epoch"))
        return f"{self.metric}={value:.4f}" + (f" (epoch {int(be)})" if be else "")

    def _values(self, t: Any) -> str:
        """``lr=0.0123 optimizer=sgd momentum=0.9``: the searched values this trial has."""
        cfg = getattr(t, "config", None) or {}
        return " ".join(f"{self.labels[k]}={fmt_value(cfg[k])}" for k in self.searched
                        if k in cfg)

    def _best_value(self, t: Any) -> float | None:
        r = self._result(t)
        v = _num(r.get(f"best_{self.metric}"))
        return v if v is not None else _num(r.get(self.metric))

    @staticmethod
    def _result(t: Any) -> dict[str, Any]:
        try:
            r = t.last_result
        except Exception:  # noqa: BLE001 - Tune fills it lazily; nothing to show yet
            return {}
        return r if isinstance(r, dict) else {}

    def _state(self, t: Any) -> str:
        """pending, running, finished, stopped (early: fewer than max_epochs) or errored."""
        status = str(getattr(t, "status", "PENDING"))
        r = self._result(t)
        if status == "ERROR" or (status == "TERMINATED" and r.get(ERROR_KEY)):
            return "errored"
        if status == "TERMINATED":
            ep = _num(r.get("epoch")) or 0.0
            return "finished" if ep >= self.max_epochs else "stopped"
        if status == "RUNNING":
            return "running"
        return "pending"  # PENDING, PAUSED

    def _number(self, t: Any, trials: list) -> int:
        return trial_number(self._numbers, t, trials)

    def _sig(self, trials: list) -> tuple:
        return tuple((t.trial_id, str(getattr(t, "status", "")),
                      self._result(t).get("epoch")) for t in trials)

    def _stream(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.output_queue is not None:  # Ray Client: the driver's view displays it
            self.output_queue.put(text)
        else:
            self.display(text)


# ---------------------------------------------------------------------- after the search
def next_steps(*, tracking_uri: str, experiment: str, search_id: str | None = None,
               best_run_id: str | None = None, results_dir: str | Path = "results",
               report_dir: str | Path | None = None, export_dir: str | Path | None = None,
               exported: bool = False) -> str:
    """The lines a search ends with: where to look at it, with the real store and ids.

    Args:
        tracking_uri: the MLflow store the search wrote to.
        experiment: its MLflow experiment.
        search_id: the search (``--search-id`` of ``report``); None leaves it out.
        best_run_id: the best trial run; None (no trial reported) leaves out ``export``.
        results_dir: the search's ``--results-dir``: the default store lives there, so the
            commands name ``--results-dir`` for it and ``--tracking-uri`` for any other store.
        report_dir: ``report --out`` (default ``<results_dir>/report-<search_id>``).
        export_dir: ``export --out`` (default ``<results_dir>/exports/<best run id>``).
        exported: the best run was exported already (``--export-best``): no export line.
    """
    q = shlex.quote
    rd = Path(results_dir)
    default_uri = f"sqlite:///{rd.resolve() / 'mlflow.db'}"
    if tracking_uri == default_uri:
        store = "" if str(results_dir) == "results" else f" --results-dir {q(str(results_dir))}"
    else:
        store = f" --tracking-uri {q(tracking_uri)}"
    exp = f" --experiment {q(experiment)}"
    sid = f" --search-id {q(search_id)}" if search_id else ""
    if tracking_uri.startswith(("http://", "https://")):
        ui = f"  open {tracking_uri} in a browser (MLflow server)"
    else:
        ui = f"  mlflow ui --backend-store-uri {q(tracking_uri)}"
    rep = report_dir or rd / f"report-{search_id or experiment}"
    lines = ["next steps:", ui,
             f"  hpsearch best{exp}{sid}{store}",
             f"  hpsearch report{exp}{sid}{store} --out {q(str(rep))}"]
    if best_run_id and not exported:
        dst = export_dir or rd / "exports" / best_run_id
        lines.append(f"  hpsearch export {q(best_run_id)} --out {q(str(dst))}{store}")
    return "\n".join(lines)
