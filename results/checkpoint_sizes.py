"""Bytes of checkpoint.pt and best.pt after one epoch: resnet18_cifar + Adam, tiny synthetic data.

Run from the repository root: ``python results/checkpoint_sizes.py`` (CPU, ~30 s).
"""

import os
import tempfile
from pathlib import Path

from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.runner import DirectoryReporter, run_trial

data = {"level_sizes": [2, 4, 8], "max_per_leaf": 12, "min_per_leaf": 4,
        "amplitudes": [0.6, 0.4, 0.3], "grids": [2, 4, 8]}
cfg = TrialConfig.from_flat({"data.params": data, "model.backbone": "resnet18_cifar",
                             "optim.optimizer": "adam", "optim.epochs": 1,
                             "optim.batch_size": 32})
with tempfile.TemporaryDirectory() as d:
    run_trial(cfg, DirectoryReporter(Path(d) / "ck"))
    for f in ("checkpoint.pt", "best.pt"):
        print(f, os.path.getsize(Path(d) / "ck" / f))
