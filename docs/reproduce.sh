#!/usr/bin/env bash
# The small-scale reproduction (docs/reproduction.md, issue 15): a 12-layer, 128-wide pre-LN BERT on
# the Shakespeare corpus (recipes/bert-tiny-ctx-*.toml), evaluated on whole held-out works, with
#   - full baseline, the baseline shortened to RaPTr's FLOPs (equi-FLOP), RaPTr 6-8-10-12 and gradual
#     stacking 6-9-12, for seeds 0, 1, 2;
#   - PLD as published (pre-LN, 1/p on each residual branch, gamma solved for RaPTr's FLOPs) and
#     constant stochastic depth at RaPTr's expected FLOPs, seed 0;
#   - RaPTr ablations, seed 0: scale = "inverse_p", no fixed layers, the bernoulli sampler;
#   - Random Part Training (width subnetworks, alone and with depth), seeds 0, 1, 2.
# Every run but the full baseline costs RaPTr's FLOPs (0.756x). The split does not move with the seed
# (data.split_seed), so every seed is scored on the same eval set.
#
# About 3 hours on 2 idle CPU cores, in pieces: it can be stopped at any point and run again; finished
# runs are reused and an interrupted one continues from its last checkpoint (every 250 steps).
# Run from the repository root after `make install data`:  bash docs/reproduce.sh
# Pieces: `bash docs/reproduce.sh seed 1`, `... published`, `... ablations`, `... width`; `... table` rewrites
# docs/repro/ (compare.json, compare.md, the plot) from whatever has finished.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
R="${RAPTR:-.venv/bin/raptr}"
OUT="${REPRO_OUT:-runs/repro}"
C=recipes/bert-tiny-ctx
common=(--set log.console=plain --set train.keep_checkpoints=1)

seed_runs() {  # the four main methods of one seed
  local seed=$1 out="$OUT/seed$1"
  "$R" compare "$C-baseline.toml" "$C-raptr.toml" --equal-flops --out "$out" --set "run.seed=$seed" "${common[@]}"
  "$R" compare "$C-stacking.toml" --out "$out" --set "run.seed=$seed" "${common[@]}"
}

published() {  # seed 0: PLD as published and constant stochastic depth, both at RaPTr's FLOPs
  "$R" compare "$C-pld.toml" "$C-sd.toml" --out "$OUT/seed0" --set run.seed=0 "${common[@]}"
}

ablations() {  # seed 0: one RaPTr knob changed at a time
  local out="$OUT/seed0" ab=(--set run.seed=0 "${common[@]}")
  "$R" compare "$C-raptr.toml" --out "$out" "${ab[@]}" --set run.name=bert-tiny-ctx-raptr-inverse-p \
    --set schedule.scale=inverse_p
  "$R" compare "$C-raptr.toml" --out "$out" "${ab[@]}" --set run.name=bert-tiny-ctx-raptr-no-fixed \
    --set "schedule.fixed_layers=[]"
  "$R" compare "$C-raptr.toml" --out "$out" "${ab[@]}" --set run.name=bert-tiny-ctx-raptr-bernoulli \
    --set schedule.sampler=bernoulli
}

width() {  # issue 18: Random Part Training at RaPTr's FLOPs, seeds 0-2, next to the depth-only runs above
  local seed
  for seed in 0 1 2; do
    "$R" compare "$C-raptr-width.toml" "$C-raptr-depth-width.toml" --out "$OUT/seed$seed" \
      --set "run.seed=$seed" "${common[@]}"
  done
}

table() {  # every finished run, seeds of one run.name pooled (mean +- std, paired differences)
  local runs=()
  for d in "$OUT"/seed*/*/; do [ -d "$d/final" ] && runs+=("$d"); done
  "$R" compare --runs "${runs[@]}" --out docs/repro
}

case "${1:-all}" in
  all) seed_runs 0; published; seed_runs 1; seed_runs 2; ablations; width; table ;;
  seed) seed_runs "$2" ;;
  published) published ;;
  ablations) ablations ;;
  width) width ;;
  table) table ;;
  *) echo "usage: bash docs/reproduce.sh [all | seed N | published | ablations | width | table]" >&2; exit 2 ;;
esac
