#!/usr/bin/env bash
# Prove the GPU paths on a machine with one NVIDIA GPU whose Python has torch but not Ray /
# Optuna / MLflow (the lent H100 of the project's device tool). NOT run in the session that wrote
# it: that task was not lent a GPU. Output goes to $OUT (or ./gpu-smoke) for results/.
#
# Here, first:   bash ../shared/tools/device_bundle.sh   (writes .devbundle/site.tar.xz)
# There:         bash cluster/gpu_smoke.sh               (with .devbundle carried along)
set -euo pipefail
out=${OUT:-gpu-smoke}
mkdir -p "$out" ~/devsite
[ -d ~/devsite/ray ] || tar xJf .devbundle/site.tar.xz -C ~/devsite
export PYTHONPATH=~/devsite:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 HPSEARCH_CACHE=/tmp/hpsearch-cache
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m hpsearch.cli search search_spaces/gpu_smoke.yaml --results-dir /tmp/gpu-results \
    --export-best /tmp/gpu-results/bundle 2>&1 | tee "$out/gpu_smoke.log"
python3 - <<'PY' | tee -a "$out/gpu_smoke.log"
import sqlite3
c = sqlite3.connect("/tmp/gpu-results/mlflow.db")
for k, v in c.execute("select key, max(value) from metrics where key in "
                      "('train_images_per_s', 'val_micro_f1', 'test_micro_f1') group by key"):
    print(f"{k}: {v:.4f}")
PY
