#!/usr/bin/env bash
# Every measurement the model card reads, on the shipped model file, in one pass:
# the official test split (TTA 5 + plain, intervals), external-dev, the guard (accept rates,
# perturbed and DICOM copies, the OOD set), Grad-CAM and occlusion maps, the framed images,
# robustness, the site check, speed and load, and the adaptation curve. Each run on the test
# split is a counted row of docs/RESULTS.md's "Test-split evaluations". Results go to
# bench/results/shipped/ (overwritten); a log with each step's start and duration to $LOG.
#
#   bash bench/measure_shipped.sh [STEP ...]     # default: all steps, in this order
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BM=${BM:-.venv/bin/brainmri}
DATA=../shared/data
S=bench/results/shipped
LOG=${LOG:-$S/measure.log}
export TQDM_DISABLE=1

evaluate() { "$BM" evaluate --data "$DATA/brain-tumor-mri" --out "$S" --device cpu --force; }
external() {
  local tmp
  tmp=$(mktemp -d)
  "$BM" evaluate --data "$DATA/external-dev" --tta 1 --out "$tmp" --device cpu
  cp "$tmp/test_results_final.json" "$S/external_dev.json"
  for p in confusion_matrix roc_curves reliability; do cp "$tmp/$p.png" "$S/external_dev_$p.png"; done
  rm -rf "$tmp"
  "$PY" bench/external.py --out "$S" --name external_breakdown
  "$PY" bench/external_guard.py --out "$S/external_guard.json"
}
guard() {
  "$PY" bench/guard_eval.py --out "$S/guard_eval.json"
  "$PY" bench/guard_eval.py --only ood --out "$S/guard_ood.json"
  "$PY" bench/framed.py --out "$S/framed_test.json"
}
maps() {
  "$PY" bench/guard_eval.py --only gradcam --out "$S/gradcam_cut_test.json"
  "$PY" bench/guard_eval.py --only gradcam --method occlusion --out "$S/occlusion_test.json"
}
robustness() {
  "$PY" bench/robustness.py --model src/brainmri/weights/lite0_cpu.safetensors \
    --out "$S/robustness.json"
}
site() {
  "$PY" bench/site_check.py --phase measure --test --out "$S/site_check.json"
  "$PY" bench/site_check.py --phase measure --raw "$DATA/brain-tumor-mri-raw" \
    --out "$S/site_check_raw.json"
}
speed() {
  "$PY" bench/inference.py --out "$S/inference_epyc_avx2.json"
  "$PY" bench/serve_load.py --hostile --out "$S/serve_load_epyc_avx2.json"
}
adapt() {
  rm -f "$S"/adapt/k*_d*.json  # adapt_curve.py reuses the runs it finds: measure this file's
  "$PY" bench/adapt_curve.py --ks 25,5,10,50 --draws 0 --out "$S/adapt"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(evaluate external guard maps robustness site speed adapt)
for step in "${steps[@]}"; do
  start=$(date +%s)
  echo "$(date -u '+%F %T UTC') $step: start (commit $(git rev-parse --short HEAD))" | tee -a "$LOG"
  "$step"
  echo "$(date -u '+%F %T UTC') $step: done in $(( $(date +%s) - start )) s" | tee -a "$LOG"
done
