"""Bad input: one clear line on stderr, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import argparse
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
    ("samples", "argument --num-samples: must be at least 1, got -3"),
    ("frobnicate", "unrecognized arguments: --frobnicate ('hpsearch search --help'"),
    ("datadir", "does not exist"),
    ("tracking", "cannot reach the MLflow tracking store"),
    ("scheme", "unsupported scheme 'foo'"),
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
    elif case == "frobnicate":  # argparse: one line, not its usage block
        extra = ["--frobnicate"]
    elif case == "datadir":
        extra = ["--data-root", str(tmp_path / "no-such-dir")]
    elif case == "tracking":
        extra = ["--tracking-uri", "http://127.0.0.1:9"]
    elif case == "scheme":
        extra = ["--tracking-uri", "foo://bar"]
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


# ------------------------------------------------------------------ argparse, in-process
def _main(capsys, *args: str) -> tuple[int, str, str]:
    from hpsearch import cli

    try:
        rc = cli.main(list(args))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("args,expect", [
    (["search", "s.yaml", "--num-samples", "lots"],
     "argument --num-samples: expected an integer, got 'lots'"),
    (["search", "s.yaml", "--max-epochs", "0"], "argument --max-epochs: must be at least 1"),
    (["search", "s.yaml", "-v", "7"], "argument -v/--verbose: invalid choice: 7"),
    (["best", "--frobnicate"], "unrecognized arguments: --frobnicate ('hpsearch best --help'"),
    (["rerun"], "the following arguments are required: run_id"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_argparse_errors_are_one_line(capsys, args, expect):
    rc, out, err = _main(capsys, *args)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), err
    assert expect in lines[0] and "usage:" not in err


def test_help_still_works_and_every_option_says_its_default(capsys):
    from hpsearch import cli

    rc, out, err = _main(capsys, "search", "--help")
    assert rc == 0 and err == "" and out.startswith("usage: hpsearch search")
    assert "(default: results)" in out and "(default: 1)" in out  # --results-dir, -v
    ap = cli.build_parser()
    assert set(ap.commands) >= {"search", "demo", "best", "report", "train", "rerun"}
    for name, sub in ap.commands.items():
        if name == "bench":  # its own parser (hpsearch.bench) takes every argument
            continue
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"hpsearch {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help text"
            shown = cli._Formatter(name)._get_help_string(action)
            if action.option_strings and action.default not in (None, False, []):
                assert "(default" in shown, f"{what}: help does not give its default"
        assert "(default: None)" not in text and "(default: False)" not in text, name


def test_two_parents_names_a_fix_the_user_can_apply(tmp_path, capsys):
    """An image-folder hierarchy file with a DAG: the message says what to change (no
    ``require_tree=False``, which no YAML or CLI option takes)."""
    from hpsearch.data import folder

    for split in ("train", "test"):
        for c in ("c", "d"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            (tmp_path / "data" / split / c / "x.png").write_bytes(b"")  # never decoded
    hf = tmp_path / "h.txt"
    hf.write_text("r a\nr b\na c\nb c\na d\n")
    assert folder.DEFAULTS["hierarchy_file"] is None  # the key the --set below names
    rc, out, err = _main(capsys, "train", "--out", str(tmp_path / "ck"), "--set",
                         "data.name=image_folder", f"data.root={tmp_path / 'data'}",
                         f"data.params={{hierarchy_file: {hf}}}")
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "node 'c' has two parents ('a', 'b')" in lines[0], err
    assert "require_tree" not in lines[0] and "keep one parent of 'c'" in lines[0]
    assert "label_source: parent_child" in lines[0]
    assert not (tmp_path / "ck").exists()
