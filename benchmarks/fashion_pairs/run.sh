#!/usr/bin/env bash
# The 100-class fashion_pairs tables of docs/benchmarks.md, end to end: teacher, equal-budget
# tuning on the validation split (three settings per method, seed 0), the three-seed benchmark
# (seeds 1-3, the only runs that score the test set), the LUD ablation and the report, for
# cnn_large -> mlp_tiny and cnn_large -> cnn_small.
#
#   bash benchmarks/fashion_pairs/run.sh [OUT]        (default OUT: runs/fashion_pairs)
#
# Every step resumes: rerun the script after an interruption and finished runs are kept.
# JOBS (default 2) runs train side by side, one CPU thread each on a 2-core machine.
# STAGE=tune stops after tuning (the tuned settings are small files worth committing).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_pairs}
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
PAIRS=${PAIRS:-"cnn_large_mlp_tiny cnn_large_cnn_small"}
METHODS=${METHODS:-kd,dkd,dist,kd+ls,ctkd,mlkd,wttm,rld,lud-released,lud-paper,lud}
HERE=benchmarks/fashion_pairs
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found: sudo apt-get install dataset-fashion-mnist" >&2
    exit 2
  fi
fi
[ -x "$LUD" ] || make setup
QUIET="runtime.progress=false"

if [ ! -f "$OUT/fashion_pairs-ce-cnn_large/summary.json" ]; then
  OMP_NUM_THREADS=2 "$LUD" train fashion_pairs/ce/cnn_large --output-dir "$OUT" $QUIET
fi
TEACHER="teacher.checkpoint=$OUT/fashion_pairs-ce-cnn_large/best.pt runtime.teacher_cache_dir=$OUT/teacher_logits"

for pair in $PAIRS; do
  cfg=fashion_pairs/lud/$pair
  # 1. the same budget for every method, in two folders so the baselines can start before
  #    LUD's grid is settled; both are three settings per method, seed 0, validation only
  for grid in baselines lud; do
    "$LUD" tune "$cfg" --grid "$HERE/grid_$grid.yaml" --seeds 0, --jobs "$JOBS" \
      --output-dir "$OUT/tune-$grid-$pair" $TEACHER $QUIET
  done
  [ "${STAGE:-all}" = tune ] && continue
  # 2. the tuned settings on three other seeds, then LUD with each part switched off
  "$LUD" bench "$cfg" --methods "$METHODS" --ablate lud --seeds 1,2,3 --jobs "$JOBS" \
    --method-params "$OUT/tune-baselines-$pair/tuned.yaml" \
    --method-params "$OUT/tune-lud-$pair/tuned.yaml" \
    --output-dir "$OUT/bench-$pair" $TEACHER $QUIET
  "$LUD" report "$OUT/bench-$pair"
done
