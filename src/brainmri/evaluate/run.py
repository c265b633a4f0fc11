"""`brainmri evaluate`: a model file + the Testing split -> metrics JSON, plots, printed report.

Reports plain and TTA predictions, each on the full official split and on its leak-free subset
(test images with no exact or near copy in Training: from `clean`'s leak_free_test.txt, or
computed on the fly).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri.data.cache import cache_samples
from brainmri.data.folders import Sample, scan_split
from brainmri.errors import BrainMRIError
from brainmri.evaluate.metrics import compute_metrics, format_metrics_table
from brainmri.infer.core import load_for_inference, tta_probs

RESULTS_NAME = "test_results_final.json"


def _key(path: Path) -> str:
    """Testing/<class>/<stem>: matches a file to its cleaned copy whatever the extension."""
    return f"Testing/{path.parent.name.lower()}/{path.stem}"


def leak_free_test(
    data_dir: Path, test: list[Sample], leak_free_file: Path | None = None
) -> tuple[list[int], str]:
    """Indices of leak-free test samples, and where that list came from."""
    source = leak_free_file or data_dir / "leak_free_test.txt"
    if source.is_file():
        keep = {_key(Path(line.split("\t")[0])) for line in source.read_text().splitlines() if line}
        return [i for i, s in enumerate(test) if _key(s.path) in keep], str(source)
    if leak_free_file is not None:
        raise BrainMRIError(f"leak-free list not found: {leak_free_file}")
    from brainmri.data.dedupe import leak_free_subset

    train = scan_split(data_dir, "Training")
    if not train:
        return list(range(len(test))), "no Training split: every test image counted leak-free"
    free = {s.path for s in leak_free_subset(train, test, progress=True)}
    return [i for i, s in enumerate(test) if s.path in free], "computed on the fly (exact + near)"


def evaluate(
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    tta: int = 5,
    batch_size: int = 64,
    device: str | None = None,
    leak_free_file: Path | None = None,
    plots: bool = True,
) -> dict:
    loaded = load_for_inference(model_path, device)
    class_names, temperature, size = loaded.class_names, loaded.temperature, loaded.image_size

    test = scan_split(data_dir, "Testing")
    if not test:
        raise BrainMRIError(f"no Testing/<class>/ images under {data_dir}")
    images, labels_t = cache_samples(test, size, desc="decode test")
    labels = labels_t.numpy()
    free_idx, free_source = leak_free_test(data_dir, test, leak_free_file)

    def run(views: int) -> tuple[list[str], torch.Tensor, float]:
        with tqdm(
            total=len(images),
            desc=f"predict ({views} view{'s' * (views > 1)})",
            unit="img",
            leave=False,
            mininterval=1.0,
        ) as bar:
            t0 = time.time()
            names, logits = loaded.logits(images, views, batch_size, bar)
            return names, logits, time.time() - t0

    # plain and TTA are timed as separate passes (the TTA pass recomputes view 0) so that both
    # times are what a user of either mode would see
    _, plain_logits, plain_s = run(1)
    results: dict = {
        "model": str(model_path),
        "model_info": loaded.meta["info"],
        "data": str(data_dir),
        "device": str(loaded.device),
        "image_size": size,
        "temperature": temperature,
        "leak_free_source": free_source,
        "n_test": len(test),
        "n_leak_free": len(free_idx),
        "timing": {
            "plain_seconds": round(plain_s, 2),
            "plain_images_per_s": round(len(test) / plain_s, 2),
        },
    }
    variants = {"plain": tta_probs(plain_logits, temperature).numpy()}
    if tta > 1:
        names, tta_logits, tta_s = run(tta)
        variants["tta"] = tta_probs(tta_logits, temperature).numpy()
        results["tta_views"] = names
        results["timing"].update(
            tta_seconds=round(tta_s, 2), tta_images_per_s=round(len(test) / tta_s, 2)
        )
    for name, probs in variants.items():
        results[name] = {
            "full": _strip(compute_metrics(probs, labels, class_names)),
            "leak_free": _strip(compute_metrics(probs[free_idx], labels[free_idx], class_names))
            if free_idx
            else None,
            "errors": _errors(test, probs, labels, class_names),
        }
    headline = "tta" if "tta" in variants else "plain"
    results["headline"] = headline

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    if plots:
        from brainmri.evaluate import plots as P

        probs = variants[headline]
        P.plot_confusion_matrix(
            results[headline]["full"]["confusion_matrix"],
            class_names,
            out_dir / "confusion_matrix.png",
            f"Confusion matrix ({headline}, n={len(test)})",
        )
        P.plot_roc_curves(probs, labels, class_names, out_dir / "roc_curves.png")
        P.plot_reliability(probs, labels, out_dir / "reliability.png")

    print(compute_metrics(variants[headline], labels, class_names)["classification_report"])
    for name in variants:
        print(
            format_metrics_table(
                results[name]["full"], f"{name}: official test split (n={len(test)})"
            )
        )
        if results[name]["leak_free"]:
            print(
                format_metrics_table(
                    results[name]["leak_free"], f"{name}: leak-free subset (n={len(free_idx)})"
                )
            )
    print(f"wrote {out_dir / RESULTS_NAME}")
    return results


def _strip(metrics: dict) -> dict:
    """The JSON keeps numbers; the text report is printed instead."""
    return {k: v for k, v in metrics.items() if k != "classification_report"}


def _errors(test: list[Sample], probs: np.ndarray, labels: np.ndarray, names: list[str]) -> list:
    pred = probs.argmax(1)
    return [
        {
            "file": str(test[i].path),
            "true": names[labels[i]],
            "pred": names[pred[i]],
            "confidence": round(float(probs[i, pred[i]]), 4),
        }
        for i in np.flatnonzero(pred != labels)
    ]
