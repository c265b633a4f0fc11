"""The batch site check and the input guard over an evaluated folder, on `predict`'s own path.

`evaluate` scores the model on decoded, resized images; what a user of `predict` would have been
told about the same files (refused by the guard, and whether the folder as a whole looks unlike
the images the model was checked on, infer/site_check.py) needs the files read as `predict`
reads them (auto crop, guard). One extra plain pass through `Classifier.stream` gives both.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from brainmri.errors import BrainMRIError

SKIPPED = "the model file has no input-guard reference (models from `train` have none)"


def site_report(
    model_path: Path, paths: list[Path], device: str | None = None, batch_size: int = 64
) -> dict:
    """The guard's verdicts and the site check of `paths`; {"skipped": why} when the model file
    stores no reference median (no guard, e.g. a model from `train`, or one fitted before the
    site check existed): no extra pass."""
    from brainmri.infer.core import Classifier
    from brainmri.infer.site_check import MIN_IMAGES, reference_median
    from brainmri.model.checkpoint import read_metadata

    median = reference_median(read_metadata(model_path))
    if median is None:
        return {"skipped": SKIPPED}
    t0 = time.time()
    scores: list[float | None] = []
    status: Counter[str] = Counter()
    try:  # the metrics are already computed: a failure here must not lose them
        clf = Classifier(model_path, device=device, batch_size=batch_size, min_confidence=0)
        with tqdm(total=len(paths), desc="site check", unit="img", leave=False,
                  mininterval=1.0, disable=None) as bar:  # fmt: skip
            for rec in clf.stream(paths):
                scores.append(rec.get("ood_score"))
                status[rec["status"]] += 1
                bar.update()
    except (BrainMRIError, OSError, RuntimeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "reference_median": median}
    shift = clf.site_check(scores)
    return {
        "runtime": clf.runtime,
        "reference_median": median,
        "guard": {"ok": status["ok"], "rejected": status["rejected"], "error": status["error"]},
        "scored": sum(s is not None for s in scores),
        "min_images": MIN_IMAGES,
        "judged": shift is not None,
        **(shift or {}),
        "seconds": round(time.time() - t0, 2),
    }


def site_lines(site: dict | None) -> list[str]:
    """The report's lines for `site_report`'s result (none when it did not run)."""
    if site is None:
        return []
    if "skipped" in site:
        return [f"site check: skipped ({site['skipped']})"]
    if "error" in site:
        return [f"site check: not run ({site['error']})"]
    g = site["guard"]
    lines = [
        f"input guard (as predict reads these files): {g['ok']} accepted, {g['rejected']} "
        f"refused, {g['error']} unreadable"
    ]
    if not site["judged"]:
        return lines + [
            f"site check: not judged ({site['scored']} scored images; it needs "
            f"{site['min_images']})"
        ]
    verdict = (
        "SHIFTED: these images do not look like the ones the model was checked on; expect "
        "accuracy far below its benchmark figures"
        if site["shifted"]
        else "no shift flagged"
    )
    return lines + [
        f"site check: {site['share']:.0%} of {site['n']} scored images above the model's "
        f"reference median {site['reference_median']:.3f} (about half would; "
        f"p = {site['p_value']:.1g}): {verdict}"
    ]
