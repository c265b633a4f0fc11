"""Choose the input guard's level by docs/RESULTS.md §16.10's rule and, with --write, store it.

The shipped guard's own score (statistics as stored in the model file) on the validation split,
on its perturbed copies (bench/robustness.py's perturbations) and on the development OOD set
(bench/ood_dev.py), computed as bench/fit_guard.py computes the validation scores. For each k
(validation scores left above the threshold) it reports the threshold, the validation and
perturbed acceptance and the development OOD items refused. The rule: start at `--k`; the level
passes when every development item refused at the shipped k = 4 stays refused and the perturbed
copies are accepted at >= 98.5 % overall and >= 95 % per perturbation; otherwise k rises by one,
up to 4. The script checks that the stored threshold is k = 4's (the fit's level) or the level
the rule chooses (once written: a rerun reproduces the choice). The test split and the reported
OOD set are not read here.

    python bench/guard_level.py [--model M] [--data DIR] [--k 1] [--write] \
        [--out bench/results/shipped/guard_level.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from fit_guard import weights_digest
from guard_score_compare import dev_planes, perturbed_val
from robustness import model_and_split, model_data_args, report_head, write_report

from brainmri.data.cache import cache_samples
from brainmri.infer.guard import guard_features, load_guard
from brainmri.infer.ood_reason import ood_threshold
from brainmri.model.checkpoint import add_extra_tensors, read_metadata

SHIPPED_K = 4
PERTURBED_BAR, PER_KIND_BAR = 0.985, 0.95


def scores_of(loaded, scorer, planes: torch.Tensor) -> np.ndarray:
    feats, _ = guard_features(
        loaded.model, planes, loaded.intensity, loaded.channels_last, source=scorer.source
    )
    with torch.inference_mode():
        return scorer(feats).numpy()


def threshold_leaving(val: np.ndarray, k: int) -> float:
    """The validation score with exactly k scores above it (ties aside)."""
    return float(np.sort(val)[len(val) - 1 - k])


def level(k: int, sc: dict, passes: dict[str, np.ndarray], dev_names: list[str]) -> dict:
    t = threshold_leaving(sc["val"], k)
    pert = {n: float(((sc[f"pert:{n}"] <= t) & ok).mean()) for n, ok in passes.items()}
    return {
        "k": k,
        "threshold": t,
        "val_accepted": round(float((sc["val"] <= t).mean()), 5),
        "perturbed_accepted": round(float(np.mean(list(pert.values()))), 5),
        "perturbed_by_kind": {n: round(v, 4) for n, v in pert.items()},
        "dev_refused_by_score": [n for n, s in zip(dev_names, sc["dev"], strict=True) if s > t],
        "dev_score_over_threshold": {
            n: round(float(s / t), 3) for n, s in zip(dev_names, sc["dev"], strict=True)
        },
    }


def passes_rule(row: dict, shipped: dict) -> bool:
    kept = set(shipped["dev_refused_by_score"]) <= set(row["dev_refused_by_score"])
    worst = min(row["perturbed_by_kind"].values())
    return kept and row["perturbed_accepted"] >= PERTURBED_BAR and worst >= PER_KIND_BAR


def stored_level(stored: float, shipped: dict, chosen: dict) -> str:
    """Which level the model file holds: the fit's (k = 4, before --write) or the one the rule
    chooses now (after --write; a rerun then reproduces the choice). Anything else stops."""
    if np.isclose(chosen["threshold"], stored, rtol=0, atol=1e-6):
        return "the rule's level"
    if np.isclose(shipped["threshold"], stored, rtol=0, atol=1e-6):
        return "the fit's level"
    raise SystemExit(
        f"the file holds {stored}: neither the fit's level (k={SHIPPED_K}, "
        f"{shipped['threshold']}) nor the rule's (k={chosen['k']}, {chosen['threshold']})"
    )


def write_level(path: Path, row: dict, n_val: int) -> dict:
    """Store the chosen threshold in the model file's guard metadata; weights checked."""
    meta = read_metadata(path)
    guard = dict(meta["guard"])
    guard |= {
        "ood_threshold": row["threshold"],
        "threshold_on": f"validation split, {n_val} images, {row['k']} left above "
        f"({row['val_accepted']:.2%} accepted; docs/RESULTS.md §16.10)",
        "val_accept_rate": row["val_accepted"],
    }
    before = weights_digest(path)
    add_extra_tensors(path, {}, {"guard": guard})
    after = weights_digest(path)
    if before != after:
        raise SystemExit(f"weights changed while writing the guard's level: {path}")
    return {"weights_sha256": after, "guard": guard}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--k", type=int, default=1, help="validation scores left above (rule start)")
    ap.add_argument("--write", action="store_true", help="store the chosen threshold")
    ap.add_argument("--out", type=Path, default=Path("bench/results/shipped/guard_level.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    path, loaded, _, val, split = model_and_split(args)
    scorer, stored = load_guard(path)
    if scorer is None:
        raise SystemExit(f"{path} holds no guard statistics")
    size = loaded.image_size
    va_x, _ = cache_samples(val, size, "val")
    recs, dev_x = dev_planes(size)
    pert_x, passes = perturbed_val(val, size)
    sc = {"val": scores_of(loaded, scorer, va_x), "dev": scores_of(loaded, scorer, dev_x)}
    sc |= {f"pert:{n}": scores_of(loaded, scorer, x) for n, x in pert_x.items()}
    dev_names = [r["name"] for r in recs if r["rule"] is None]
    rows = [level(k, sc, passes, dev_names) for k in range(0, 9)]
    shipped = rows[SHIPPED_K]
    chosen = next((r for r in rows[args.k : SHIPPED_K] if passes_rule(r, shipped)), shipped)
    stored_is = stored_level(stored, shipped, chosen)
    report = {
        **report_head("guard_level", __file__, argv, loaded.device),
        "model": str(path),
        "split": split | {"val": len(val)},
        "stored_threshold": stored,
        "stored_is": stored_is,
        "dev_items": len(recs),
        "dev_refused_by_rules": [r["name"] for r in recs if r["rule"]],
        "levels": rows,
        "chosen_k": chosen["k"],
        "chosen_threshold": chosen["threshold"],
    }
    if args.write and chosen["k"] != SHIPPED_K and stored_is != "the rule's level":
        report["written"] = write_level(path, chosen, len(val))
        if ood_threshold(read_metadata(path)) != chosen["threshold"]:
            raise SystemExit("the written threshold does not read back")
    report["seconds"] = round(time.time() - t0, 1)
    write_report(args.out, report)
    for r in rows:
        worst = min(r["perturbed_by_kind"].values())
        print(
            f"k={r['k']} t={r['threshold']:.4f} val {r['val_accepted']:.4f} perturbed "
            f"{r['perturbed_accepted']:.4f} (worst {worst:.4f}) dev refused by score "
            f"{len(r['dev_refused_by_score'])} of {len(dev_names)}"
        )
    print(f"chosen k={chosen['k']} threshold {chosen['threshold']:.4f}; the file holds {stored_is}")
    return report


if __name__ == "__main__":
    main()
