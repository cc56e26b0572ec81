#!/usr/bin/env bash
# Reproduce thesis Tables 6.1 and 6.2 (label-only embeddings of the real ETHEC label hierarchy)
# with hpsearch searches, then collect the best run of each cell into
# results/ethec_label_embeddings.csv.  See results/ethec_label_embeddings.md for the protocol.
#
# usage: results/run_ethec_tables.sh [CELL ...]     run the named cells (default: all, in the
#                                                  order they were run), then collect
#        results/run_ethec_tables.sh collect       only rebuild the CSV from the MLflow stores
#        results/run_ethec_tables.sh t61b          round t61b: one search per Table 6.1 cell on
#                                                  one code version (tie_break val_edge_gap), then
#                                                  results/ethec_t61_midpoint.py t61b
#        results/run_ethec_tables.sh t61s          Table 6.1 on three split seeds: each t61b-selected
#                                                  configuration on split_seed 0/1/2
#                                                  (ethec_t61s_*.yaml), mean and min-max per cell
#        results/run_ethec_tables.sh t62thesis     Table 6.2 with the thesis' own setting (no search,
#                                                  5000 epochs; ethec_t62_thesis_*.yaml)
#
# CELL is a search-space stem without "ethec_", e.g. t61_euclidean_cone_d10 or
# t62_hyperbolic_cone_d100.  Scratch (MLflow SQLite stores, Ray state, logs) goes to
# $ETHEC_EVIDENCE (default /tmp/ethec-evidence): t61/ for Table 6.1, t62/ for Table 6.2.
# ETHEC_RESUME=1 adds --resume (continue the newest unfinished search of each named cell).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
EVID=${ETHEC_EVIDENCE:-/tmp/ethec-evidence}
mkdir -p "$EVID/logs"

ALL_CELLS=(
  t61_euclidean_cone_d10 t61_order_embedding_d10 t61_euclidean_cone_d2 t61_order_embedding_d2
  t62_hyperbolic_cone_d100
  t61_euclidean_cone_d100 t61_order_embedding_d100 t61_euclidean_cone_d3 t61_order_embedding_d3
  t61_euclidean_cone_d5 t61_order_embedding_d5
  t61_order_embedding_d2_long t62_euclidean_cone_d100 t62_order_embedding_d100
  t62_hyperbolic_cone_d2 t62_hyperbolic_cone_d100_nb50
  t62_euclidean_cone_d2 t62_order_embedding_d2
  t62_hyperbolic_cone_d1000 t62_euclidean_cone_d1000 t62_order_embedding_d1000
  # second, longer searches (8 x <= 300 epochs) of the Table 6.1 cells not beaten by the first;
  # collect pools them with the first search of the same cell
  t61_order_embedding_d10_long t61_order_embedding_d100_long t61_order_embedding_d5_long
  t61_euclidean_cone_d3_long t61_order_embedding_d3_long
  # third searches (12 x <= 300 epochs) of the two lowest-dimensional Table 6.1 cells still not
  # beaten; collect pools them (same table/family/d/p) with the earlier searches of the cell
  t61_order_embedding_d3_r3 t61_euclidean_cone_d3_r3
)

# one search: search_spaces/ethec_tables/ethec_<cell>.yaml -> $EVID/<t61|t62>/mlflow.db
run_cell() {  # CELL [STORE]: STORE defaults to the cell's table prefix (t61, t62)
  local cell=$1 table=${2:-${1%%_*}} t0 rc=0
  t0=$(date +%s)
  timeout 1500 hpsearch search "search_spaces/ethec_tables/ethec_${cell}.yaml" \
    --results-dir "$EVID/$table" -v 0 ${ETHEC_RESUME:+--resume} \
    >> "$EVID/logs/${cell}.log" 2>&1 || rc=$?
  echo "${cell} wall_s=$(( $(date +%s) - t0 )) rc=${rc}" | tee -a "$EVID/logs/walltimes.txt"
}

