"""`brainmri evaluate`: a model file + labelled images -> metrics JSON, plots, printed report.

`--data` may be a Kaggle-layout folder (its Testing/ split is scored), a `Testing/` folder, or
any plain `<class>/` folder — also one holding only some of the classes (metrics are then over
the classes present; predictions into the absent ones count as errors and are listed).
Reports plain and TTA predictions, each on all images and on the leak-free subset (test images
with no exact or near copy in Training: from `clean`'s leak_free_test.txt, or computed on the
fly), with 95 % bootstrap intervals.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri import CLASS_NAMES
from brainmri.data.cache import cache_samples
from brainmri.data.dedupe import file_sha256
from brainmri.data.folders import Sample, class_dirs, find_split_dir, samples_in, scan_split
from brainmri.errors import BrainMRIError
from brainmri.evaluate.bootstrap import N_RESAMPLES, SEED, bootstrap_intervals
from brainmri.evaluate.metrics import compute_metrics
from brainmri.evaluate.site import site_report
from brainmri.infer.core import load_for_inference, tta_probs

RESULTS_NAME = "test_results_final.json"
PLOTS = ("confusion_matrix.png", "roc_curves.png", "reliability.png")
GALLERY = "misclassified.png"
LEAK_FREE_PREFIX = "leak_free_"


@dataclass(frozen=True)
class EvalSet:
    """The labelled images to score and where a leak check can look for Training."""

    samples: list[Sample]
    layout: str
    root: Path | None  # folder holding Training/ (and leak_free_test.txt), if any


def find_eval_set(data_dir: Path) -> EvalSet:
    """Kaggle layout (DATA/Testing/<class>/), a Testing/ folder, or a plain <class>/ folder."""
    if find_split_dir(data_dir, "Testing") is not None:
        samples = scan_split(data_dir, "Testing")
        if not samples:
            raise BrainMRIError(f"no Testing/<class>/ images under {data_dir}")
        return EvalSet(samples, "Kaggle layout: Testing/<class>/", data_dir)
    subdirs = [c.name.lower() for c in data_dir.iterdir() if c.is_dir()]
    if not any(name in CLASS_NAMES for name in subdirs):
        raise BrainMRIError(
            f"no Testing/<class>/ or <class>/ image folders under {data_dir} "
            f"(class folders: {', '.join(CLASS_NAMES)})"
        )
    samples = samples_in(class_dirs(data_dir), "Testing")
    if not samples:
        raise BrainMRIError(f"no images in the <class>/ folders under {data_dir}")
    if data_dir.name.lower() == "testing":
        return EvalSet(samples, "Testing/ folder", data_dir.parent)
    return EvalSet(samples, "plain <class>/ folder", None)


def _key(path: Path) -> str:
    """Testing/<class>/<stem>: matches a file to its cleaned copy whatever the extension."""
    return f"Testing/{path.parent.name.lower()}/{path.stem}"


def leak_free_test(
    root: Path | None, test: list[Sample], leak_free_file: Path | None = None
) -> tuple[list[int] | None, str]:
    """Indices of leak-free test samples (None: no Training to check against) and the source."""
    source = leak_free_file or (root / "leak_free_test.txt" if root is not None else None)
    if source is not None and source.is_file():
        keep = {_key(Path(line.split("\t")[0])) for line in source.read_text().splitlines() if line}
        return [i for i, s in enumerate(test) if _key(s.path) in keep], str(source)
    if leak_free_file is not None:
        raise BrainMRIError(f"leak-free list not found: {leak_free_file}")
    train = scan_split(root, "Training") if root is not None else []
    if not train:
        return None, "no Training split beside the images to check for copies"
    from brainmri.data.dedupe import leak_free_subset

    free = {s.path for s in leak_free_subset(train, test, progress=True)}
    return [i for i, s in enumerate(test) if s.path in free], "computed on the fly (exact + near)"


def output_paths(out_dir: Path) -> list[Path]:
    """Every file evaluate may write into out_dir (checked before anything is overwritten)."""
    names = [RESULTS_NAME, *PLOTS, *(LEAK_FREE_PREFIX + p for p in PLOTS), GALLERY]
    return [out_dir / n for n in names]


def refuse_overwrite(out_dir: Path, force: bool) -> None:
    existing = [p.name for p in output_paths(out_dir) if p.exists()]
    existing += [p.name for p in out_dir.glob("misclassified_*.png")]
    if existing and not force:
        raise BrainMRIError(
            f"{out_dir} already holds {', '.join(sorted(existing))}: pass --force to overwrite "
            "or choose another --out"
        )


def _provenance(model_path: Path) -> dict:
    """When, with which code and which model file the figures were made."""
    digest = file_sha256(model_path)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "evaluated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code_commit": commit,
        "model_sha256": digest,
    }


def evaluate(
    model_path: Path,
    data_dir: Path,
    out_dir: Path,
    tta: int = 5,
    batch_size: int = 64,
    device: str | None = None,
    leak_free_file: Path | None = None,
    plots: bool = True,
    force: bool = False,
    gallery: bool = True,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    site_check: bool = True,
) -> dict:
    """Score a model file on labelled images; write JSON (+ plots) into out_dir; print a report."""
    eval_set = find_eval_set(Path(data_dir))
    test = eval_set.samples
    if leak_free_file is not None and not Path(leak_free_file).is_file():
        raise BrainMRIError(f"leak-free list not found: {leak_free_file}")
    refuse_overwrite(out_dir, force)  # before the slow parts: the on-the-fly leak check, decoding
    loaded = load_for_inference(model_path, device)
    free_idx, free_source = leak_free_test(eval_set.root, test, leak_free_file)
    class_names, temperature, size = loaded.class_names, loaded.temperature, loaded.image_size

    provenance = _provenance(model_path)  # the code and model as loaded, before the long part
    images, labels_t = cache_samples(test, size, desc="decode")
    labels = labels_t.numpy()

    def run(views: int) -> tuple[list[str], torch.Tensor, float]:
        with tqdm(total=len(images), desc=f"predict ({views} view{'s' * (views > 1)})",
                  unit="img", leave=False, mininterval=1.0, disable=None) as bar:  # fmt: skip
            t0 = time.time()
            names, logits = loaded.logits(images, views, batch_size, bar)
            return names, logits, time.time() - t0

    # plain and TTA are timed as separate passes (the TTA pass recomputes view 0) so that both
    # times are what a user of either mode would see
    _, plain_logits, plain_s = run(1)
    results: dict = {
        "model": str(model_path),
        "model_info": loaded.meta["info"],
        **provenance,
        "data": str(data_dir),
        "layout": eval_set.layout,
        "class_names": class_names,
        "classes_present": [c for k, c in enumerate(class_names) if (labels == k).any()],
        "device": str(loaded.device),
        "image_size": size,
        "temperature": temperature,
        "leak_free_source": free_source,
        "n_test": len(test),
        "n_leak_free": None if free_idx is None else len(free_idx),
        "intervals": {"method": "percentile bootstrap over images (Wilson beside proportions)",
                      "n_resamples": n_resamples, "seed": seed, "level": 0.95},
        "timing": {"plain_seconds": round(plain_s, 2),
                   "plain_images_per_s": round(len(test) / plain_s, 2)},
    }  # fmt: skip
    variants = {"plain": tta_probs(plain_logits, temperature).numpy()}
    if tta > 1:
        names, tta_logits, tta_s = run(tta)
        variants["tta"] = tta_probs(tta_logits, temperature).numpy()
        results["tta_views"] = names
        results["timing"].update(
            tta_seconds=round(tta_s, 2), tta_images_per_s=round(len(test) / tta_s, 2)
        )
    free = None if free_idx is None else set(free_idx)
    for name, probs in variants.items():
        subsets = {"full": np.arange(len(test))}
        if free_idx:
            subsets["leak_free"] = np.asarray(free_idx)
        block: dict = {"leak_free": None, "intervals": {"leak_free": None}}
        for subset, idx in subsets.items():
            block[subset] = _strip(compute_metrics(probs[idx], labels[idx], class_names))
            block["intervals"][subset] = bootstrap_intervals(
                probs[idx], labels[idx], class_names, n_resamples, seed
            )
        block["errors"] = _errors(test, probs, labels, class_names, free)
        results[name] = block
    headline = "tta" if "tta" in variants else "plain"
    results["headline"] = headline
    results["site_check"] = (
        site_report(model_path, [s.path for s in test], device, batch_size) if site_check else None
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    if plots:
        _plots(results, variants[headline], labels, images, free_idx, out_dir, gallery)

    from brainmri.evaluate.report import format_report

    print(format_report(results))
    print(f"wrote {out_dir / RESULTS_NAME}" + (" and plots" if plots else ""))
    return results


def _plots(
    results: dict,
    probs: np.ndarray,
    labels: np.ndarray,
    images: torch.Tensor,
    free_idx: list[int] | None,
    out_dir: Path,
    gallery: bool,
) -> None:
    from brainmri.evaluate import plots as P

    head = results["headline"]
    views = f"TTA {len(results['tta_views'])} views" if head == "tta" else "plain"
    names = results["class_names"]
    subsets = [("", "all images", np.arange(len(labels)), results[head]["full"])]
    if free_idx and len(free_idx) < len(labels):
        subsets.append(
            (LEAK_FREE_PREFIX, "leak-free subset", np.asarray(free_idx), results[head]["leak_free"])
        )
    for prefix, what, idx, m in subsets:
        title = f"{views}, {what}"
        present = [names.index(c) for c in m["classes_present"]]
        P.plot_confusion_matrix(m["confusion_matrix"], names, out_dir / f"{prefix}{PLOTS[0]}",
                                f"Confusion matrix — {title}", rows=present)  # fmt: skip
        P.plot_roc_curves(probs[idx], labels[idx], names, out_dir / f"{prefix}{PLOTS[1]}",
                          f"ROC one-vs-rest — {title}")  # fmt: skip
        P.plot_reliability(probs[idx], labels[idx], out_dir / f"{prefix}{PLOTS[2]}",
                           title=f"Reliability — {title}")  # fmt: skip
    if gallery:
        wrong = np.flatnonzero(probs.argmax(1) != labels)
        free = set(free_idx or []) if free_idx is not None else None
        P.plot_error_gallery(
            images[wrong].numpy()[:, 0],
            [names[i] for i in labels[wrong]],
            [names[i] for i in probs[wrong].argmax(1)],
            probs[wrong].max(1),
            [Path(e["file"]).name for e in results[head]["errors"]],
            out_dir / GALLERY,
            f"Misclassified — {views} ({len(wrong)} of {len(labels)})",
            leak_free=None if free is None else [int(i) in free for i in wrong],
        )  # fmt: skip


def _strip(metrics: dict) -> dict:
    """The JSON keeps numbers; the text report is printed instead."""
    return {k: v for k, v in metrics.items() if k != "classification_report"}


def _errors(
    test: list[Sample],
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    free: set[int] | None,
) -> list:
    """Every misclassified image; leak_free is None when there was no leak check."""
    pred = probs.argmax(1)
    return [
        {
            "file": str(test[i].path),
            "true": names[labels[i]],
            "pred": names[pred[i]],
            "confidence": round(float(probs[i, pred[i]]), 4),
            "p_true": round(float(probs[i, labels[i]]), 4),
            "leak_free": None if free is None else bool(i in free),
        }
        for i in np.flatnonzero(pred != labels)
    ]
