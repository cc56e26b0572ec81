"""Every shipped search space (search_spaces/, search_spaces/ethec_tables/) parses with the
registries checked, says in its header which file under ../shared it reads, hard-codes no
absolute path, and, with ../shared moved away, fails the data-loading part of the search's
pre-flight (``check_metrics``, what ``hpsearch.search.tuner.preflight`` calls) with a one-line
hpsearch error naming the missing file: no Ray, no training, nothing read from ../shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hpsearch.errors import HpsearchError
from hpsearch.search.space import load_space
from hpsearch.tasks.runner import check_metrics

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").rglob("*.yaml"))
ETHEC_FILES = "../shared/data/ethec/{val,test}.json"  # the label source's default metadata
# the spaces that read the CIFAR-10 JPEG archive (data.params.archive: ../shared/..., resolved
# by hpsearch.data._io.shared_path)
CIFAR_ARCHIVE = {"cifar10_methods.yaml", "joint_cifar10_euclidean_cone.yaml",
                 "joint_cifar10_hyperbolic_cone.yaml", "joint_cifar10_order_embedding.yaml",
                 "joint_cifar10_per_level_features.yaml",
                 "joint_cifar10_untrained_features.yaml", "semantic_cifar10.yaml",
                 "semantic_cifar10_barz.yaml", "cifar10_train_size.yaml"}


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def raw(p: Path) -> dict[str, Any]:
    return yaml.safe_load(p.read_text())


def header(p: Path) -> str:
    """The leading comment block of the file."""
    lines = []
    for line in p.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def strings(value: Any, where: str = ""):
    """Every string value (with its dotted key) of a parsed YAML tree."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def shared_reads(p: Path) -> list[tuple[str, str]]:
    """``[(key, file under ../shared)]`` the space reads: the ETHEC label source without
    ``paths`` (its default is ../shared/data/ethec), or a value pointing into a shared/ folder."""
    out = []
    fixed = raw(p).get("fixed", {})
    dp = fixed.get("data.params")
    src = dp.get("label_source") if isinstance(dp, dict) else fixed.get(
        "data.params.label_source")
    paths = dp.get("paths") if isinstance(dp, dict) else fixed.get("data.params.paths")
    if src == "ethec" and paths is None:
        out.append(("data.params.label_source", ETHEC_FILES))
    for key, v in strings(fixed):
        if "shared/" in v and not v.startswith("mlflow:"):
            out.append((key, "../shared/" + v.split("shared/", 1)[1]))
    return out


READERS = [p for p in SPACES if shared_reads(p)]


def test_the_spaces_are_found():
    assert len(SPACES) >= 60 and len(READERS) >= 50  # both folders, ETHEC + CIFAR-10 spaces
    assert {p.name for p in READERS} >= CIFAR_ARCHIVE | {"ethec_euclidean_cone.yaml"}
    assert "demo.yaml" not in {p.name for p in READERS}


@pytest.mark.parametrize("path", SPACES, ids=rel)
def test_parses_with_registries(path):
    sp = load_space(path, check_registries=True)
    assert sp.name and sp.family


@pytest.mark.parametrize("path", READERS, ids=rel)
def test_header_names_the_shared_file_it_reads(path):
    head = header(path)
    for key, f in shared_reads(path):
        assert f in head, f"{rel(path)}: header does not name {f} (read via {key})"
    assert "one-line" in head, f"{rel(path)}: header does not say it fails with a one-line error"


@pytest.mark.parametrize("path", SPACES, ids=rel)
def test_no_absolute_paths_in_values(path):
    bad = [(k, v) for k, v in strings(raw(path))
           if v.startswith(("/", "~")) or (len(v) > 2 and v[1] == ":" and v[2] in "\\/")]
    assert not bad, f"{rel(path)}: absolute path(s) {bad}"


def _elsewhere(value: str, missing: Path) -> str:
    """``value`` with its .../shared/ prefix moved to ``missing``."""
    return str(missing / value.split("shared/", 1)[1])


@pytest.mark.parametrize("path", READERS, ids=rel)
def test_missing_shared_file_is_a_one_line_error(path, tmp_path, monkeypatch):
    missing = tmp_path / "no-shared"
    monkeypatch.setenv("HPSEARCH_SHARED", str(missing))  # where shared_dir() looks
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "cache"))
    sp = load_space(path, check_registries=True)
    # a value that points into shared/ directly (not through shared_dir()) is moved by hand
    over = {k: _elsewhere(v, missing) for k, v in strings(sp.fixed) if "shared/" in v
            and not v.startswith(("mlflow:", "../shared/"))}
    cfg = sp.resolve({}, over)
    with pytest.raises(HpsearchError) as e:
        check_metrics(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for _, f in shared_reads(path):
        name = f.rsplit("/", 1)[1]
        names = ["val.json", "test.json"] if name == "{val,test}.json" else [name]
        assert all(n in msg for n in names), f"{rel(path)}: {msg!r} does not name {names}"
        assert str(missing) in msg


def test_workers_resolve_shared_paths_like_the_driver(tmp_path, monkeypatch):
    """A trial imports hpsearch from Ray's ``py_modules`` copy, where "the folder beside the
    repo" is not the driver's; ``worker_env`` pins ``HPSEARCH_SHARED`` so that a space's
    ``../shared/...`` value names the same file in the driver and in every worker (without the
    pin every trial of cifar10_methods failed with 'file not found')."""
    import os
    import shutil
    import subprocess
    import sys

    import hpsearch
    from hpsearch.data._io import shared_dir
    from hpsearch.search.tuner import worker_env

    rel = "../shared/data/ethec/val.json"
    if not (shared_dir() / "data/ethec/val.json").is_file():
        pytest.skip("../shared/data/ethec/val.json is absent (a user's clone has no ../shared)")
    monkeypatch.delenv("HPSEARCH_SHARED", raising=False)
    copy = tmp_path / "runtime_resources" / "py_modules_files" / "pkg"
    shutil.copytree(Path(hpsearch.__file__).parent, copy / "hpsearch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("from hpsearch.data._io import shared_path; "
             f"print(shared_path({rel!r}).is_file())")

    def in_worker(env: dict[str, str]) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
        out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                             env={**base, **env, "PYTHONPATH": str(copy)},
                             capture_output=True, text=True)
        return out.stdout.strip()

    assert in_worker({}) == "False"  # the bug: the copy looks for ../shared beside itself
    env = worker_env()
    assert Path(env["HPSEARCH_SHARED"]) == shared_dir().resolve()
    assert in_worker(env) == "True"
    monkeypatch.setenv("HPSEARCH_SHARED", "/elsewhere/shared")  # a cluster's own setting wins
    assert worker_env()["HPSEARCH_SHARED"] == "/elsewhere/shared"
