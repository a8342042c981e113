#!/usr/bin/env bash
# Issue #12, third round: can any LUD setting beat DIST on the 100-class cnn_large -> cnn_small
# pair? Two validation screens of eight settings each (seed 0, the test set never scored), then
# the best setting on seeds 1-3 with the test set, comparable run for run with bench-cnn_large_
# cnn_small (same recipe, seeds, teacher and cache; CPU runs are deterministic).
#
#   bash benchmarks/fashion_pairs/screen_lud.sh [OUT]      (default OUT: runs/fashion_pairs)
#
# Needs the teacher of run.sh. 16 + 6 runs of ~35 s each alone on the 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_pairs}
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
HERE=benchmarks/fashion_pairs
cfg=fashion_pairs/lud/cnn_large_cnn_small
ARGS="teacher.checkpoint=$OUT/fashion_pairs-ce-cnn_large/best.pt runtime.teacher_cache_dir=$OUT/teacher_logits runtime.progress=false"
for s in 1 2; do
  "$LUD" tune "$cfg" --grid "$HERE/grid_lud_screen$s.yaml" --seeds 0, --jobs "$JOBS" \
    --output-dir "$OUT/screen$s-cnn_large_cnn_small" $ARGS
done
# screen 1's winner (screen 2 found nothing better on validation)
"$LUD" bench "$cfg" --methods lud --seeds 1,2,3 --jobs "$JOBS" \
  --method-params "$OUT/screen1-cnn_large_cnn_small/tuned.yaml" \
  --output-dir "$OUT/bench-screen-cnn_large_cnn_small" $ARGS
"$LUD" report "$OUT/bench-screen-cnn_large_cnn_small"
# the CNN pair's winner on the MLP pair, unchanged (does it transfer?)
"$LUD" bench fashion_pairs/lud/cnn_large_mlp_tiny --methods lud --seeds 1,2,3 --jobs "$JOBS" \
  --method-params "$OUT/screen1-cnn_large_cnn_small/tuned.yaml" \
  --output-dir "$OUT/bench-screen-cnn_large_mlp_tiny" $ARGS
