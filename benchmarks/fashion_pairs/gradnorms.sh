#!/usr/bin/env bash
# Gradient norms each loss term puts on the student logits over training (runtime.grad_norms_every),
# for KD, DIST, the paper-faithful LUD and the improved LUD at their tuned settings, one seed, on
# both fashion_pairs students; `lud report` draws them (report/grad_norms.png). Needs run.sh's
# teacher and tuning folders.
#
#   bash benchmarks/fashion_pairs/gradnorms.sh [OUT]        (default OUT: runs/fashion_pairs)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/fashion_pairs}
JOBS=${JOBS:-2}
LUD=${LUD:-.venv/bin/lud}
PAIRS=${PAIRS:-"cnn_large_mlp_tiny cnn_large_cnn_small"}
TEACHER="teacher.checkpoint=$OUT/fashion_pairs-ce-cnn_large/best.pt runtime.teacher_cache_dir=$OUT/teacher_logits"
for pair in $PAIRS; do
  # the tuned settings of these four methods only (bench refuses parameters of methods it skips)
  mkdir -p "$OUT/gradnorms-$pair"
  .venv/bin/python - "$OUT" "$pair" <<'PY'
import sys, yaml
out, pair = sys.argv[1:]
tuned = {}
for grid in ("baselines", "lud"):
    tuned.update(yaml.safe_load(open(f"{out}/tune-{grid}-{pair}/tuned.yaml")) or {})
keep = {m: tuned.get(m) or {} for m in ("kd", "dist", "lud-paper", "lud")}
yaml.safe_dump(keep, open(f"{out}/gradnorms-{pair}/params.yaml", "w"))
PY
  "$LUD" bench "fashion_pairs/lud/$pair" --methods kd,dist,lud-paper,lud --seeds 0, --jobs "$JOBS" \
    --method-params "$OUT/gradnorms-$pair/params.yaml" \
    --output-dir "$OUT/gradnorms-$pair" $TEACHER runtime.progress=false runtime.grad_norms_every=10
  "$LUD" report "$OUT/gradnorms-$pair"
done
