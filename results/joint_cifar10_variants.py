"""Train every joint-embedding variant of issue 14 once per seed on small real CIFAR-10 and
print the Markdown table of results/joint_cifar10_variants.md.

    cd /work/main && HPSEARCH_CACHE=/tmp/jv/cache OMP_NUM_THREADS=1 nice -n 10 \\
        .venv/bin/python results/joint_cifar10_variants.py --out /tmp/jv --seeds 0 1 2

Each run is ``hpsearch train --space search_spaces/joint_cifar10_variants.yaml --set ...``;
the numbers are read back from the run's ``checkpoint.pt`` (best val epoch, and the test
metrics at that epoch). HC* first trains the label-only stage (``train_edges=labels``) per seed
and initialises the joint run's label table from its checkpoint directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

SPACE = "search_spaces/joint_cifar10_variants.yaml"
HPSEARCH = str(Path(sys.executable).with_name("hpsearch"))
VARIANTS: dict[str, list[str]] = {
    "default (frozen CNN, linear W, image endpoint -> image)": [],
    "images as a pick-per-level slot": ["model.params.negative_image_slot=true"],
    "50:50 image:label negatives (r = 0.5)": ["model.params.image_negative_fraction=0.5"],
    "MLP image map (2 x 256, ReLU)": ["model.params.image_map=mlp"],
    "end-to-end CNN (backbone_lr 1e-3)": ["model.params.train_backbone=true",
                                         "model.params.backbone_lr=1e-3"],
}
LABEL_STAGE = ["model.params.train_edges=labels", "metric=val_full_f1"]


def train(out: Path, sets: list[str], epochs: int, seed: int) -> tuple[dict, float]:
    t0 = time.time()
    cmd = [HPSEARCH, "train", "--space", SPACE, "--out", str(out), "--set",
           f"optim.epochs={epochs}", f"seed={seed}", *sets]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    best = torch.load(out / "checkpoint.pt", weights_only=False)["best"]
    return best, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args()
    rows: dict[str, list[tuple[dict, float]]] = {}
    runs = dict(VARIANTS)
    for seed in a.seeds:
        lab = a.out / f"hc_labels_s{seed}"
        best, dt = train(lab, LABEL_STAGE, 30, seed)
        rows.setdefault("(HC* stage 1: label-only, 30 epochs; val full_f1)", []).append(
            ({"value": best["test"]["full_f1"], "epoch": best["epoch"], "test": best["test"]},
             dt))
        runs["HC*: label table from the label-only run"] = [
            "model.params.init=from_run", f"model.params.init_from={lab}"]
        for name, sets in runs.items():
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            rows.setdefault(name, []).append(train(a.out / f"{slug}_s{seed}", sets, a.epochs,
                                                   seed))
    print("| variant | val m-F1 | test m-F1 | test L1 | test L2 | test L3 | full_f1 | "
          "s / run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        def col(f):
            vals = [f(b) for b, _ in rs]
            m = sum(vals) / len(vals)
            return f"{m:.3f}" + (f" ({min(vals):.3f}-{max(vals):.3f})" if len(vals) > 1 else "")
        t = rs[0][0]["test"]
        if "stage 1" in name:
            print(f"| {name} | - | - | - | - | - | {col(lambda b: b['test']['full_f1'])} | "
                  f"{sum(d for _, d in rs) / len(rs):.0f} |")
            continue
        assert "micro_f1_level_2" in t
        print(f"| {name} | {col(lambda b: b['value'])} | {col(lambda b: b['test']['micro_f1'])}"
              f" | {col(lambda b: b['test']['micro_f1_level_0'])}"
              f" | {col(lambda b: b['test']['micro_f1_level_1'])}"
              f" | {col(lambda b: b['test']['micro_f1_level_2'])}"
              f" | {col(lambda b: b['test']['full_f1'])}"
              f" | {sum(d for _, d in rs) / len(rs):.0f} |")


if __name__ == "__main__":
    main()
