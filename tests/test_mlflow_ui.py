"""The MLflow UI over a real search's store, in a real (headless) browser.

A tiny search of ``search_spaces/demo.yaml`` (2 trials x 1 epoch, the embedded synthetic data)
fills a SQLite store, its best trial is exported and registered, ``mlflow server`` serves that
store on loopback, and Debian's Chromium (driven by Selenium through Debian's chromedriver,
never a downloaded browser) checks what a user browsing the runs sees: the trial runs nested
under the search's parent run, a trial's params, metrics and artifacts (checkpoint,
config.json, figures when there are any), and the registered model's version. Checks match
visible text and route links (``#/experiments/<id>/runs/<run_id>``), not CSS classes; values
come from the store itself. Screenshots go to the test's tmp dir.

Skips, saying why, when Chromium, chromedriver or the ``selenium`` package is missing (CI
installs the first two in .ci/system-deps.sh).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

MODEL = "hpsearch-ui-model"
PAGE_TIMEOUT = 60  # s: first paint of the SPA on a loaded 2-core machine; not a pass criterion


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver (Debian: /usr/bin/chromium, /usr/bin/chromedriver); skip if
    either or Selenium is missing."""
    pytest.importorskip("selenium", reason="the selenium package is not installed "
                        "(pip install selenium: the test extra)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: install the Debian packages chromium "
                    "chromium-driver (see .ci/system-deps.sh)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


@dataclass
class Store:
    """What the search left in MLflow, read from the SQLite store itself."""

    root: Path
    db: Path
    experiment_id: str
    parent: str                      # the search's parent run id
    trials: dict[str, str]           # trial run id -> run name
    best: str                        # the registered trial
    params: dict[str, str]           # the best trial's params
    best_metric: float               # its best_val_micro_f1
    artifacts: Path                  # its artifact directory


def _role(db: Path, role: str) -> list[str]:
    return [r for (r,) in _rows(db, "select run_uuid from tags where key = 'hpsearch.role' "
                                    "and value = ?", (role,))]


@pytest.fixture(scope="module")
def browser_paths():
    return _browser_paths()


@pytest.fixture(scope="module")
def store(browser_paths, tmp_path_factory) -> Store:
    """demo.yaml, 2 trials x 1 epoch, in a tmp results dir; the best trial registered."""
    tmp = tmp_path_factory.mktemp("ui-store")
    res = tmp / "results"
    r = _cli("search", str(ROOT / "search_spaces" / "demo.yaml"), "--num-samples", "2",
             "--max-epochs", "1", "--results-dir", str(res), "-v", "0", cwd=tmp)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    db = res / "mlflow.db"
    (parent,) = _role(db, "search")
    trials = {rid: name for rid, name in _rows(db, "select run_uuid, name from runs")
              if rid in set(_role(db, "trial"))}
    assert len(trials) == 2
    # every trial is a child of the parent run in the store (what the UI must show)
    for rid in trials:
        assert _rows(db, "select value from tags where run_uuid = ? and key = "
                         "'mlflow.parentRunId'", (rid,)) == [(parent,)]
    (best, best_metric), = _rows(
        db, "select run_uuid, value from latest_metrics where key = 'best_val_micro_f1' "
            "and run_uuid in (%s) order by value desc, run_uuid limit 1"
            % ",".join("?" * len(trials)),
        tuple(trials))
    ex = _cli("export", best, "--out", str(tmp / "bundle"), "--register", MODEL,
              "--results-dir", str(res), cwd=tmp)
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert _rows(db, "select version, run_id from model_versions where name = ?",
                 (MODEL,)) == [(1, best)]
    # a figure on the trial run (the hedging curve's PNG) for the UI to show
    hc = _cli("hedge-curve", best, "--points", "5", "--results-dir", str(res), cwd=tmp)
    assert hc.returncode == 0, hc.stderr[-3000:]
    (exp_id, art_uri), = _rows(db, "select experiment_id, artifact_uri from runs where "
                                   "run_uuid = ?", (best,))
    params = dict(_rows(db, "select key, value from params where run_uuid = ?", (best,)))
    return Store(tmp, db, str(exp_id), parent, trials, best, params, best_metric,
                 Path(art_uri.removeprefix("file://")))


@pytest.fixture(scope="module")
def ui(store) -> str:
    """``mlflow server`` on 127.0.0.1:<free port> over the store: SQLite backend; artifact
    root the store's ``mlruns`` (the runs' file:// artifact URIs are served through it).
    Torn down by its own process group."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner processes
    exe = VENV_BIN / "mlflow"
    log = store.root / "mlflow-ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe if exe.exists() else "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{store.db}", "--default-artifact-root",
             (store.db.parent / "mlruns").as_uri(), "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"],
            cwd=store.root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 120
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server on {url} did not come up:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.25)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(browser_paths):
    """Headless Chromium through chromedriver; both paths given, so Selenium Manager (which
    would download drivers) never runs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = browser_paths
    opts = Options()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1600,1000", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield d
    finally:
        d.quit()


# -- page helpers ------------------------------------------------------------------------------

def _body(d) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return d.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        return ""


def _wait_text(d, *texts: str, timeout: float = PAGE_TIMEOUT) -> str:
    """Wait until every text is visible on the page; return the page's text. On a timeout
    the assertion shows what the page did show."""
    deadline = time.time() + timeout
    while True:
        body = _body(d)
        missing = [t for t in texts if t not in body]
        if not missing:
            return body
        if time.time() > deadline:
            raise AssertionError(f"{missing} not shown at {d.current_url}; page text:\n"
                                 + body[-3000:])
        time.sleep(0.3)


def _links_to(d, route: str, *, prefix: bool = False) -> list:
    """Displayed links whose href ends with the hash route (``#/experiments/1/runs/<id>``),
    or, with ``prefix``, goes to the route or below it (``.../runs/<id>/artifacts/...``)."""
    from selenium.webdriver.common.by import By

    ends = ("?", "/") if prefix else ("?",)
    out = []
    for a in d.find_elements(By.CSS_SELECTOR, f'a[href*="#/"][href*="{route}"]'):
        rest = (a.get_attribute("href") or "").partition(route)[2]
        if (not rest or rest.startswith(ends)) and a.is_displayed():
            out.append(a)
    return out


def _wait_for(cond, what: str, d, timeout: float = PAGE_TIMEOUT):
    deadline = time.time() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"{what} not shown at {d.current_url}; page text:\n"
                                 + _body(d)[-3000:])
        time.sleep(0.3)