collect() {  # best run per cell -> CSV (selection on val only; ties: earlier best epoch)
  python - "$EVID" results/ethec_label_embeddings.csv <<'EOF'
import csv, re, sys
from pathlib import Path
import yaml
from hpsearch.tracking import Tracker

evid, out = Path(sys.argv[1]), Path(sys.argv[2])
THESIS = {  # (table, method, d) -> thesis value(s): T6.1 test F1; T6.2 TPR/TNR/full-F1
    **{("6.1", "order_embedding", d): (v,) for d, v in
       zip((2, 3, 5, 10, 100), (.8271, .9302, .9457, .9920, .9920))},
    **{("6.1", "euclidean_cone", d): (v,) for d, v in
       zip((2, 3, 5, 10, 100), (.8550, .9979, .9593, .9919, .9752))},
    ("6.2", "order_embedding", 2): (.2309, .9708, .1372),
    ("6.2", "order_embedding", 100): (.4686, .9880, .3894),
    ("6.2", "order_embedding", 1000): (.3788, .9878, .3489),
    ("6.2", "euclidean_cone", 2): (.3617, .9975, .3573),
    ("6.2", "euclidean_cone", 100): (.4802, .9985, .4151),
    ("6.2", "euclidean_cone", 1000): (.5790, .9973, .4091),
    ("6.2", "hyperbolic_cone", 2): (.4443, .9907, .2296),
    ("6.2", "hyperbolic_cone", 100): (.9336, .9986, .8060),
    ("6.2", "hyperbolic_cone", 1000): (.9721, .9986, .8257),
}
walls = {}
wt = evid / "logs" / "walltimes.txt"
if wt.exists():
    for line in wt.read_text().splitlines():
        m = re.match(r"(\S+) wall_s=(\d+) rc=(\d+)", line)
        if m:  # a cell run in several attempts (killed, resumed): wall times add up
            walls[m[1]] = (walls.get(m[1], (0, 0))[0] + int(m[2]), int(m[3]))
PARAMS = ["optim.lr", "optim.batch_size", "model.params.margin", "model.params.K",
          "model.params.energy", "model.params.negatives_per_side",
          "model.params.negative_strategy", "model.params.optimizer",
          "model.params.non_basic_fraction"]
METRICS = ["test_edge_f1", "test_edge_precision", "test_edge_recall", "test_threshold",
           "test_recon_tpr", "test_recon_tnr", "test_full_f1", "test_recon_basic_f1"]
cells = {}  # (table, family, d, non_basic_fraction) -> searches (several searches = one pool)
for space_file in sorted(Path("search_spaces/ethec_tables").glob("ethec_t6[12]_*_d*.yaml")):
    stem = space_file.stem.removeprefix("ethec_")
    if stem.startswith("t62_thesis"):  # own store and summary (t62thesis below)
        continue
    sp = yaml.safe_load(space_file.read_text())
    table = "6.1" if stem.startswith("t61") else "6.2"
    db = evid / ("t61" if table == "6.1" else "t62") / "mlflow.db"
    if not db.exists():
        continue
    t = Tracker(f"sqlite:///{db}", sp["name"])
    try:
        runs = t.client.search_runs([t.existing_experiment_id()],
                                    filter_string="tags.`hpsearch.role` = 'trial'",
                                    max_results=1000)
    except Exception:  # noqa: BLE001 - cell not run yet
        continue
    sel = "best_" + sp["metric"]  # best epoch of each trial (the driver logs it per report)
    runs = [r for r in runs if sel in r.data.metrics]
    if not runs:
        continue
    fx = sp["fixed"]
    key = (table, sp["family"], fx["model.params.dim"], fx["model.params.non_basic_fraction"])
    bud = sp["budget"]
    c = cells.setdefault(key, {"sel": sel, "metric": sp["metric"], "runs": [], "names": [],
                               "budgets": [], "wall": 0})
    c["runs"] += runs
    c["names"].append(sp["name"])
    c["budgets"].append(f"{sp['name']}: {bud['num_samples']} trials x <= {bud['max_epochs']} "
                        f"ep (ASHA grace {bud['grace_period']} rf {bud['reduction_factor']})")
    c["wall"] += walls.get(stem, (0, 0))[0]
rows = []
for (table, family, d, nbf), c in cells.items():
    sel, runs = c["sel"], c["runs"]
    runs.sort(key=lambda r: (-r.data.metrics[sel], r.data.metrics.get("best_epoch", 1e9),
                             r.info.start_time))
    b = runs[0]
    top = b.data.metrics[sel]
    tied = [r for r in runs if r.data.metrics[sel] == top]
    tkey = "test_" + c["metric"].removeprefix("val_")
    row = {"table": table, "method": family, "d": d, "non_basic_fraction": nbf,
           "experiments": " + ".join(c["names"]), "run_id": b.info.run_id,
           "trial_id": b.data.tags.get("hpsearch.trial_id"),
           "selection": sel, "selected_value": round(top, 4),
           "best_epoch": int(b.data.metrics.get("best_epoch", -1)),
           "epochs_run": int(b.data.metrics.get("epoch", -1)),
           "n_trials": len(runs), "n_tied_at_best": len(tied),
           "tied_test_range": f"{min(r.data.metrics.get(tkey, -1) for r in tied):.4f}-"
                              f"{max(r.data.metrics.get(tkey, -1) for r in tied):.4f}",
           **{m: round(b.data.metrics[m], 4) if m in b.data.metrics else "" for m in METRICS},
           **{p.split(".")[-1]: b.data.params.get(p, "") for p in PARAMS[:-1]},
           "thesis": "/".join(f"{v:.4f}" for v in THESIS.get((table, family, d), ())),
           "budget": "; ".join(c["budgets"]), "search_wall_s": c["wall"]}
    rows.append(row)
order = {"6.1": 0, "6.2": 1}
rows.sort(key=lambda r: (order[r["table"]], r["method"], r["d"],
                         -r["non_basic_fraction"]))
if rows:
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
print(f"{len(rows)} rows -> {out}")
for r in rows:
    print(r["table"], r["method"], r["d"], r["non_basic_fraction"], r["selected_value"],
          r["test_edge_f1"],
          r["test_recon_tpr"], r["test_recon_tnr"], r["test_full_f1"], "thesis", r["thesis"])
EOF
}

