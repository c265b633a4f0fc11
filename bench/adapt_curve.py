"""Site adaptation curve: `brainmri adapt` with k labelled images per class of external-dev.

Protocol (fixed before the first run; docs/RESULTS.md section 14):
- scan groups of external-dev: images linked when their 24x24 thumbnails correlate above
  --group-threshold (bench/ceiling.py `scan_groups`), connected components;
- for each k and draw seed: per class, groups in a seeded random order are taken whole until
  the class has k images (the last group is cut to fit; its other images are not evaluated
  either): that is the site folder (symlinks under OUT/sites/);
- `brainmri.train.adapt.adapt` with the default settings (configs/adapt/default.yaml, not tuned
  on external-dev), replay drawn from benchmark Training less the source model's validation
  files (its own split, rebuilt from the model file: `brainmri.train.data.model_split`), so
  those stay unseen;
- measured on every image of external-dev in groups not touched by the draw (the "rest"):
  accuracy, per class / sequence / tumour, ECE, risk-coverage, and the share the refitted input
  guard accepts; on the benchmark: those validation files and the official test split
  (plain), to show what the model kept. Test-split figures are reported, never used to choose.

    python bench/adapt_curve.py [--ks 5,10,25,50] [--draws 0] [--out bench/results/adapt]

Writes OUT/k{k}_d{d}.json per run (a partial run keeps what it measured; an existing file is
reused, not measured again), OUT/curve.json,
OUT/adapt_curve.png and OUT/risk_coverage_k25.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import scan_groups  # noqa: E402
from external import (  # noqa: E402
    DEFAULT_DATA,
    ROOT,
    breakdown,
    decode_external,
    format_breakdown,
    pct,
    plot_risk_coverage,
    provenance,
    scan_external,
    write_json,
)

from brainmri import CLASS_NAMES  # noqa: E402
from brainmri.config import load_adapt_config  # noqa: E402
from brainmri.data.cache import cache_samples  # noqa: E402
from brainmri.data.folders import scan_split  # noqa: E402
from brainmri.infer.core import load_for_inference  # noqa: E402
from brainmri.infer.guard import guard_features, load_guard  # noqa: E402
from brainmri.model.checkpoint import read_metadata  # noqa: E402
from brainmri.train.adapt import adapt, check_overrides  # noqa: E402
from brainmri.train.data import model_split  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "brain-tumor-mri"
SHIPPED = ROOT / "src" / "brainmri" / "weights" / "lite0_cpu.safetensors"


def draw_site(
    labels: np.ndarray, groups: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(site indices, rest indices): k images per class taken by whole groups (module doc)."""
    rng = np.random.default_rng(seed)
    site, touched = [], set()
    for c in sorted(set(labels.tolist())):
        ids = sorted({int(g) for g in groups[labels == c]})
        taken: list[int] = []
        for g in (ids[i] for i in rng.permutation(len(ids))):
            if len(taken) >= k:
                break
            members = np.flatnonzero((groups == g) & (labels == c)).tolist()
            taken += members[: k - len(taken)]
            touched.add(g)
        site += taken
    rest = np.flatnonzero(~np.isin(groups, sorted(touched)))
    return np.array(sorted(site)), rest


def link_site(samples, site: np.ndarray, folder: Path) -> Path:
    """A <class>/ folder of symlinks to the drawn images (what a user would hand to adapt)."""
    for i in site:
        s = samples[i]
        dest = folder / CLASS_NAMES[s.label] / s.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(s.path.resolve())
    return folder


def guard_accept_rate(scorer, threshold: float | None, features: list) -> float | None:
    """Share of images whose OOD score (of these guard features) the guard accepts."""
    if scorer is None:
        return None
    with torch.inference_mode():
        return float((scorer(features) <= threshold).float().mean())


def benchmark_accuracy(loaded, samples) -> dict:
    x, y = cache_samples(samples, loaded.image_size, desc="benchmark")
    pred = loaded.probs(x).numpy().argmax(1)
    right = pred == y.numpy()
    return {"n": len(y), "accuracy": float(right.mean()), "errors": int((~right).sum())}


