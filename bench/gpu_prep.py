"""Prepare the inputs a GPU machine needs for `bench/gpu_retrain.sh` under .gpu/ (ignored).

    python bench/gpu_prep.py [--data ../shared/data/brain-tumor-mri]

- .gpu/data/Training: the benchmark's Training JPEGs re-packed by `jpegtran` (grey-only, else
  optimized), each checked to decode to the same pixels as the original (`load_gray`);
- .gpu/data/splits: the grouped split of seed 42 computed from the originals, so the GPU runs
  train and validate on exactly the files a CPU run would;
- .gpu/lite0_imagenet_fp16.safetensors, .gpu/lite1_imagenet_fp16.safetensors: the offline
  ImageNet backbones (PyPI packages) rounded to fp16, classifier dropped (transfer size);
- .gpu/whl: pydantic and its deps as cp312 wheels (absent on the GPU image).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from brainmri.data.folders import scan_split
from brainmri.data.images import load_gray
from brainmri.data.splits import grouped_split, write_split
from brainmri.model.backbones import create_backbone

GPU = Path(".gpu")
WHEELS = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0",
          "typing-inspection==0.4.5"]


def repack(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for opts in (["-grayscale", "-optimize"], ["-optimize"]):
        subprocess.run(["jpegtran", "-copy", "none", *opts, "-outfile", str(dst), str(src)],
                       check=True)
        if np.array_equal(load_gray(dst), load_gray(src)):
            return opts[0]
    raise SystemExit(f"{src}: no lossless re-pack keeps its pixels")


def backbone_fp16(name: str) -> None:
    """The offline package's weights as training loads them (`create_backbone`), under timm's
    key names (safetensors sorts keys, so the by-order fallback would not apply there)."""
    model, source = create_backbone(f"efficientnet_{name}")
    if not source.startswith("PyPI package"):
        raise SystemExit(f"efficientnet_{name}: weights came from {source}, not the PyPI package")
    save_file({k: v.half() if v.is_floating_point() else v
               for k, v in model.state_dict().items()},
              str(GPU / f"{name}_imagenet_fp16.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/brain-tumor-mri"))
    args = ap.parse_args()
    src = args.data / "Training"
    files = sorted(p for p in src.rglob("*.jpg"))
    with ThreadPoolExecutor(4) as ex:
        kinds = list(ex.map(lambda p: repack(p, GPU / "data/Training" / p.relative_to(src)),
                            files))
    print(f"{len(files)} files re-packed: {kinds.count('-grayscale')} grey-only, pixels equal")
    train, val, info = grouped_split(scan_split(args.data, "Training"), 0.15, 42)
    # paths are written relative to the data folder, so the list fits the re-packed copy
    write_split(GPU / "data/splits", train, val, info, args.data)
    print(f"split: {info.n_train} train / {info.n_val} val")
    for name in ("lite0", "lite1"):
        backbone_fp16(name)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux2014_x86_64", "-d", str(GPU / "whl"), *WHEELS],
                   check=True)


if __name__ == "__main__":
    main()
