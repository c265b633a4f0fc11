"""The batch-level site check (infer/site_check.py): set its share on validation, then measure.

--phase calibrate (validation images of the model's own split only):
  the guard's OOD score of every validation file on the predict path (file bytes -> load_plane
  -> auto crop -> model); their median is the reference the model file stores
  (`guard.reference_median`); then the share of each perturbed copy set (bench/robustness.py's
  perturbations, the guard's own acceptance set) above that median. The rule of
  docs/RESULTS.md §24.1 turns the largest share into SHIFT_SHARE. With --write the median is
  stored in the model file's guard metadata (weights copied bit for bit).
--phase measure:
  how often `site_shift` warns on random batches of 20, 50 and 200 files (and on the whole set)
  of: clean validation files, each perturbed validation set, external-dev (with --site, less
  the files an adapted model was adapted on), batches of 50 mixing external-dev and validation
  files in set shares, with --test the official test split (a
  test-split run: it chooses nothing), and with --raw the raw, uncropped originals of the
  validation files (the same collection seen through predict's auto crop).

    python bench/site_check.py --phase calibrate [--write] \
        --out bench/results/shipped/site_check_fit.json
    python bench/site_check.py --phase measure --test --out bench/results/shipped/site_check.json
    python bench/site_check.py --phase measure --model RUN/model.safetensors --site SITE \
        --out bench/results/adapt_variants/site_check_adapted.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import DEFAULT_DATA, provenance, scan_external, write_json  # noqa: E402
from guard_eval import Guarded  # noqa: E402
from robustness import PERTURBATIONS  # noqa: E402

from brainmri.data.folders import resolve_data_dir, scan_split  # noqa: E402
from brainmri.errors import BrainMRIError  # noqa: E402
from brainmri.infer.inputs import load_plane  # noqa: E402
from brainmri.infer.site_check import reference_median, site_shift  # noqa: E402
from brainmri.model.checkpoint import (  # noqa: E402
    add_extra_tensors,
    read_metadata,
    shipped_model_path,
)
from brainmri.train.data import model_split  # noqa: E402

BATCHES = (20, 50, 200)
DRAWS = 200
MIXTURES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def planes_of(paths: list[Path]) -> list[np.ndarray]:
    out = []
    for p in paths:
        try:
            out.append(load_plane(p.read_bytes(), p.name))
        except BrainMRIError:
            pass  # refused before the model: no score
    return out


def scores(g: Guarded, planes: list[np.ndarray]) -> np.ndarray:
    return np.asarray(g.planes(planes)["score"], dtype=np.float64)


def perturbed_scores(g: Guarded, planes: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {
        p.name: scores(g, [p.fn(x, i) for i, x in enumerate(planes)])
        for p in PERTURBATIONS
        if p.name != "clean"
    }


def warn_rates(s: np.ndarray, median: float, seed: int = 0) -> dict:
    """Share of random batches (without replacement) on which site_shift warns."""
    rng = np.random.default_rng(seed)
    out: dict = {"n": len(s), "share_above": float((s > median).mean())}
    whole = site_shift(s.tolist(), median)
    out["whole_set_warns"] = None if whole is None else whole["shifted"]
    for b in BATCHES:
        if b <= len(s):
            hits = [site_shift(rng.choice(s, b, replace=False).tolist(), median)["shifted"]
                    for _ in range(DRAWS)]  # fmt: skip
            out[f"warns_batch{b}"] = float(np.mean(hits))
    return out


def mixture_rates(
    val: np.ndarray, ext: np.ndarray, median: float, batch: int = 50, seed: int = 0
) -> dict:
    """Warn rate on batches of `batch` holding a share of external-dev images and validation
    images for the rest: how much of a batch must come from another collection to be flagged."""
    rng = np.random.default_rng(seed)
    out = {}
    for share in MIXTURES:
        k = round(share * batch)
        hits = [
            site_shift(np.concatenate([rng.choice(ext, k, replace=False),
                                       rng.choice(val, batch - k, replace=False)]).tolist(),
                       median)["shifted"]
            for _ in range(DRAWS)
        ]  # fmt: skip
        out[f"{share:.2f}"] = float(np.mean(hits))
    return out


def calibrate(g: Guarded, val_planes: list[np.ndarray]) -> dict:
    s = scores(g, val_planes)
    median = float(np.median(s))
    per = perturbed_scores(g, val_planes)
    shares = {k: float((v > median).mean()) for k, v in per.items()}
    return {"validation_n": len(s), "reference_median": median, "perturbed_share_above": shares,
            "largest_perturbed_share": max(shares.values())}  # fmt: skip


def write_median(model: Path, median: float, n: int) -> None:
    """Store the predict-path median as `guard.reference_median`; the weights stay as they are
    (`add_extra_tensors` copies them bit for bit)."""
    guard = dict(read_metadata(model)["guard"])
    guard |= {
        "reference_median": median,
        "reference_on": f"validation split, {n} images, scored on the predict path "
        "(bench/site_check.py --phase calibrate, docs/RESULTS.md §24)",
    }
    add_extra_tensors(model, {}, {"guard": guard})


def raw_originals(val: list, raw: Path) -> list[Path]:
    """The uncropped originals (brain-tumor-mri-raw/Training/<class>/, same file names) of the
    model's validation files, where the raw folder has them."""
    paths = [raw / "Training" / s.class_name / s.path.name for s in val]
    return [p for p in paths if p.is_file()]


