"""Bad input: one clear line on stderr, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def space(tmp: Path, text: str) -> str:
    f = tmp / "s.yaml"
    f.write_text(text)
    return str(f)


GOOD = """name: t
family: per_level
dataset: synthetic
fixed: {data.params: {level_sizes: [2, 4], max_per_leaf: 12, min_per_leaf: 6,
                      amplitudes: [0.5, 0.3], grids: [2, 4]}}
search: {optim.lr: {type: loguniform, low: 0.001, high: 0.1}}
"""


@pytest.mark.parametrize("case,expect", [
    ("malformed", "malformed YAML"),
    ("family", "unknown model family 'resnet_magic'"),
    ("dataset", "unknown dataset 'imagenet22k'"),
    ("metric", "'val_bogus' is not produced by family 'per_level'"),
    ("budget", "budget.num_samples: Input should be greater than 0"),
    ("samples", "--num-samples must be positive"),
    ("datadir", "does not exist"),
    ("tracking", "cannot reach the MLflow tracking store"),
])
def test_bad_input_is_one_line(tmp_path, case, expect):
    text = GOOD
    extra: list[str] = []
    if case == "malformed":
        text = "name: t\nsearch: {optim.lr: [\n"
    elif case == "family":
        text = GOOD.replace("per_level", "resnet_magic")
    elif case == "dataset":
        text = GOOD.replace("dataset: synthetic", "dataset: imagenet22k")
    elif case == "metric":
        text = GOOD + "metric: val_bogus\n"
    elif case == "budget":
        text = GOOD + "budget: {num_samples: 0}\n"
    elif case == "samples":
        extra = ["--num-samples", "-3"]
    elif case == "datadir":
        extra = ["--data-root", str(tmp_path / "no-such-dir")]
    elif case == "tracking":
        extra = ["--tracking-uri", "http://127.0.0.1:9"]
    res = tmp_path / "results"
    res.mkdir()
    r = run_cli("search", space(tmp_path, text), "--results-dir", str(res), *extra,
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error:"), r.stderr
    assert expect in lines[0]
    assert "Traceback" not in r.stderr
    assert list(res.iterdir()) == [] or case == "tracking"  # nothing half written
    assert not (res / "mlflow.db").exists()


def test_predict_rejects_a_non_bundle(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"not an image")
    r = run_cli("predict", str(tmp_path), str(img), cwd=tmp_path)
    assert r.returncode == 2 and "is not an hpsearch bundle" in r.stderr


@pytest.mark.parametrize("args,expect", [
    (["train", "--set", "foo"], "expected KEY=VALUE"),
    (["hedge-curve", "abc", "--points", "1"], "must be at least 2"),
    (["best", "--top", "0"], "must be at least 1"),
    (["predict", ".", "x.png", "--hedge", "nan"], "must be a probability in [0, 1]"),
    (["predict", ".", "x.png", "--hedge", "1.5"], "must be a probability in [0, 1]"),
    (["export", "abc", "--out", "o", "--register", "bad/name"], "a model name is letters"),
    (["export", "abc", "--out", "afile"], "is a file"),
])
def test_bad_arguments_exit_2_without_traceback(tmp_path, args, expect):
    (tmp_path / "afile").write_text("x")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
