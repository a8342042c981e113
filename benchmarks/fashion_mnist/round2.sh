#!/usr/bin/env bash
# Second tuning round for one pair (after run.sh): LUD and two baselines get the same extra budget
# (benchmarks/fashion_mnist/grid_round2_<student>.yaml), then a three-seed table of the three.
#
#   bash benchmarks/fashion_mnist/round2.sh OUT PAIR      e.g. runs/fashion_mnist cnn_large_mlp_tiny
#   METHODS=dist,dkd,lud bash benchmarks/fashion_mnist/round2.sh OUT cnn_large_cnn_small
# (METHODS: the methods of the grid; default kd,dist,lud)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$1
PAIR=$2
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
RECIPE="data.subset=12000 data.augment=none runtime.teacher_cache=true solver.epochs=15 runtime.progress=false"
TEACHER="teacher.checkpoint=$OUT/fashion_mnist-ce-cnn_large/best.pt"
cfg=fashion_mnist/lud/$PAIR
"$LUD" tune "$cfg" --grid "benchmarks/fashion_mnist/grid_round2_${PAIR#cnn_large_}.yaml" --seeds 0, \
  --jobs "$JOBS" --output-dir "$OUT/tune2-$PAIR" $TEACHER $RECIPE
"$LUD" bench "$cfg" --methods "${METHODS:-kd,dist,lud}" --seeds 1,2,3 --jobs "$JOBS" \
  --method-params "$OUT/tune2-$PAIR/tuned.yaml" --output-dir "$OUT/bench2-$PAIR" $TEACHER $RECIPE
"$LUD" report "$OUT/bench2-$PAIR"
