"""A model on the independent collection ../shared/data/external-dev, broken down.

external-dev holds glioma / meningioma / notumor slices (no pituitary) named
``<Type>_<Seq>__<original>.jpg`` (Type: Astrocitoma, Glioblastoma, Oligodendroglioma,
Meningioma, NORMAL; Seq: T1, T1C+, T2). Every image goes down the plain prediction path of the
model file (decode to one luminance plane, resize whole to the model's size -- no brain crop,
no TTA unless asked -- then the model's intensity mode and fitted temperature), and the result
is broken down by class, MRI sequence and tumour type:

- accuracy, and the confusion of the present classes against *all* the model's classes
  (a prediction into pituitary is an error and is shown);
- ECE (15 bins, top-1 calibrated probability; pituitary answers count as wrong) and the same
  with probabilities renormalized over the classes present;
- median top-1 probability of right and of wrong answers;
- a risk-coverage curve: accuracy of the images accepted vs fraction accepted, accepting the
  images whose top-1 calibrated probability is at least a threshold.

    python bench/external.py [--model src/brainmri/weights/lite0_cpu.safetensors]
        [--data ../shared/data/external-dev] [--out bench/results/external] [--name shipped]

Writes OUT/NAME.json (breakdown + curve + machine, date, command) and
OUT/NAME_risk_coverage.png. The functions here (scan, breakdown, curve, plot) are reused by
bench/ceiling.py and bench/domain_proxy.py so that every figure is computed the same way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.data.cache import decode_images
from brainmri.errors import BrainMRIError
from brainmri.evaluate.metrics import expected_calibration_error

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "external-dev"
DEFAULT_OUT = ROOT / "bench" / "results" / "external"
SEQUENCES = ("T1C+", "T1", "T2")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class ExternalSample:
    path: Path
    label: int  # index into CLASS_NAMES
    tumour: str  # Astrocitoma, Glioblastoma, Oligodendroglioma, Meningioma, NORMAL
    sequence: str  # T1, T1C+, T2


def parse_name(name: str) -> tuple[str, str]:
    """``Astrocitoma_T1C+__x.jpg`` -> ("Astrocitoma", "T1C+")."""
    head, sep, _ = name.partition("__")
    tumour, _, seq = head.rpartition("_")
    if not sep or not tumour or seq not in SEQUENCES:
        raise BrainMRIError(f"external-dev file name not <Type>_<Seq>__<original>: {name}")
    return tumour.strip("_"), seq


def scan_external(root: str | Path = DEFAULT_DATA) -> list[ExternalSample]:
    """Every image under root/<class>/, sorted by class then name."""
    root = Path(root)
    if not root.is_dir():
        raise BrainMRIError(f"external data folder not found: {root}")
    out: list[ExternalSample] = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        if cls.name not in CLASS_NAMES:
            raise BrainMRIError(f"unexpected class folder {cls} (expected {CLASS_NAMES})")
        for f in sorted(cls.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                tumour, seq = parse_name(f.name)
                out.append(ExternalSample(f, CLASS_NAMES.index(cls.name), tumour, seq))
    if not out:
        raise BrainMRIError(f"no images under {root}/<class>/")
    return out


def decode_external(samples: list[ExternalSample], size: int) -> torch.Tensor:
    """uint8 (N, 1, size, size): whole image, luminance, resized (no crop)."""
    return decode_images([s.path for s in samples], size, desc="external-dev")


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def _acc(correct: np.ndarray, mask: np.ndarray) -> dict:
    n = int(mask.sum())
    return {"n": n, "accuracy": float(correct[mask].mean()) if n else None}


def risk_coverage(probs: np.ndarray, labels: np.ndarray, points: int = 101) -> dict:
    """Accuracy of the accepted images vs fraction accepted, by top-1 probability threshold.

    Images are accepted most-confident first; `curve` samples coverage at `points` even steps
    (with the threshold that gives it), `at_threshold` lists accepted fraction / accuracy for
    fixed thresholds, `aurc` is the mean risk (1 - accuracy) over all coverages.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    cum = np.cumsum(correct[order])
    n = len(conf)
    k = np.arange(1, n + 1)
    acc_at_k = cum / k
    curve = []
    for c in np.linspace(1.0 / n, 1.0, points):
        i = max(1, int(round(c * n))) - 1
        curve.append(
            {
                "coverage": (i + 1) / n,
                "accuracy": float(acc_at_k[i]),
                "threshold": float(conf[order][i]),
            }
        )
    at = []
    for t in THRESHOLDS:
        m = conf >= t
        at.append(
            {
                "threshold": t,
                "coverage": float(m.mean()),
                "accuracy": float(correct[m].mean()) if m.any() else None,
            }
        )
    return {"curve": curve, "at_threshold": at, "aurc": float(np.mean(1.0 - acc_at_k))}