def run_one(args, k: int, draw: int, ctx: dict) -> dict:
    """One site draw: adapt, then measure rest / validation / test."""
    samples, labels, groups = ctx["samples"], ctx["labels"], ctx["groups"]
    site, rest = draw_site(labels, groups, k, draw)
    run_dir = args.out / "runs" / f"k{k}_d{draw}"
    site_dir = link_site(samples, site, args.out / "sites" / f"k{k}_d{draw}")
    t0 = time.perf_counter()
    result = adapt(args.model, site_dir, None, run_dir, ctx["cfg"], replay_pool=ctx["replay_pool"])
    adapt_s = time.perf_counter() - t0
    loaded = load_for_inference(result.model_path, "cpu")
    if loaded.image_size != ctx["source"].image_size:
        raise SystemExit("the adapted model's input size differs from the source model's")
    rest_samples = [samples[i] for i in rest]
    with torch.inference_mode():  # one pass gives the probabilities and the guard's features
        scorer, threshold = load_guard(result.model_path)
        source = scorer.source if scorer is not None else "penultimate"
        feats, logits = guard_features(
            loaded.model, ctx["images"][rest], loaded.intensity, source=source
        )
    probs = torch.softmax(logits / loaded.temperature, dim=1).numpy()
    res = breakdown(probs, labels[rest], rest_samples, loaded.class_names)
    res |= {
        "k": k,
        "draw": draw,
        "site_n": int(len(site)),
        "site_groups": int(len(set(groups[site].tolist()))),
        "rest_n": int(len(rest)),
        "adapt_seconds": round(adapt_s, 1),
        "guard_accept_rest": guard_accept_rate(scorer, threshold, feats),
        "benchmark_val": benchmark_accuracy(loaded, ctx["val"]),
        "official_test_plain": benchmark_accuracy(loaded, ctx["test"]) if ctx["test"] else None,
        "adapt_summary": result.summary,
    }
    res["rest_index"] = rest.tolist()  # external-dev scan order
    res["right"] = (probs.argmax(1) == labels[rest]).astype(int).tolist()
    # the source model on the same rest images, for the paired comparison
    res["source_on_rest"] = float((ctx["source_pred"][rest] == labels[rest]).mean())
    print(format_breakdown(res, f"k={k} draw {draw}: rest of external-dev ({len(rest)})"))
    test = res["official_test_plain"]
    print(
        f"  source on rest {pct(res['source_on_rest'])} %; guard accepts "
        f"{pct(res['guard_accept_rest'])} % of rest; benchmark val "
        f"{pct(res['benchmark_val']['accuracy'])} %, official test "
        f"{pct(test['accuracy']) if test else 'not run'} %; adapt {adapt_s / 60:.1f} min",
        flush=True,
    )
    return res


