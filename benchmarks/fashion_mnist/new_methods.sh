#!/usr/bin/env bash
# The Fashion-MNIST rows of the methods added after run.sh's first round (WTTM, RLD, the released
# LUD objective) and of any LUD variant whose defaults changed since (METHODS), with the same
# recipe, teacher, tuning budget (grid_round1_new.yaml: four settings each, seed 0, validation
# only) and seeds 1-3 as docs/benchmarks.md's first-round tables.
#
#   bash benchmarks/fashion_mnist/new_methods.sh [OUT]       (default OUT: runs/fashion_mnist)
#   PAIRS=cnn_large_mlp_tiny bash benchmarks/fashion_mnist/new_methods.sh
#   GRID=grid_round1_lud_default.yaml TAG=lud-default METHODS=lud bash benchmarks/fashion_mnist/new_methods.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_mnist}
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
PAIRS=${PAIRS:-"cnn_large_mlp_tiny cnn_large_cnn_small"}
METHODS=${METHODS:-wttm,rld,lud-released}
GRID=${GRID:-grid_round1_new.yaml}
TAG=${TAG:-new}
RECIPE="data.subset=12000 data.augment=none runtime.teacher_cache=true solver.epochs=15 runtime.progress=false"
if [ ! -f "$OUT/fashion_mnist-ce-cnn_large/summary.json" ]; then
  "$LUD" train fashion_mnist/ce/cnn_large --output-dir "$OUT" \
    data.subset=12000 solver.epochs=10 runtime.progress=false
fi
TEACHER="teacher.checkpoint=$OUT/fashion_mnist-ce-cnn_large/best.pt"
CACHE="runtime.teacher_cache_dir=$OUT/teacher_logits"
for pair in $PAIRS; do
  cfg=fashion_mnist/lud/$pair
  "$LUD" tune "$cfg" --grid "benchmarks/fashion_mnist/$GRID" --seeds 0, \
    --jobs "$JOBS" --output-dir "$OUT/tune-$TAG-$pair" $TEACHER $RECIPE $CACHE
  "$LUD" bench "$cfg" --methods "$METHODS" --seeds 1,2,3 --jobs "$JOBS" \
    --method-params "$OUT/tune-$TAG-$pair/tuned.yaml" --output-dir "$OUT/bench-$TAG-$pair" \
    $TEACHER $RECIPE $CACHE
done
