#!/usr/bin/env bash
# The Fashion-MNIST tables of docs/benchmarks.md, end to end: teacher, equal-budget tuning on
# the validation split, the three-seed benchmark, the LUD ablation and the report, for the two
# pairs cnn_large -> cnn_small (CNN to a much smaller CNN) and cnn_large -> mlp_tiny (CNN to MLP).
#
#   bash benchmarks/fashion_mnist/run.sh [OUT]        (default OUT: runs/fashion_mnist)
#
# Every step resumes: rerun the script after an interruption and finished runs are kept.
# JOBS (default 2) runs train side by side, one CPU thread each on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_mnist}
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
PAIRS=${PAIRS:-"cnn_large_mlp_tiny cnn_large_cnn_small"}
# The first round's methods; `lud` then is `lud-paper` now (new_methods.sh adds the later ones and
# the improved `lud`). ABLATE="--ablate lud" adds the ablation of the improved LUD.
METHODS=${METHODS:-kd,dkd,dist,kd+ls,ctkd,mlkd,lud-paper}
ABLATE=${ABLATE:-}
# The data: Debian's dataset-fashion-mnist (installed here when missing and apt-get can run).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found: sudo apt-get install dataset-fashion-mnist" >&2
    exit 2
  fi
fi
[ -x "$LUD" ] || make setup   # the project's .venv
# 12,000 training images (10 % carved out for validation, per seed), the full 10,000-image test
# set; no augmentation, so the teacher's logits are computed once and cached.
RECIPE="data.subset=12000 data.augment=none runtime.teacher_cache=true solver.epochs=15 runtime.progress=false"

if [ ! -f "$OUT/fashion_mnist-ce-cnn_large/summary.json" ]; then
  "$LUD" train fashion_mnist/ce/cnn_large --output-dir "$OUT" \
    data.subset=12000 solver.epochs=10 runtime.progress=false
fi
TEACHER="teacher.checkpoint=$OUT/fashion_mnist-ce-cnn_large/best.pt"

for pair in $PAIRS; do
  cfg=fashion_mnist/lud/$pair
  # 1. the same budget for every method: four settings each, seed 0, validation split only
  "$LUD" tune "$cfg" --grid benchmarks/fashion_mnist/grid.yaml --seeds 0, --jobs "$JOBS" \
    --output-dir "$OUT/tune-$pair" $TEACHER $RECIPE runtime.teacher_cache_dir=$OUT/teacher_logits
  # 2. the tuned settings on three other seeds (the test set is scored only here), then LUD
  #    with each part switched off (its rows come after the table's in the run order)
  "$LUD" bench "$cfg" --methods "$METHODS" $ABLATE --seeds 1,2,3 \
    --jobs "$JOBS" --method-params "$OUT/tune-$pair/tuned.yaml" --output-dir "$OUT/bench-$pair" \
    $TEACHER $RECIPE
  "$LUD" report "$OUT/bench-$pair"
done
