#!/usr/bin/env bash
# System services the integration tests start themselves (Debian packages): PostgreSQL for
# MLflow's backend store, slurm-wlm (slurmctld + slurmd on localhost) with munge for the SLURM
# batch test, chromium + chromium-driver (headless, driven by Selenium) for the MLflow UI test.
# A machine without them (no root, no apt) still runs the suite: those tests skip and say which
# binary is missing.
set -euo pipefail
pkgs=(postgresql slurm-wlm munge chromium chromium-driver)
declare -A tests_of=([postgresql]=tests/test_tracking_server.py [slurm-wlm]=tests/test_slurm.py
                     [munge]=tests/test_slurm.py [chromium]=tests/test_mlflow_ui.py
                     [chromium-driver]=tests/test_mlflow_ui.py)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    skipping=$(for p in "${missing[@]}"; do echo "${tests_of[$p]}"; done | sort -u | paste -sd, -)
    echo "system-deps: not root or no apt-get; tests needing ${missing[*]} will skip ($skipping)" >&2
  fi
fi
