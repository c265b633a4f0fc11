"""What `brainmri predict` does on the independent collection: the input guard on a new site.

bench/external.py measures the model's plain answers; a user meets it through `predict`, whose
input guard (infer/guard.py: clean's quarantine rules, colour / background / grain checks, the
out-of-distribution score against the model file's threshold) may refuse a file instead of
answering. This streams every external-dev image through `Classifier.stream` exactly as
`brainmri predict DIR` does (default crop `auto`, plain, ONNX Runtime on CPU) and reports:

- how many files are `ok` / `rejected` (by reason) per class and sequence;
- accuracy of the answered files, and what the model would have answered on the refused ones
  (the same images through the plain path without the guard, as bench/external.py);
- a risk-coverage curve by OOD score (accepting the lowest scores first): can the guard's
  score, at any threshold, keep the answers that are right?

It chooses nothing: the guard's threshold stays the model file's.

    python bench/external_guard.py [--model FILE] [--out bench/results/shipped/external_guard.json]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import (  # noqa: E402
    DEFAULT_DATA,
    ROOT,
    SEQUENCES,
    decode_external,
    pct,
    provenance,
    scan_external,
    write_json,
)

from brainmri import CLASS_NAMES  # noqa: E402
from brainmri.infer.core import Classifier  # noqa: E402


def score_curve(scores: np.ndarray, right: np.ndarray, points: int = 21) -> list[dict]:
    """Accuracy of the images kept when accepting the lowest OOD scores first, by coverage."""
    order = np.argsort(scores, kind="stable")
    cum = np.cumsum(right[order])
    out = []
    for cov in np.linspace(0.05, 1.0, points - 1):
        k = max(1, int(round(cov * len(order))))
        out.append({"coverage": float(k / len(order)), "accuracy": float(cum[k - 1] / k),
                    "max_score": float(scores[order[k - 1]])})  # fmt: skip
    return out


def reason_kind(reason: str | None) -> str:
    """"unlike the brain MRI … (OOD score 3 > 1)" -> "OOD score"; "x (no dark background: …)" ->
    "no dark background"; otherwise the text before any parenthesis."""
    text = reason or ""
    inner = text[text.find("(") + 1 :] if "(" in text else text
    return inner.split(":")[0].split(" > ")[0].rstrip("0123456789. ").strip() or text


def summarize(samples, recs: list[dict], plain: np.ndarray, threshold: float | None) -> dict:
    labels = np.array([s.label for s in samples])
    status = np.array([r["status"] for r in recs])
    ok = status == "ok"
    answer = np.array([CLASS_NAMES.index(r["label"]) if r["label"] else -1 for r in recs])
    plain_right = plain.argmax(1) == labels
    reasons = Counter(reason_kind(r["reason"]) for r in recs if r["status"] != "ok")
    scores = np.array([r["ood_score"] if r["ood_score"] is not None else np.nan for r in recs])
    scored = np.isfinite(scores)

    def part(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        acc = float((answer[mask & ok] == labels[mask & ok]).mean()) if (mask & ok).any() else None
        return {"n": n, "accepted": int((mask & ok).sum()),
                "accepted_share": float((mask & ok).sum() / n) if n else None,
                "accuracy_of_accepted": acc,
                "plain_accuracy_of_refused": float(plain_right[mask & ~ok].mean())
                if (mask & ~ok).any() else None}  # fmt: skip

    return {
        "n": len(samples),
        "ood_threshold": threshold,
        "all": part(np.ones(len(samples), bool)),
        "per_class": {CLASS_NAMES[c]: part(labels == c) for c in sorted(set(labels.tolist()))},
        "per_sequence": {q: part(np.array([s.sequence == q for s in samples])) for q in SEQUENCES},
        "refused_by": dict(reasons.most_common()),
        "plain_accuracy_all": float(plain_right.mean()),
        "ood_score_quantiles": {str(q): float(np.quantile(scores[scored], q))
                                for q in (0.05, 0.25, 0.5, 0.75, 0.95)},  # fmt: skip
        "curve_by_ood_score": score_curve(scores[scored], plain_right[scored].astype(float)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/shipped/external_guard.json")
    args = p.parse_args(argv)
    samples = scan_external(args.data)
    clf = Classifier(args.model)
    recs = list(clf.stream([s.path for s in samples]))
    # the same files without the guard: the plain path of bench/external.py (no crop)
    plain = clf.run(decode_external(samples, clf.image_size))["probs"]
    res = summarize(samples, recs, plain, clf.ood_threshold)
    res |= {"model_sha256": clf.sha256, "runtime": clf.runtime, "provenance": provenance()}
    write_json(args.out, res)
    a = res["all"]
    print(f"accepted {a['accepted']} of {a['n']} ({pct(a['accepted_share'])}); accuracy of "
          f"accepted {pct(a['accuracy_of_accepted'])}; refused by {res['refused_by']}")  # fmt: skip
    return res


if __name__ == "__main__":
    main()
