#!/usr/bin/env bash
# The GPU measurements the open issues ask for, in one place, for the lent H100 (device tool:
# 30 device-minutes a session, 10 minutes a command, 64 MiB carried). NOT RUN YET: no session so
# far was lent a GPU; every step also runs on CPU with DEVICE=cpu (smaller, for checking).
#
# Here (this machine), once:
#   bash ../shared/tools/device_bundle.sh                 # .devbundle/site.tar.xz (~40 MB)
#   bash cluster/gpu_evidence.sh prep                     # .devdata/: WordNet nouns (xz)
# There, one device `run` per step (carry [".devbundle", ".devdata"]; cifar10 and pipeline
# also need the CIFAR tarball, 20 MB: `bash cluster/gpu_evidence.sh prep-cifar` here first,
# which the 64 MiB carry limit only fits next to the bundle without the WordNet files):
#   bash cluster/gpu_evidence.sh smoke      # issue 2: TorchTrainer + nccl + bf16 (~3 min)
#   bash cluster/gpu_evidence.sh wordnet    # issue 5: cone training energies/s vs ceiling
#   bash cluster/gpu_evidence.sh pipeline   # issue 3: memmap cache vs JPEG decoding on GPU
#   bash cluster/gpu_evidence.sh cifar10    # issue 4: 5 methods, <= 10 GPU-minutes (~11 min)
# Each writes its log and JSON under $OUT (device tool) or ./gpu-evidence.
# .devbundle/ and .devdata/ are git-ignored scratch for the transfer, never committed.
set -euo pipefail
step=${1:?step: prep | prep-cifar | smoke | wordnet | pipeline | cifar10}
out=${OUT:-gpu-evidence}
dev=${DEVICE:-cuda}
cifar_tar=${CIFAR_TAR:-../shared/data/cifar10/cifar10-jpg.tar.gz}

case $step in
prep)
  mkdir -p .devdata/wordnet
  for f in data.noun index.noun; do xz -T0 -c /usr/share/wordnet/$f > .devdata/wordnet/$f.xz; done
  ls -la .devdata/wordnet; exit 0 ;;
prep-cifar)
  mkdir -p .devdata && cp "$cifar_tar" .devdata/cifar10-jpg.tar.gz && rm -rf .devdata/wordnet
  ls -la .devdata; exit 0 ;;
esac

mkdir -p "$out"
if [ -f .devbundle/site.tar.xz ]; then  # the device's Python has torch but not Ray/MLflow
  mkdir -p ~/devsite
  [ -d ~/devsite/ray ] || tar xJf .devbundle/site.tar.xz -C ~/devsite
  export PYTHONPATH=~/devsite:$PWD:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 HPSEARCH_CACHE=${HPSEARCH_CACHE:-/tmp/hpsearch-cache}
py=${PYTHON:-python3}
if $py -c "import sqlalchemy" 2>/dev/null; then uri=sqlite:////tmp/gpu-results/mlflow.db
else export MLFLOW_ALLOW_FILE_STORE=true; uri=file:///tmp/gpu-results/mlruns; fi
mkdir -p /tmp/gpu-results
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } > "$out/gpu.txt"

case $step in
smoke)
  OUT=$out bash cluster/gpu_smoke.sh ;;
wordnet)
  mkdir -p /tmp/wordnet
  for f in data.noun index.noun; do xz -dc .devdata/wordnet/$f.xz > /tmp/wordnet/$f; done
  for fam_dim_bs in hyperbolic_cone:10:1024 hyperbolic_cone:10:16384 hyperbolic_cone:100:16384 \
                    euclidean_cone:10:16384 order_embedding:10:16384; do
    IFS=: read -r fam d bs <<< "$fam_dim_bs"
    $py -m hpsearch.bench label-throughput --family "$fam" --dim "$d" --batch-size "$bs" \
        --device "$dev" --epochs 3 --ceiling-batch 1048576 \
        --source-param dir=/tmp/wordnet --source-param root=entity.n.01 \
        --json "$out/wordnet_${fam}_d${d}_b${bs}.json" 2>&1 | tail -1 | tee -a "$out/wordnet.log"
  done ;;
pipeline)
  for model in small_cnn resnet50; do
    $py -m hpsearch.bench input-pipeline --dataset cifar10 \
        --archive "$PWD/.devdata/cifar10-jpg.tar.gz" --limit-per-class 500 --image-size 224 \
        --model "$model" --batch-size 256 --batches 20 --device "$dev" --num-workers 8 \
        --json "$out/pipeline_$model.json" 2>&1 | tail -12 | tee -a "$out/pipeline.log"
  done
  # 448 -> 224 decode + resize per method, incl. the cache build's nvJPEG batch path
  $py -m hpsearch.bench resize --n 256 --threads 1 --json "$out/resize.json" 2>&1 \
      | tail -9 | tee -a "$out/pipeline.log" ;;
cifar10)
  timeout 720 $py -m hpsearch.cli search search_spaces/cifar10_gpu.yaml \
      --data-root "$PWD/.devdata/cifar10-jpg.tar.gz" --results-dir /tmp/gpu-results \
      --tracking-uri "$uri" -v 1 2>&1 | tail -40 | tee "$out/cifar10_gpu.log"
  $py -m hpsearch.cli report --experiment cifar10_gpu --tracking-uri "$uri" --split test \
      --extra mistake_severity,mahp_250,path_consistency 2>&1 | tee -a "$out/cifar10_gpu.log" ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
