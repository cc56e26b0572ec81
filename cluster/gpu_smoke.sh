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
# the bundle's mlflow-skinny has no SQLAlchemy, so no SQLite store there: use a file store
mkdir -p /tmp/gpu-results
if python3 -c "import sqlalchemy" 2>/dev/null; then
  uri=sqlite:////tmp/gpu-results/mlflow.db
else
  export MLFLOW_ALLOW_FILE_STORE=true; uri=file:///tmp/gpu-results/mlruns
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 -m hpsearch.cli search search_spaces/gpu_smoke.yaml --results-dir /tmp/gpu-results \
    --tracking-uri "$uri" --export-best /tmp/gpu-results/bundle 2>&1 | tee "$out/gpu_smoke.log"
python3 -m hpsearch.cli best --experiment gpu_smoke --tracking-uri "$uri" --top 2 \
    2>&1 | tee -a "$out/gpu_smoke.log"
python3 - "$uri" <<'PY' | tee -a "$out/gpu_smoke.log"
import sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1])
exp = c.get_experiment_by_name("gpu_smoke")
for r in c.search_runs([exp.experiment_id], "tags.`hpsearch.role` = 'trial'"):
    m = r.data.metrics
    print(r.info.run_id, r.info.status, {k: round(m[k], 4) for k in
          ("train_images_per_s", "val_micro_f1", "test_micro_f1") if k in m})
PY
