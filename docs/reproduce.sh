#!/usr/bin/env bash
# The small-scale reproduction (docs/reproduction.md, issue 15): a 12-layer, 128-wide pre-LN BERT on
# the Shakespeare corpus (recipes/bert-tiny-ctx-*.toml), evaluated on whole held-out works, with
#   - full baseline, the baseline shortened to RaPTr's FLOPs (equi-FLOP), RaPTr 6-8-10-12 and gradual
#     stacking 6-9-12, for seeds 0, 1, 2;
#   - PLD as published (pre-LN, 1/p on each residual branch, gamma solved for RaPTr's FLOPs) and
#     constant stochastic depth at RaPTr's expected FLOPs, seed 0;
#   - RaPTr ablations, seed 0: scale = "inverse_p", no fixed layers, the bernoulli sampler;
#   - Random Part Training (width subnetworks, alone and with depth), seeds 0, 1, 2;
#   - downstream (issue 16): the main four (all seeds), PLD and SD fine-tuned on builtin:shakespeare-genre
#     with fine-tune seeds 0, 1, 2, and the same architecture from scratch once.
# Every run but the full baseline costs RaPTr's FLOPs (0.756x). The split does not move with the seed
# (data.split_seed), so every seed is scored on the same eval set.
#
# Every run is 1500 steps or their FLOPs. The 1000-step reproduction this replaced (its baseline ended
# 0.57 nats below the floor, short of the 0.6 issue 15 asks), with its downstream and width results, is
# kept in docs/repro-1000/. The main four x 3 seeds, PLD, SD and the ablations took 4.3 hours on 2
# CPU cores as measured (0.69-0.76 s a full-model step; ~3 hours at the 0.5 s of faster days); width
# adds ~1.5 and downstream ~4.5 (it trains its 14 models again first). In pieces: it can be stopped
# at any point and run again. An interrupted run continues from its last
# checkpoint (every 250 steps, in runs/repro); a finished one leaves its metrics.jsonl and recipe.toml in docs/repro/runs/ (committed: the table is built from them,
# and a run recorded there is not trained again, on this machine or another).
# Run from the repository root after `make install data`:  bash docs/reproduce.sh
# Pieces: `bash docs/reproduce.sh seed 1`, `... published`, `... downstream`, `... ablations`, `... width`; `... table` rewrites
# docs/repro/ (compare.json, compare.md, the plot) from whatever has finished.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
R="${RAPTR:-.venv/bin/raptr}"
OUT="${REPRO_OUT:-runs/repro}"
KEEP="${REPRO_KEEP:-docs/repro/runs}"
C=recipes/bert-tiny-ctx
common=(--set log.console=plain --set train.keep_checkpoints=1)
EQUIFLOP_STEPS=1134  # the baseline at RaPTr 6-8-10-12's FLOPs (0.7562x of 1500 steps): `raptr compare --equal-flops` solves the same

train() {  # train() SEED NAME RECIPE [--set ...]: train or resume one run into $OUT
  local seed=$1 name=$2 recipe=$3; shift 3
  "$R" compare "$recipe" --out "$OUT/seed$seed" --set "run.seed=$seed" --set "run.name=$name" "${common[@]}" "$@"
}

wanted() { [[ " ${DS_SEEDS:-0 1 2} " == *" $1 "* ]]; }  # DS_SEEDS="0": only the pretraining seeds listed