def _value_after(text: str, key: str) -> str:
    """The value shown beside ``key`` in a two-column table (one cell per line)."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, ln in enumerate(lines):
        parts = ln.split("\t")
        if parts[0] == key:
            return parts[1] if len(parts) > 1 else lines[i + 1]
    raise AssertionError(f"{key!r} not in the table shown:\n{text[-3000:]}")


def _click_text(d, text: str) -> None:
    from selenium.webdriver.common.by import By

    el = _wait_for(lambda: [e for e in d.find_elements(
        By.XPATH, f"//*[normalize-space(text())='{text}']") if e.is_displayed()],
        f"an element reading {text!r}", d)[0]
    el.click()


def _close_assistant(d) -> None:
    """MLflow 3 opens an "MLflow Assistant" side panel; close it (if there) so screenshots
    show the runs. Cosmetic: nothing is asserted on it."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    if "MLflow Assistant" not in _body(d):
        return
    for b in d.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
        try:
            if b.is_displayed():
                b.click()
                return
        except WebDriverException:
            pass


# -- the pages ---------------------------------------------------------------------------------

def test_experiment_page_nests_trial_runs_under_the_search_run(store, ui, browser,
                                                                tmp_path):
    d, exp = browser, store.experiment_id
    d.get(f"{ui}/#/experiments/{exp}/runs?workflowType=machine_learning")
    parent_name = _rows(store.db, "select name from runs where run_uuid = ?",
                        (store.parent,))[0][0]
    _wait_text(d, "demo", parent_name)
    parent_link = _wait_for(lambda: _links_to(d, f"/runs/{store.parent}"),
                            "the parent run's link", d)[0]
    # collapsed: the trials are not top-level rows, they sit under the parent
    for rid in store.trials:
        assert not _links_to(d, f"/runs/{rid}"), f"trial {rid} is not nested under the parent"
    # the expander is the button in the parent's run-name cell
    from selenium.webdriver.common.by import By

    cell = parent_link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]")
    cell.find_element(By.TAG_NAME, "button").click()
    for rid, name in store.trials.items():
        _wait_for(lambda rid=rid: _links_to(d, f"/runs/{rid}"), f"trial run {rid}", d)
        assert name in _body(d)
        # readable names: <search>/<trial-no> <family> <searched values>
        assert re.fullmatch(r"demo-\d{8}-\d{6}(-\d+)?/[12] per_level lr=\S+ .*", name), name
    _close_assistant(d)
    time.sleep(0.5)  # let the panel's close animation finish before the screenshot
    d.save_screenshot(str(tmp_path / "mlflow-ui-experiment.png"))
    print(f"screenshot: {tmp_path / 'mlflow-ui-experiment.png'}")