def measure(
    g: Guarded, val_planes, model: Path, data: Path, test: bool, site: Path | None = None
) -> dict:
    median = reference_median(read_metadata(model))
    if median is None:
        raise BrainMRIError(f"{model} has no guard.reference_median: run --phase calibrate")
    res: dict = {"reference_median": median, "site_excluded": None if site is None else str(site)}
    val_s = scores(g, val_planes)
    res["validation"] = warn_rates(val_s, median)
    res["validation_perturbed"] = {
        k: warn_rates(v, median) for k, v in perturbed_scores(g, val_planes).items()
    }
    ext = scan_external(DEFAULT_DATA)
    if site is not None:  # an adapted model: only the images it was not adapted on
        seen = {f.name for f in Path(site).rglob("*") if f.is_file()}
        ext = [e for e in ext if e.path.name not in seen]
    ext_s = scores(g, planes_of([e.path for e in ext]))
    res["external_dev"] = warn_rates(ext_s, median)
    res["mixed_batches_of_50"] = mixture_rates(val_s, ext_s, median)
    if test:
        res["official_test"] = warn_rates(
            scores(g, planes_of([s.path for s in scan_split(data, "Testing")])), median
        )
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--phase", choices=["calibrate", "measure"], required=True)
    p.add_argument("--test", action="store_true", help="measure: also the official test split")
    p.add_argument("--site", type=Path, default=None,
                   help="measure an adapted model: leave out the external-dev files of its site")
    p.add_argument("--raw", type=Path, default=None,
                   help="measure: also the raw, uncropped originals of the validation files "
                   "(e.g. ../shared/data/brain-tumor-mri-raw): same collection, other framing")
    p.add_argument("--write", action="store_true",
                   help="calibrate: store the median in the model file's guard metadata")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    model = args.model or shipped_model_path()
    data = resolve_data_dir(args.data)
    g = Guarded(model)
    _, val, _ = model_split(data, read_metadata(model))
    val_planes = planes_of([s.path for s in val])
    if args.phase == "calibrate":
        res = calibrate(g, val_planes)
        if args.write:
            write_median(model, res["reference_median"], len(val_planes))
    else:
        res = measure(g, val_planes, model, data, args.test, args.site)
        if args.raw is not None:
            raw = raw_originals(val, args.raw)
            res["validation_raw_originals"] = warn_rates(
                scores(g, planes_of(raw)), res["reference_median"]
            ) | {"files": len(raw)}
    res |= {"model": str(model), "provenance": provenance()}
    write_json(args.out, res)
    print({k: v for k, v in res.items() if k != "provenance"})
    return res


if __name__ == "__main__":
    main()
