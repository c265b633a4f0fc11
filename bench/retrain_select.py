"""Apply the selection rule of docs/RESULTS.md §15.1 to the models of `bench/gpu_retrain.sh`.

    python bench/retrain_select.py --runs runs/gpu15 [--out bench/results/retrain]

Every model (and the two 2-seed ensembles the rule names: logits averaged, as
`EnsembleClassifier` does) is scored on this machine the same way: the 816 validation files of
the grouped split of seed 42 (plain view; a softmax temperature fitted there; accuracy and
log loss), and external-dev (plain: whole image resized, no crop; `bench/external.py`'s
breakdown: overall, class, sequence, ECE). McNemar's exact test compares paired external-dev
answers. Then the rule's three steps are applied and their outcome written with the figures
to OUT/selection.json. The official test split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

from brainmri import CLASS_NAMES
from brainmri.config import recipe_from_dict
from brainmri.data.cache import cache_samples
from brainmri.data.folders import read_file_list
from brainmri.model.checkpoint import load_model, preprocessing_of
from brainmri.train.epoch import view_logits
from brainmri.train.loss import fit_temperature

sys.path.insert(0, str(Path(__file__).parent))
from external import breakdown, decode_external, provenance, scan_external, write_json  # noqa: E402

RUNS = ("a42", "a43", "b42", "b43", "l1", "s42", "s43")
PAIRS = {"S2": ("s42", "s43"), "A2(a)": ("a42", "a43"), "A2(b)": ("b42", "b43")}
DATA = Path("../shared/data/brain-tumor-mri")


def logits_of(
    model: torch.nn.Module, meta: dict, path: Path, val_x: dict, ext_x: dict, ext
) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation logits, external-dev logits) of one loaded model file, raw (no temperature)."""
    recipe = recipe_from_dict(meta["recipe"], str(path))
    size = recipe.data.image_size
    mean, std = preprocessing_of(meta)
    if size not in ext_x:
        ext_x[size] = decode_external(ext, size)
    dev = torch.device("cpu")
    if recipe.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return (
        view_logits(model, val_x[size], recipe, dev, mean, std)[0],
        view_logits(model, ext_x[size], recipe, dev, mean, std)[0],
    )


def score(val_logits, y_val, ext_logits, ext_labels, ext) -> dict:
    t = fit_temperature(val_logits, y_val)
    val_probs = F.softmax(val_logits / t, 1)
    probs = F.softmax(ext_logits / t, 1).numpy()
    res = breakdown(probs, ext_labels, ext, list(CLASS_NAMES))
    return {
        "temperature": round(t, 4),
        "val_acc": round(float((val_logits.argmax(1) == y_val).float().mean()), 5),
        "val_errors": int((val_logits.argmax(1) != y_val).sum()),
        "val_log_loss": round(float(F.nll_loss(val_probs.clamp_min(1e-12).log(), y_val)), 5),
        "external": {k: v for k, v in res.items() if k != "risk_coverage"},
        "_right": probs.argmax(1) == ext_labels,
    }


def mcnemar(r1: np.ndarray, r2: np.ndarray) -> dict:
    """Exact McNemar: (1 right, 2 wrong) vs (1 wrong, 2 right), two-sided."""
    b, c = int((r1 & ~r2).sum()), int((~r1 & r2).sum())
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    return {"only_first_right": b, "only_second_right": c, "p": float(p)}


def gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOP per image (torch's FLOP counter, one multiply-add = 2 FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() / 1e9


def apply_rule(s: dict, cost: dict) -> dict:
    """The three steps of §15.1, on the scored runs `s` (name -> score)."""
    acc = {k: v["val_acc"] for k, v in s.items()}
    ext = {k: v["external"]["accuracy"] for k, v in s.items()}
    out: dict = {"augmentation": {}, "capacity": {}}
    b_wins = True
    for seed in ("42", "43"):
        a, b = f"a{seed}", f"b{seed}"
        test = mcnemar(s[b]["_right"], s[a]["_right"])
        ok = acc[b] >= acc[a] - 0.005 and ext[b] > ext[a] and test["p"] < 0.05
        out["augmentation"][seed] = {"val": [acc[a], acc[b]], "external": [ext[a], ext[b]],
                                     "mcnemar_b_vs_a": test, "passes": ok}
        b_wins &= ok
    out["augmentation"]["switched_on"] = b_wins
    mean_a = (acc["a42"] + acc["a43"]) / 2
    tests = {a: mcnemar(s["l1"]["_right"], s[a]["_right"]) for a in ("a42", "a43")}
    by_ext = all(ext["l1"] > ext[a] and t["p"] < 0.05 for a, t in tests.items())
    adopt = acc["l1"] >= mean_a + 0.005 or (by_ext and acc["l1"] >= mean_a - 0.005)
    out["capacity"] = {"l1_val": acc["l1"], "a_mean_val": mean_a, "mcnemar_l1_vs_a": tests,
                       "adopted": adopt}
    aug = "b" if b_wins else "a"
    cands = {"S1": "s42", "S2": "S2", "A1": f"{aug}42", "A2": f"A2({aug})"}
    if adopt:
        cands["L"] = "l1"
    best_acc = max(acc[v] for v in cands.values())
    best_loss = min(s[v]["val_log_loss"] for v in cands.values())
    best_val = max(cands.values(), key=lambda v: (acc[v], -s[v]["val_log_loss"]))
    rows = {}
    for c, v in sorted(cands.items(), key=lambda kv: cost[kv[1]]):
        t = mcnemar(s[v]["_right"], s[best_val]["_right"])
        worse = ext[v] < ext[best_val] and t["p"] < 0.05
        rows[c] = {"run": v, "gflop": round(cost[v], 3), "val_acc": acc[v],
                   "val_log_loss": s[v]["val_log_loss"], "external": ext[v],
                   "within_acc": acc[v] >= best_acc - 0.005,
                   "within_loss": s[v]["val_log_loss"] <= best_loss + 0.02,
                   "external_not_worse": not worse, "mcnemar_vs_best_val": t}
    ship = next(c for c, r in rows.items()
                if r["within_acc"] and r["within_loss"] and r["external_not_worse"])
    out["ship"] = {"candidates_by_cost": rows, "best_val_candidate": best_val, "chosen": ship}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/gpu15"))
    ap.add_argument("--split", type=Path, default=Path(".gpu/data/splits"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/retrain"))
    args = ap.parse_args()
    val = read_file_list(args.split / "val.txt", DATA)
    ext = scan_external()
    ext_labels = np.array([e.label for e in ext])
    val_x: dict = {}
    ext_x: dict = {}
    y_val = None
    logits, scores, cost = {}, {}, {}
    for name in RUNS:
        path = args.runs / f"{name}.safetensors"
        model, meta = load_model(path)
        size = meta["recipe"]["data"]["image_size"]
        if size not in val_x:
            val_x[size], y_val = cache_samples(val, size, desc=f"val {size}")
        cost[name] = gflops(model, size)
        logits[name] = logits_of(model, meta, path, val_x, ext_x, ext)
        scores[name] = score(*logits[name][:1], y_val, logits[name][1], ext_labels, ext)
        print(name, {k: v for k, v in scores[name].items() if k in ("val_acc", "val_log_loss")},
              scores[name]["external"]["accuracy"], flush=True)
    for pair, (m1, m2) in PAIRS.items():
        v = (logits[m1][0] + logits[m2][0]) / 2
        e = (logits[m1][1] + logits[m2][1]) / 2
        scores[pair] = score(v, y_val, e, ext_labels, ext)
        cost[pair] = cost[m1] + cost[m2]
    decision = apply_rule(scores, cost)
    result = {
        "scores": {k: {kk: vv for kk, vv in v.items() if kk != "_right"}
                   | {"gflop": round(cost[k], 3)} for k, v in scores.items()},
        "rule": decision,
        "provenance": provenance(),
    }
    write_json(args.out / "selection.json", result)
    print(json.dumps(decision, indent=1, default=str))


if __name__ == "__main__":
    main()