def test_trial_run_page_shows_params_metrics_and_artifacts(store, ui, browser, tmp_path):
    d, rid = browser, store.best
    base = f"{ui}/#/experiments/{store.experiment_id}/runs/{rid}"
    d.get(base)
    body = _wait_text(d, "Parameters", "Metrics", "best_val_micro_f1", "optim.lr")
    # searched and fixed params, with the values the store holds
    for key in ("optim.lr", "optim.optimizer", "optim.weight_decay", "model.family",
                "data.name"):
        assert _value_after(body, key) == store.params[key], key
    assert _value_after(body, "data.name") == "synthetic"
    for key in ("val_micro_f1", "val_macro_f1", "test_micro_f1", "train_loss"):
        float(_value_after(body, key))  # shown, as a number
    assert float(_value_after(body, "best_val_micro_f1")) == pytest.approx(store.best_metric,
                                                                           rel=1e-9)
    # the trial names its parent run, and its registered model version
    assert _links_to(d, f"/runs/{store.parent}"), "no link to the parent run"
    assert MODEL in body
    d.save_screenshot(str(tmp_path / "mlflow-ui-run.png"))

    d.get(base + "/artifacts")
    _wait_text(d, "checkpoint", "config.json")
    _click_text(d, "checkpoint")
    _wait_text(d, "best.pt")
    _click_text(d, "config.json")
    # the preview shows the file's content: the trial's resolved config
    _wait_text(d, '"family": "per_level"', '"optimizer": "' + store.params["optim.optimizer"])
    # the registered model's files: an MLflow model beside the bundle
    _wait_text(d, "model", "bundle")
    _click_text(d, "model")
    _wait_text(d, "MLmodel")
    pngs = sorted(p.relative_to(store.artifacts)
                  for p in store.artifacts.rglob("*.png") if p.parts[0] != "model")
    assert pngs, "the run has no figure (hedging/curve_test.png)"
    if pngs:  # figures: shown as images in the preview
        from selenium.webdriver.common.by import By

        png = pngs[0]
        for folder in png.parts[:-1]:
            _click_text(d, folder)
        _click_text(d, png.name)
        # the preview is an <img> (a blob: URL, the artifact's path as alt text) that the
        # browser decoded: a real image, not a broken-image icon
        _wait_for(lambda: [i for i in d.find_elements(By.TAG_NAME, "img")
                           if png.name in (i.get_attribute("alt") or "")
                           + (i.get_attribute("src") or "") and i.is_displayed()
                           and i.get_attribute("naturalWidth") not in (None, "", "0")],
                  f"the image {png}", d)
    d.save_screenshot(str(tmp_path / "mlflow-ui-artifacts.png"))


def test_registered_model_lists_its_version(store, ui, browser, tmp_path):
    d = browser
    d.get(f"{ui}/#/models/{MODEL}")
    _wait_text(d, MODEL, "Version 1")
    link = _wait_for(lambda: _links_to(d, f"/models/{MODEL}/versions/1"),
                     "the link to version 1", d)[0]
    link.click()
    # the version page names the run it came from, and shows the model's signature
    _wait_for(lambda: _links_to(d, f"/runs/{store.best}", prefix=True),
              "the source run's link", d)
    _wait_text(d, "Schema", "Inputs (1)")
    d.save_screenshot(str(tmp_path / "mlflow-ui-model.png"))
