#!/usr/bin/env bash
# One prepared GPU call for docs/RESULTS.md §15: the `cpu` recipe's single-member runs
# (a42 a43 b42 b43 l1 s42 s43) side by side on one GPU, on the grouped split of seed 42.
# Inputs under .gpu/ (ignored, carried), made by `python bench/gpu_prep.py`. Outputs in $OUT:
# each run's best model (fp16 safetensors) and summary.json (every run's figures and log tail),
# rewritten every 20 s so that a run cut short still returns what finished.
#   EXTRA="data.max_per_class=8;..." bash bench/gpu_retrain.sh   # a short smoke run on a CPU
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
LIMIT_S=${LIMIT_S:-540}
mkdir -p "$OUT" /tmp/sw
if [ -d .gpu/whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 TQDM_DISABLE=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
W0=model.weights_file=.gpu/lite0_imagenet_fp16.safetensors
W1=model.weights_file=.gpu/lite1_imagenet_fp16.safetensors
B="augment.mri_curve_prob=0.5;augment.mri_invert_prob=0.15;augment.mri_histogram_prob=0.25"
declare -A V=(
  [a42]="seed=42" [a43]="seed=43" [b42]="seed=42;$B" [b43]="seed=43;$B"
  [l1]="seed=42;model.backbone=efficientnet_lite1;data.image_size=240;$W1"
  [s42]="seed=42;data.image_size=160" [s43]="seed=43;data.image_size=160"
)
for name in l1 a42 a43 b42 b43 s42 s43; do
  timeout "$LIMIT_S" python3 bench/gpu_sweep.py --data .gpu/data --out "/tmp/sw/$name" \
    --runs /tmp/sw-runs --budget-s 1e9 --set ensemble=1 --set "$W0" \
    --variant "$name=${V[$name]}${EXTRA:+;$EXTRA}" >"/tmp/sw/$name.log" 2>&1 &
done
merge() {
  cp -n /tmp/sw/*/*.safetensors "$OUT/" 2>/dev/null
  python3 - "$OUT/summary.json" <<'PY'
import json, pathlib, sys
out = {"runs": {}}
for log in sorted(pathlib.Path("/tmp/sw").glob("*.log")):
    s = log.with_suffix("") / "summary.json"
    entry = json.loads(s.read_text())["variants"] if s.is_file() else {}
    out["runs"][log.stem] = {"result": entry, "log_tail": log.read_text()[-3000:]}
pathlib.Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
PY
}
t0=$(date +%s)
while [ -n "$(jobs -rp)" ]; do
  sleep 20; merge
  echo "$(( $(date +%s) - t0 )) s: $(ls /tmp/sw/*/*.safetensors 2>/dev/null | wc -l) of 7 done;" \
    "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
done
merge
for f in /tmp/sw/*.log; do echo "== $f"; grep -v -E '^\s*$' "$f" | tail -4; done
