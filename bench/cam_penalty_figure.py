"""The four class maps `explain` draws, for models trained with different map terms
(docs/RESULTS.md §16.23-16.28), on validation images of the shipped model's split (not the
test split): one row per model and image, one column per class explained.

    python bench/cam_penalty_figure.py --models S=shipped P03=runs/cam-p03/models/best.safetensors \
        P1=runs/cam-p1/models/best.safetensors \
        [PB=runs/cam-pb/models/best.safetensors] [PC=runs/cam-pc/models/best.safetensors] \
        [--files Tr-gl_0010.jpg ...] [--out bench/results/guard_compare/cam_penalty_maps.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.data.folders import resolve_data_dir
from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.infer.core import load_for_inference
from brainmri.infer.gradcam import head_mask, model_input, overlay, plane_maps
from brainmri.model.checkpoint import read_metadata
from brainmri.model.shipped import shipped_model_path
from brainmri.train.data import model_split


def pick(val: list, names: list[str] | None) -> list:
    """The named validation files, else the first of each tumour class in file order."""
    ordered = sorted(val, key=lambda s: s.path.name)
    if names:
        found = [s for s in ordered if s.path.name in names]
        missing = set(names) - {s.path.name for s in found}
        if missing:
            raise SystemExit(f"not validation files of the model's split: {sorted(missing)}")
        return found
    return [next(s for s in ordered if s.class_name == c) for c in ("glioma", "meningioma")]


def row(lo, plane: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, float]:
    """(the 4 class overlays, probabilities, share of the predicted class's map in the head)."""
    x = model_input(plane, lo.image_size, lo.intensity, lo.channels_last)
    with torch.inference_mode():
        probs = torch.softmax(lo.model(x), 1)[0].numpy()
    maps = plane_maps(lo.model, plane, lo.image_size, [0, 1, 2, 3], lo.intensity, lo.channels_last)
    shown = np.array(resize_square(plane, lo.image_size))
    k = int(probs.argmax())
    inside = float((maps[k] * head_mask(shown)).sum() / max(float(maps[k].sum()), 1e-7))
    return [overlay(shown, m) for m in maps], probs, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True, help="NAME=FILE (or NAME=shipped)")
    ap.add_argument("--files", nargs="*", default=None, help="validation file names")
    ap.add_argument("--data", type=Path, default=None, help="benchmark folder with Training/")
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/guard_compare/cam_penalty_maps.png")
    )
    args = ap.parse_args()
    models = [m.split("=", 1) for m in args.models]
    paths = [(n, shipped_model_path() if f == "shipped" else Path(f)) for n, f in models]
    _, val, _ = model_split(resolve_data_dir(args.data), read_metadata(paths[0][1]))
    images = pick(val, args.files)
    rows = len(images) * len(paths)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for j, (name, path) in enumerate(paths):
        lo = load_for_inference(path, "cpu")
        for i, s in enumerate(images):
            overlays, probs, inside = row(lo, check_image_bytes(s.path.read_bytes()))
            r = i * len(paths) + j
            for c, ax in enumerate(axes[r]):
                ax.imshow(overlays[c])
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{CLASS_NAMES[c]} p={probs[c]:.2f}", fontsize=8)
            axes[r][0].set_ylabel(
                f"{name}: {s.path.name}\n({s.class_name}; {inside:.2f} in head)", fontsize=8
            )
    fig.suptitle("Grad-CAM as `explain` draws it, each class explained (validation images)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