one() {  # one() SEED NAME RECIPE [--set ...]: train (or resume) one run unless it is recorded, then record it
  local seed=$1 name=$2 recipe=$3; shift 3
  local rec="$KEEP/seed$seed/$name" run="$OUT/seed$seed/$name"
  if grep -qs '"run_end"' "$rec/metrics.jsonl"; then
    # NEED_MODEL=1 (downstream): a recorded run whose model is not in $OUT (another machine or session)
    # and whose fine-tuning is not recorded is trained again; it must end at the recorded loss.
    if [[ -z "${NEED_MODEL:-}" || -d "$run/final" ]] || ls "$rec"/finetune/*/final/finetune.json >/dev/null 2>&1; then
      echo "recorded: seed $seed $name"; return
    fi
    echo "recorded, but no model in $OUT: training seed $seed $name again for its fine-tuning"
    train "$seed" "$name" "$recipe" "$@"
    local was now
    was=$(grep '"run_end"' "$rec/metrics.jsonl" | grep -o '"eval_loss": [-0-9.e]*' | cut -d' ' -f2)
    now=$(grep '"run_end"' "$run/metrics.jsonl" | grep -o '"eval_loss": [-0-9.e]*' | cut -d' ' -f2)
    if awk -v a="$was" -v b="$now" 'BEGIN { d = a - b; exit !(d < 5e-5 && d > -5e-5) }'; then
      echo "seed $seed $name: final eval $now, recorded $was (reproduced)"
    else
      echo "seed $seed $name: final eval $now, but recorded $was: NOT reproduced (the record is kept)" >&2
    fi
    return
  fi
  train "$seed" "$name" "$recipe" "$@"
  mkdir -p "$rec"
  cp "$run/metrics.jsonl" "$run/recipe.toml" "$rec/"
}

seed_runs() {  # the four main methods of one seed
  local s=$1
  one "$s" bert-tiny-ctx-baseline "$C-baseline.toml"
  one "$s" bert-tiny-ctx-raptr "$C-raptr.toml"
  one "$s" bert-tiny-ctx-baseline-equiflop-bert-tiny-ctx-raptr "$C-baseline.toml" --set "train.steps=$EQUIFLOP_STEPS"
  one "$s" bert-tiny-ctx-stacking "$C-stacking.toml"
}

published() {  # seed 0: PLD as published and constant stochastic depth, both at RaPTr's FLOPs
  one 0 bert-tiny-ctx-pld "$C-pld.toml"
  one 0 bert-tiny-ctx-sd "$C-sd.toml"
}

ablations() {  # seed 0: one RaPTr knob changed at a time
  one 0 bert-tiny-ctx-raptr-inverse-p "$C-raptr.toml" --set schedule.scale=inverse_p
  one 0 bert-tiny-ctx-raptr-no-fixed "$C-raptr.toml" --set "schedule.fixed_layers=[]"
  one 0 bert-tiny-ctx-raptr-bernoulli "$C-raptr.toml" --set schedule.sampler=bernoulli
}

width() {  # issue 18: Random Part Training at RaPTr's FLOPs, seeds 0-2, next to the depth-only runs above
  local s
  for s in 0 1 2; do
    one "$s" bert-tiny-ctx-raptr-width "$C-raptr-width.toml"
    one "$s" bert-tiny-ctx-raptr-depth-width "$C-raptr-depth-width.toml"
  done
}

TASK=builtin:shakespeare-genre
DOWNSTREAM=(bert-tiny-ctx-baseline bert-tiny-ctx-baseline-equiflop-bert-tiny-ctx-raptr bert-tiny-ctx-raptr
  bert-tiny-ctx-stacking bert-tiny-ctx-pld bert-tiny-ctx-sd)

downstream() {  # issue 16: the main four (every seed), PLD and SD fine-tuned on $TASK, fine-tune seeds 0-2
  # Needs the trained models in $OUT (runs/repro, not committed): a run recorded without its model here
  # (trained in another session or on another machine) and without recorded fine-tuning is trained
  # again first, and its final loss is checked against the record. One `compare --downstream` call, so
  # the from-scratch fine-tunes run once for all the runs; each run's finetune.json is then recorded
  # next to its metrics (RUN/finetune/TASK/final/), where a later `compare --downstream` reads it
  # instead of fine-tuning again. Runs recorded with their fine-tuning but without a model here join
  # that call from $KEEP, read only: the from-scratch result they hold is then not computed again.
  local dirs=() reads=() d rel s
  for s in ${DS_SEEDS:-0 1 2}; do
    NEED_MODEL=1 seed_runs "$s"
    [[ "$s" != 0 ]] || NEED_MODEL=1 published
  done
  for d in "$KEEP"/seed*/*/; do
    rel=${d#"$KEEP"/}; rel=${rel%/}
    [[ " ${DOWNSTREAM[*]} " == *" ${rel#*/} "* ]] || continue
    s=${rel%%/*}; s=${s#seed}
    if [[ ! -d "$OUT/$rel/final" ]]; then
      if ls "$d"finetune/*/final/finetune.json >/dev/null 2>&1; then
        reads+=("${d%/}")
      elif wanted "$s"; then
        echo "no model for $rel in $OUT: not fine-tuned" >&2
      fi
      continue
    fi
    wanted "$s" || continue
    for f in "$d"finetune/*/final/finetune.json; do  # recorded earlier: reused, not fine-tuned again
      [[ -f "$f" ]] && mkdir -p "$(dirname "$OUT/$rel/${f#"$d"}")" && cp "$f" "$OUT/$rel/${f#"$d"}"
    done
    dirs+=("$OUT/$rel")
  done
  ((${#dirs[@]})) || { echo "nothing to fine-tune" >&2; return; }
  "$R" compare --runs "${reads[@]}" "${dirs[@]}" --downstream "$TASK" --out "$OUT/downstream"
  for d in "${dirs[@]}"; do
    rel=${d#"$OUT"/}
    for f in "$d"/finetune/*/final/finetune.json; do
      mkdir -p "$(dirname "$KEEP/$rel/${f#"$d"/}")" && cp "$f" "$KEEP/$rel/${f#"$d"/}"
    done
  done
}

table() {  # every recorded run, seeds of one run.name pooled (mean +- std, paired differences)
  local runs=()
  for d in "$KEEP"/seed*/*/; do runs+=("$d"); done
  "$R" compare --runs "${runs[@]}" --out docs/repro --paired-against bert-tiny-ctx-baseline-equiflop-bert-tiny-ctx-raptr
  runs=()  # the downstream table: the runs whose fine-tuning is recorded (downstream, above)
  for d in "$KEEP"/seed*/*/; do ls "$d"finetune/*/final/finetune.json >/dev/null 2>&1 && runs+=("$d"); done
  if ((${#runs[@]})); then "$R" compare --runs "${runs[@]}" --downstream "$TASK" --out docs/repro/downstream; fi
}

case "${1:-all}" in
  all) seed_runs 0; published; seed_runs 1; seed_runs 2; downstream; ablations; width; table ;;
  seed) seed_runs "$2" ;;
  published) published ;;
  ablations) ablations ;;
  width) width ;;
  downstream) downstream ;;
  table) table ;;
  *) echo "usage: bash docs/reproduce.sh [all | seed N | published | downstream | ablations | width | table]" >&2; exit 2 ;;
esac
