"""Ray and MLflow stay in the search/worker/tracking layers: everything else imports without."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TORCH_ONLY = ["hpsearch.hierarchy", "hpsearch.config", "hpsearch.data", "hpsearch.models",
              "hpsearch.metrics.classification", "hpsearch.metrics.hierarchical",
              "hpsearch.metrics.retrieval", "hpsearch.train.loop", "hpsearch.train.driver",
              "hpsearch.train.classifier", "hpsearch.bundle", "hpsearch.class_embeddings",
              "hpsearch.models.hedging", "hpsearch.search.space"]


def test_core_modules_do_not_import_ray_or_mlflow():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in TORCH_ONLY) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
            "print(','.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported: {r.stdout.strip()[:300]}"


def test_every_module_imports():
    import importlib
    import pkgutil

    import hpsearch

    names = [m.name for m in pkgutil.walk_packages(hpsearch.__path__, "hpsearch.")]
    assert "hpsearch.search.tuner" in names and "hpsearch.train.worker" in names
    for name in names:
        importlib.import_module(name)