def plot_curve(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in runs})
    mean = lambda key: [np.mean([key(r) for r in runs if r["k"] == k]) for k in ks]  # noqa: E731
    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    ax.plot(ks, [100 * v for v in mean(lambda r: r["accuracy"])], "o-", label="rest, all")
    for seq in ("T1C+", "T1", "T2"):
        vals = mean(lambda r, s=seq: r["per_sequence"][s]["accuracy"])
        ax.plot(ks, [100 * v for v in vals], ".--", lw=1, label=f"rest, {seq}")
    ax.plot(ks, [100 * v for v in mean(lambda r: r["source_on_rest"])], "k:", label="before")
    if all(r["official_test_plain"] for r in runs):
        ax.plot(
            ks,
            [100 * v for v in mean(lambda r: r["official_test_plain"]["accuracy"])],
            "s-",
            color="gray",
            label="official test (plain)",
        )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled site images per class (k)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_title("brainmri adapt on external-dev: accuracy on the images not used", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _runs_in(folder: Path) -> dict[tuple[int, int], dict]:
    """(k, draw) -> run result, for every OUT/k*_d*.json of a folder."""
    runs = [json.loads(f.read_text()) for f in sorted(folder.glob("k*_d*.json"))]
    return {(r["k"], r["draw"]): r for r in runs}


def compare(dirs: list[Path]) -> list[dict]:
    """Settings side by side over the draws each folder holds: mean rest accuracy, benchmark
    validation and adapt time; the first folder is the reference of a paired McNemar test
    pooled over the draws the two share (the same rest images per draw)."""
    from external import mcnemar_p

    ref = _runs_in(dirs[0])
    rows = []
    for d in dirs:
        runs = _runs_in(d)
        keys = sorted(set(runs) & set(ref))
        right = [np.concatenate([rs[k]["right"] for k in keys]).astype(bool) for rs in (ref, runs)]
        row = {
            "settings": d.name,
            "runs": [f"k{k}_d{draw}" for k, draw in keys],
            "rest": float(np.mean([runs[k]["accuracy"] for k in keys])),
            "val": float(np.mean([runs[k]["benchmark_val"]["accuracy"] for k in keys])),
            "max_adapt_min": max(runs[k]["adapt_seconds"] for k in keys) / 60,
            "mcnemar_p": None if d == dirs[0] else mcnemar_p(*right),
        }
        row["per_run"] = {
            f"k{r['k']}_d{r['draw']}": {
                "rest": r["accuracy"],
                "val": r["benchmark_val"]["accuracy"],
                "adapt_min": r["adapt_seconds"] / 60,
                "ece": r["ece"],
                "per_sequence": {q: v["accuracy"] for q, v in r["per_sequence"].items()},
            }
            for r in (runs[k] for k in keys)
        }
        rows.append(row)
    print(f"| settings | runs | rest | val | max adapt | McNemar p vs {dirs[0].name} |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        p = "—" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.2g}"
        print(
            f"| {row['settings']} | {', '.join(row['runs'])} | {pct(row['rest'])} % | "
            f"{pct(row['val'])} % | {row['max_adapt_min']:.1f} min | {p} |"
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--ks", default="5,10,25,50")
    p.add_argument("--draws", default="0")
    p.add_argument("--group-threshold", type=float, default=0.97)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adapt")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override an adaptation setting (configs/adapt/default.yaml), repeatable",
    )  # fmt: skip
    p.add_argument(
        "--no-test", action="store_true",
        help="skip the official test split (comparisons that choose settings never score it)",
    )  # fmt: skip
    p.add_argument(
        "--summary-only", action="store_true",
        help="only rebuild curve.json and the figures from every OUT/k*_d*.json",
    )  # fmt: skip
    p.add_argument(
        "--compare", type=Path, nargs="+", metavar="DIR",
        help="only compare the runs of these OUT folders (the first is the reference)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.compare:
        rows = compare(args.compare)
        write_json(args.out / "compare.json", rows)
        return rows
    if args.summary_only:
        runs = [json.loads(f.read_text()) for f in args.out.glob("k*_d*.json")]
        runs.sort(key=lambda r: (r["k"], r["draw"]))
        return summarize(runs, args.out)
    samples = scan_external(args.data)
    labels = np.array([s.label for s in samples])
    train, val, _ = model_split(BENCH, read_metadata(args.model))  # the model's own split
    cfg = load_adapt_config("default", args.overrides)
    check_overrides(cfg, args.overrides)  # a setting adapt would not use is an error
    ctx = {
        "samples": samples,
        "labels": labels,
        "groups": scan_groups([s.path for s in samples], args.group_threshold),
        "cfg": cfg,
        "replay_pool": train,
        "val": val,
        "test": [] if args.no_test else scan_split(BENCH, "Testing"),
        "source": load_for_inference(args.model, "cpu"),
    }
    ctx["images"] = decode_external(samples, ctx["source"].image_size)  # decoded once
    ctx["source_pred"] = ctx["source"].probs(ctx["images"]).numpy().argmax(1)
    runs = []
    for k in (int(v) for v in args.ks.split(",")):
        for d in (int(v) for v in args.draws.split(",")):
            done = args.out / f"k{k}_d{d}.json"
            if done.is_file():  # measured before: reused (delete the file to measure again)
                runs.append(json.loads(done.read_text()))
                continue
            res = run_one(args, k, d, ctx) | {"provenance": provenance()}
            write_json(done, res)
            runs.append(res)
    return summarize(runs, args.out)


def summarize(runs: list[dict], out: Path) -> list[dict]:
    """curve.json (one row per run) and the two figures."""
    summary = [
        {
            key: r[key]
            for key in (
                "k",
                "draw",
                "accuracy",
                "ece",
                "source_on_rest",
                "guard_accept_rest",
                "adapt_seconds",
                "rest_n",
            )
        }  # fmt: skip
        | {"per_sequence": {q: v["accuracy"] for q, v in r["per_sequence"].items()}}
        | {"val": r["benchmark_val"]["accuracy"]}
        | {"test": (r["official_test_plain"] or {}).get("accuracy")}
        for r in runs
    ]
    (out / "curve.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_curve(runs, out / "adapt_curve.png")
    rc = {f"k={r['k']} d{r['draw']}": r["risk_coverage"] for r in runs if r["k"] == 25}
    if rc:
        plot_risk_coverage(rc, out / "risk_coverage_k25.png", "adapted, k=25: rest")
    return runs


if __name__ == "__main__":
    main()
