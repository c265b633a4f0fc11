"""Labelled and unlabelled site images together: semi-supervised heads on frozen features.

docs/RESULTS.md §26. For each k and draw of bench/adapt_curve.py's site draws (k labelled images
per class by whole scan groups): the rest (groups not drawn) is split into two halves by scan
group (seeded); each half in turn is the unlabelled pool and the other half is answered, so every
rest image is answered by a head that never saw it. Heads, over the shipped model's pooled
features (as bench/probe_curve.py): S0 the labelled probe alone (C 0.01); ST scikit-learn's
SelfTrainingClassifier around it (threshold 0.75); LS LabelSpreading (kNN kernel, 10 neighbours,
alpha 0.2) on standardized features reduced to 50 principal components. Also: what that space
groups together (each image's nearest neighbours from other scan groups: same class? same
sequence?). External-dev only.

    python bench/semi_probe.py [--ks 5,10,25,50] [--draws 0,1,2] \
        [--out bench/results/external/semi_probe.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adabn import halves  # noqa: E402
from adapt_curve import SHIPPED, draw_site  # noqa: E402
from ceiling import model_features, scan_groups  # noqa: E402
from external import DEFAULT_DATA, ROOT, mcnemar_p, provenance, scan_external, write_json  # noqa: E402

from brainmri.train.probe_head import fit_logistic, logistic_pipeline  # noqa: E402

C = 0.01
SELF_TRAINING_THRESHOLD = 0.75
NEIGHBOURS, ALPHA, COMPONENTS = 10, 0.2, 50


def s0(x_site, y_site, x_pool, x_answer) -> np.ndarray:
    return fit_logistic(x_site, y_site, None, C).predict(x_answer)


def self_training(x_site, y_site, x_pool, x_answer) -> np.ndarray:
    from sklearn.semi_supervised import SelfTrainingClassifier

    model = SelfTrainingClassifier(logistic_pipeline(C), threshold=SELF_TRAINING_THRESHOLD)
    x = np.concatenate([x_site, x_pool])
    y = np.concatenate([y_site, -np.ones(len(x_pool), int)])
    return model.fit(x, y).predict(x_answer)


def reducer():
    """LS's space: standardized features, COMPONENTS principal components (unfitted)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(COMPONENTS, random_state=0))


def label_spreading(x_site, y_site, x_pool, x_answer) -> np.ndarray:
    from sklearn.semi_supervised import LabelSpreading

    x = np.concatenate([x_site, x_pool])
    reduce = reducer().fit(x)
    y = np.concatenate([y_site, -np.ones(len(x_pool), int)])
    model = LabelSpreading(kernel="knn", n_neighbors=NEIGHBOURS, alpha=ALPHA, max_iter=100)
    return model.fit(reduce.transform(x), y).predict(reduce.transform(x_answer))


HEADS = {"S0": s0, "ST": self_training, "LS": label_spreading}


def neighbour_agreement(feats, labels, sequences, groups) -> dict:
    """What the feature space groups together: of each image's NEIGHBOURS nearest images from
    other scan groups (LS's space: standardized, 50 components), the share of the same class and
    of the same MRI sequence, beside what random neighbours would share."""
    from sklearn.neighbors import NearestNeighbors

    z = reducer().fit_transform(feats)
    _, idx = NearestNeighbors(n_neighbors=60).fit(z).kneighbors(z)
    same_class, same_seq = [], []
    for i, row in enumerate(idx):
        nn = [j for j in row[1:] if groups[j] != groups[i]][:NEIGHBOURS]
        same_class.append(np.mean(labels[nn] == labels[i]))
        same_seq.append(np.mean(sequences[nn] == sequences[i]))

    def chance(v: np.ndarray) -> float:
        return float(sum((np.mean(v == u)) ** 2 for u in np.unique(v)))

    return {
        "same_class": float(np.mean(same_class)), "same_class_chance": chance(labels),
        "same_sequence": float(np.mean(same_seq)), "same_sequence_chance": chance(sequences),
    }  # fmt: skip


def answers(feats, labels, site, rest, half) -> dict[str, np.ndarray]:
    """Each head's answer for every rest image, from the pool of the other half."""
    out = {name: np.empty(len(rest), int) for name in HEADS}
    for h in (0, 1):
        answer, pool = rest[half[rest] == h], rest[half[rest] != h]
        where = half[rest] == h
        for name, head in HEADS.items():
            out[name][where] = head(feats[site], labels[site], feats[pool], feats[answer])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--ks", default="5,10,25,50")
    p.add_argument("--draws", default="0,1,2")
    p.add_argument("--seed", type=int, default=0, help="the halves of the rest")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/external/semi_probe.json")
    args = p.parse_args(argv)
    t0 = time.time()
    samples = scan_external(args.data)
    labels = np.array([s.label for s in samples])
    groups = scan_groups([s.path for s in samples])
    half = halves(groups, args.seed)
    feats = model_features(args.model, samples)
    neighbours = neighbour_agreement(feats, labels, np.array([s.sequence for s in samples]), groups)
    print("neighbours:", neighbours, flush=True)
    runs, right = [], {}
    for k in (int(v) for v in args.ks.split(",")):
        for draw in (int(v) for v in args.draws.split(",")):
            site, rest = draw_site(labels, groups, k, draw)
            got = answers(feats, labels, site, rest, half)
            row = {"k": k, "draw": draw, "site_n": len(site), "rest_n": len(rest)}
            for name, a in got.items():
                ok = a == labels[rest]
                right.setdefault((k, name), []).append(ok)
                row[name] = float(ok.mean())
            runs.append(row)
            print(f"k={k:>2} draw {draw}: " + ", ".join(f"{n} {100 * row[n]:.1f} %" for n in HEADS),
                  flush=True)  # fmt: skip
    pooled = {}
    for k in sorted({r["k"] for r in runs}):
        ref = np.concatenate(right[(k, "S0")])
        pooled[k] = {
            name: {
                "accuracy": float(np.concatenate(right[(k, name)]).mean()),
                "n": int(len(ref)),
                "mcnemar_p_vs_S0": None
                if name == "S0"
                else mcnemar_p(ref, np.concatenate(right[(k, name)])),
            }
            for name in HEADS
        }
    report = {
        "settings": {"C": C, "self_training_threshold": SELF_TRAINING_THRESHOLD,
                     "neighbours": NEIGHBOURS, "alpha": ALPHA, "components": COMPONENTS,
                     "halves_seed": args.seed},  # fmt: skip
        "neighbours": neighbours,
        "runs": runs,
        "pooled_by_k": pooled,
        "seconds": round(time.time() - t0, 1),
        "provenance": provenance(),
    }
    write_json(args.out, report)
    for k, v in pooled.items():
        print(f"k={k} pooled:", {n: round(100 * r["accuracy"], 1) for n, r in v.items()},
              {n: r["mcnemar_p_vs_S0"] for n, r in v.items() if n != "S0"})  # fmt: skip
    return report


if __name__ == "__main__":
    main()