def breakdown(
    probs: np.ndarray, labels: np.ndarray, samples: list[ExternalSample], class_names: list[str]
) -> dict:
    """Every figure of one model's predictions on external-dev (probs over class_names)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    correct = pred == labels
    conf = probs.max(axis=1)
    seq = np.array([s.sequence for s in samples])
    tum = np.array([s.tumour for s in samples])
    present = sorted(set(labels.tolist()))
    res: dict = {
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "errors": int((~correct).sum()),
    }
    res["per_class"] = {
        class_names[c]: {
            **_acc(correct, labels == c),
            "predicted": dict(Counter(class_names[p] for p in pred[labels == c])),
        }
        for c in present
    }
    res["per_sequence"] = {q: _acc(correct, seq == q) for q in SEQUENCES if (seq == q).any()}
    res["per_class_sequence"] = {
        class_names[c]: {
            q: _acc(correct, (labels == c) & (seq == q))
            for q in SEQUENCES
            if ((labels == c) & (seq == q)).any()
        }
        for c in present
    }
    res["per_tumour"] = {
        t: {
            **_acc(correct, tum == t),
            "by_sequence": {
                q: _acc(correct, (tum == t) & (seq == q))
                for q in SEQUENCES
                if ((tum == t) & (seq == q)).any()
            },
        }
        for t in sorted(set(tum.tolist()))
    }
    res["confusion"] = {
        "rows": [class_names[c] for c in present],
        "cols": list(class_names),
        "counts": [
            [int(((labels == c) & (pred == p)).sum()) for p in range(len(class_names))]
            for c in present
        ],
    }
    res["ece"] = expected_calibration_error(probs, labels)
    sub = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    remap = {c: i for i, c in enumerate(present)}
    res["ece_present_renormalized"] = expected_calibration_error(
        sub, np.array([remap[int(x)] for x in labels])
    )
    res["median_confidence"] = {
        "right": float(np.median(conf[correct])) if correct.any() else None,
        "wrong": float(np.median(conf[~correct])) if (~correct).any() else None,
    }
    res["risk_coverage"] = risk_coverage(probs, labels)
    return res


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def format_breakdown(res: dict, title: str) -> str:
    """A few text lines: overall, per class, per sequence, per tumour, calibration."""
    lines = [
        f"{title}: {pct(res['accuracy'])} % of {res['n']} ({res['errors']} errors), "
        f"ECE {pct(res['ece'])} %, median p right {res['median_confidence']['right']:.3f} "
        f"/ wrong {res['median_confidence']['wrong'] or float('nan'):.3f}"
    ]
    cls = ", ".join(f"{k} {pct(v['accuracy'])}" for k, v in res["per_class"].items())
    seq = ", ".join(f"{k} {pct(v['accuracy'])}" for k, v in res["per_sequence"].items())
    lines += [f"  class: {cls}", f"  sequence: {seq}"]
    for k, v in res["per_tumour"].items():
        by = ", ".join(f"{q} {pct(a['accuracy'])}" for q, a in v["by_sequence"].items())
        lines.append(f"  {k} ({v['n']}): {pct(v['accuracy'])}  [{by}]")
    conf = res["confusion"]
    lines.append("  confusion (rows true, cols predicted " + "/".join(conf["cols"]) + "):")
    for name, row in zip(conf["rows"], conf["counts"], strict=True):
        lines.append(f"    {name:>10}: {row}")
    rc = ", ".join(
        f"p>={a['threshold']}: {pct(a['coverage'])} % kept at {pct(a['accuracy'])} %"
        for a in res["risk_coverage"]["at_threshold"]
    )
    lines.append(f"  risk-coverage: {rc}")
    return "\n".join(lines)


def plot_risk_coverage(curves: dict[str, dict], path: Path, title: str) -> None:
    """One PNG: accuracy of accepted images vs coverage, one line per named result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110)
    for name, rc in curves.items():
        cov = [p["coverage"] for p in rc["curve"]]
        acc = [100 * p["accuracy"] for p in rc["curve"]]
        ax.plot(cov, acc, label=name, lw=1.6)
    ax.set_xlabel("fraction of images accepted (most confident first)")
    ax.set_ylabel("accuracy of accepted images (%)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def provenance() -> dict:
    """Machine, date, commit and command line of this run."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def mcnemar_p(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired right/wrong answers."""
    from scipy.stats import binomtest

    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5).pvalue)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------


def evaluate_model(model_path: Path, samples: list[ExternalSample], tta: int = 1) -> dict:
    """Breakdown of one model file (plain path of the inference core) on the samples."""
    from brainmri.infer.core import load_for_inference

    loaded = load_for_inference(model_path, "cpu")
    t0 = time.perf_counter()
    images = decode_external(samples, loaded.image_size)
    t1 = time.perf_counter()
    probs = loaded.probs(images, tta=tta).numpy()
    t2 = time.perf_counter()
    labels = np.array([s.label for s in samples])
    res = breakdown(probs, labels, samples, loaded.class_names)
    res["right"] = (probs.argmax(1) == labels).astype(int).tolist()  # per file, scan order
    res["model"] = str(model_path)
    res["tta"] = tta
    res["image_size"] = loaded.image_size
    res["seconds"] = {"decode": round(t1 - t0, 1), "predict": round(t2 - t1, 1)}
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", type=Path, default=ROOT / "src/brainmri/weights/lite0_cpu.safetensors"
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--name", default="shipped")
    p.add_argument("--tta", type=int, default=1)
    p.add_argument(
        "--against",
        type=Path,
        default=None,
        help="an earlier result file of this script: McNemar's exact test on the paired answers",
    )
    args = p.parse_args(argv)
    samples = scan_external(args.data)
    res = evaluate_model(args.model, samples, args.tta)
    if args.against is not None:
        other = json.loads(args.against.read_text())
        res["against"] = {
            "file": str(args.against),
            "accuracy": other["accuracy"],
            "mcnemar_p": mcnemar_p(np.array(other["right"], bool), np.array(res["right"], bool)),
        }
        print(
            f"against {args.against}: {pct(other['accuracy'])} %, McNemar p "
            f"{res['against']['mcnemar_p']:.3g}"
        )
    res["provenance"] = provenance()
    write_json(args.out / f"{args.name}.json", res)
    plot_risk_coverage(
        {args.name: res["risk_coverage"]},
        args.out / f"{args.name}_risk_coverage.png",
        f"external-dev, {args.name} ({pct(res['accuracy'])} %)",
    )
    print(format_breakdown(res, f"{args.name} on external-dev"))
    return res


if __name__ == "__main__":
    main()