if [[ "${1:-}" == "t61b" ]]; then
  # the two *_g60 searches (second searches of the d = 3 cells) ran after the other ten
  for c in oe_d2 oe_d3 oe_d5 oe_d10 oe_d100 ec_d2 ec_d3 ec_d5 ec_d10 ec_d100 oe_d3_g60 ec_d3_g60; do
    run_cell "t61b_$c"
  done
  python results/ethec_t61_midpoint.py t61b "$EVID"
  exit 0
fi
# per-trial summary of a round whose cells are fixed configurations (no selection across
# trials): t61s (mean and min-max of test F1 over the split seeds) and t62thesis
summarize_round() {
  python - "$EVID/$1/mlflow.db" "$1" <<'EOF'
import statistics, sys
from pathlib import Path
import yaml
from hpsearch.tracking import Tracker

db, rnd = Path(sys.argv[1]), sys.argv[2]
glob = "ethec_t61s_*.yaml" if rnd == "t61s" else "ethec_t62_thesis_*.yaml"
for space_file in sorted(Path("search_spaces/ethec_tables").glob(glob)):
    sp = yaml.safe_load(space_file.read_text())
    if not db.exists():
        break
    t = Tracker(f"sqlite:///{db}", sp["name"])
    try:
        runs = t.client.search_runs([t.existing_experiment_id()],
                                    filter_string="tags.`hpsearch.role` = 'trial'")
    except Exception:  # noqa: BLE001 - cell not run yet
        continue
    m = lambda r, k: r.data.metrics.get(k, float("nan"))  # noqa: E731
    if rnd == "t61s":
        f1 = [m(r, "test_edge_f1") for r in runs]
        seeds = [r.data.params.get("model.params.split_seed") for r in runs]
        print(f"{sp['name']}: test_edge_f1 mean {statistics.fmean(f1):.4f} min {min(f1):.4f} "
              f"max {max(f1):.4f} n {len(f1)} (split seeds {seeds}: "
              + ", ".join(f"{v:.4f}" for v in f1) + ")")
    else:
        for r in runs:
            print(f"{sp['name']}: TPR {m(r, 'test_recon_tpr'):.4f} TNR {m(r, 'test_recon_tnr'):.4f}"
                  f" full-F1 (closure positives) {m(r, 'test_full_f1'):.4f}, basic-positive F1 "
                  f"{m(r, 'test_recon_basic_f1'):.4f}, epoch {m(r, 'best_epoch'):.0f}")
EOF
}

if [[ "${1:-}" == "t61s" ]]; then
  for c in oe_d2 oe_d5 oe_d10 oe_d100 ec_d2 ec_d3 ec_d5 ec_d10 ec_d100; do
    run_cell "t61s_$c" t61s
  done
  summarize_round t61s
  exit 0
fi
if [[ "${1:-}" == "t62thesis" ]]; then
  for c in hc_d2 hc_d100 hc_d1000 oe_d2 oe_d100 oe_d1000 ec_d2 ec_d100 ec_d1000; do
    run_cell "t62_thesis_$c" t62thesis
  done
  summarize_round t62thesis
  exit 0
fi
if [[ "${1:-}" == "collect" ]]; then
  collect
  exit 0
fi
cells=("$@")
[[ ${#cells[@]} -eq 0 ]] && cells=("${ALL_CELLS[@]}")
for c in "${cells[@]}"; do run_cell "$c"; done
collect
