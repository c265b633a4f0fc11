"""What k labelled site images per class carry: a linear probe on frozen features, by k.

The same site draws as bench/adapt_curve.py (k images per class taken by whole scan groups,
measured on every image of the groups not drawn), but instead of fine-tuning, a standardized
logistic regression (C fixed at 0.01, as §13.5's transfer probe; nothing tuned here) is fitted
on the k·3 site images' frozen features alone: the pooled backbone features of ImageNet Lite0
(§13.3's ceiling features, 160 px) and of the shipped model (its own preprocessing and size).
It bounds what a few labelled images give a classifier on generic or on benchmark-trained
features; the grouped 5-fold figure of §13.3 (~750 images per fold) is its right end.

    python bench/probe_curve.py [--ks 5,10,25,50,100,150] [--draws 0,1,2] \
        [--out bench/results/external/probe_curve.json]
    python bench/probe_curve.py --replay --ks 5,10,25,50 \
        --out bench/results/external/probe_replay.json
    python bench/probe_curve.py --whole-benchmark 1,10,30,100 --ks 25,50 \
        --out bench/results/external/probe_whole.json

    python bench/probe_curve.py --gated --gate-blocks pooled --ks 5,10,25,50 \
        --out bench/results/external/probe_gated.json
    python bench/probe_curve.py --gated --draws 3,4 --ks 25 --gate-c 0.01,0.001 \
        --gate-blocks "pooled;4,5,6;2,3,4;1,2,3;1,2,3,4,5,6" \
        --out bench/results/external/gate_inputs.json

With --gated (§21) the site head (the probe on the site images alone) and a gate (site images
against every training file of the model) are written into the `GatedHead` that
`adapt --set method=gated` saves, with the shipped head as its source head, and the mixture is
measured on the rest and on the model's validation files: accuracy, ECE, and where the gate
sends each. --gate-blocks picks what the gate reads: the pooled features (§21.2) or the
average-pooled outputs of earlier backbone blocks (§21.3; `adapt`'s `gate_blocks`); several
inputs and --gate-c values are compared in one run.

With --replay the probe is fitted on the site images plus as many benchmark Training images
(four classes), as `brainmri adapt` mixes them, and also measured on the model's own benchmark
validation files: can a head fitted this way keep the benchmark? With --whole-benchmark the fit
holds every training file of the model and the site images weighted up (the trade, per weight).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_curve import BENCH, SHIPPED, draw_site  # noqa: E402
from ceiling import imagenet_features, model_features, scan_groups  # noqa: E402
from external import (  # noqa: E402
    DEFAULT_DATA,
    ROOT,
    decode_external,
    pct,
    provenance,
    scan_external,
    write_json,
)

from brainmri.train.probe_head import fit_logistic, write_linear  # noqa: E402


def fit_probe(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None):
    """`adapt --set method=probe`'s own fit, at C 0.01."""
    return fit_logistic(x, y, weight, 0.01)


def probe_accuracy(feats: np.ndarray, labels: np.ndarray, site, rest) -> float:
    pipe = fit_probe(feats[site], labels[site])
    return float((pipe.predict(feats[rest]) == labels[rest]).mean())


def benchmark_split(model: Path) -> tuple[list, list]:
    """The model's own (training, validation) files of the benchmark."""
    from brainmri.model.checkpoint import read_metadata
    from brainmri.train.data import model_split

    train, val, _ = model_split(BENCH, read_metadata(model))
    return train, val


def labelled_features(model: Path, *sample_lists) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of the model for each list of samples."""
    return [(model_features(model, s), np.array([x.label for x in s])) for s in sample_lists]


def replay_runs(args, samples, labels, groups) -> dict:
    """--replay: the probe fitted on the site images plus as many benchmark Training images
    (the model's own training files, dealt class by class as `adapt` draws its replay), four
    classes; measured on the rest and on the model's own benchmark validation files."""
    from brainmri.train.adapt import draw_replay

    train, val = benchmark_split(args.model)
    pool, _ = draw_replay(train, 3 * max(int(v) for v in args.ks.split(",")), 0, seed=0)
    (feats, _), (pool_x, pool_y), (val_x, val_y) = labelled_features(args.model, samples, pool, val)
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        for draw in (int(v) for v in args.draws.split(",")):
            site, rest = draw_site(labels, groups, k, draw)
            n = len(site)
            pipe = fit_probe(np.concatenate([feats[site], pool_x[:n]]),
                             np.concatenate([labels[site], pool_y[:n]]))  # fmt: skip
            row = {"k": k, "draw": draw, "site_n": n, "replay_n": n, "rest_n": len(rest),
                   "rest": float((pipe.predict(feats[rest]) == labels[rest]).mean()),
                   "benchmark_val": float((pipe.predict(val_x) == val_y).mean())}  # fmt: skip
            rows.append(row)
            print(f"k={k:>3} draw {draw}: rest {pct(row['rest'])} % of {len(rest)}, "
                  f"benchmark val {pct(row['benchmark_val'])} %", flush=True)  # fmt: skip
    return {"runs": rows, "val_n": len(val), "provenance": provenance()}


def whole_benchmark_runs(args, samples, labels, groups) -> dict:
    """--whole-benchmark W,…: the probe fitted on the site images (sample weight w each) plus
    every training file of the model (weight 1), four classes; measured on the rest and on the
    model's own benchmark validation files. Chooses nothing: it maps the trade."""
    train, val = benchmark_split(args.model)
    (feats, _), (bench_x, bench_y), (val_x, val_y) = labelled_features(
        args.model, samples, train, val
    )
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        for draw in (int(v) for v in args.draws.split(",")):
            site, rest = draw_site(labels, groups, k, draw)
            for w in (float(v) for v in args.whole_benchmark.split(",")):
                x = np.concatenate([feats[site], bench_x])
                y = np.concatenate([labels[site], bench_y])
                weight = np.concatenate([np.full(len(site), w), np.ones(len(train))])
                pipe = fit_probe(x, y, weight)
                row = {"k": k, "draw": draw, "site_weight": w, "rest_n": len(rest),
                       "rest": float((pipe.predict(feats[rest]) == labels[rest]).mean()),
                       "benchmark_val": float((pipe.predict(val_x) == val_y).mean())}  # fmt: skip
                rows.append(row)
                print(f"k={k:>3} draw {draw} site weight {w:g}: rest {pct(row['rest'])} %, "
                      f"benchmark val {pct(row['benchmark_val'])} %", flush=True)  # fmt: skip
    return {"runs": rows, "train_n": len(train), "val_n": len(val), "provenance": provenance()}


def block_features(path: Path, samples, blocks: list[int], batch: int = 64) -> np.ndarray:
    """Pooled features, then the average-pooled outputs of `blocks`, of a model file (its own
    preprocessing), as `adapt --set method=gated` computes them for its gate."""
    import torch

    from brainmri.data.transforms import normalize_planes, to_model_input
    from brainmri.infer.core import load_for_inference

    loaded = load_for_inference(path, "cpu")
    x = decode_external(samples, loaded.image_size)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            planes = normalize_planes(x[i : i + batch], loaded.intensity)
            pooled, means = loaded.model.pooled_and_blocks(
                to_model_input(planes, loaded.channels_last), blocks
            )
            out.append(torch.cat([pooled, *means], dim=1))
    return torch.cat(out).numpy()


def gate_sets(spec: str) -> list[list[int]]:
    """'pooled;4,5,6;2,3,4' -> [[], [4, 5, 6], [2, 3, 4]] (pooled: the gate reads the pooled)."""
    sets = [s.strip() for s in spec.split(";")]
    return [[] if s == "pooled" else [int(v) for v in s.split(",")] for s in sets]


def gate_columns(width: int, widths: dict[int, int], union: list[int], blocks: list[int]):
    """Column indices of `blocks` inside features laid out as pooled (width), then `union`."""
    starts, at = {}, width
    for i in union:
        starts[i], at = at, at + widths[i]
    return np.concatenate([np.arange(starts[i], starts[i] + widths[i]) for i in blocks])


def gated_head(model: Path, site_pipe, gate_pipe, gate_width: int):
    """The GatedHead `adapt --set method=gated` writes, around the model's own head."""
    import torch

    from brainmri.model.checkpoint import load_model
    from brainmri.model.classifier import GatedHead

    source, meta = load_model(model, "cpu")
    width, n_classes = 2 * source.num_features, len(meta["class_names"])
    head = GatedHead(source.head, width, n_classes, gate_width)
    write_linear(head.site[0], head.site[1], site_pipe[0], site_pipe[-1])
    write_linear(head.gate[0], head.gate[1], gate_pipe[0], gate_pipe[-1], binary=True)
    head.source_temperature.fill_(float(meta["info"].get("temperature", 1.0)))
    return head.eval(), torch


def gated_answers(head, torch, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), gate g (N,)) of the gated head on its input features."""
    with torch.no_grad():
        f = torch.as_tensor(x)
        return torch.softmax(head(f), 1).numpy(), head.site_probability(f).numpy()


def gated_row(args, parts, gate_width, inputs, labels, val_y) -> dict:
    """Figures of one fitted gated head: inputs = (rest features, validation features)."""
    from brainmri.evaluate.metrics import expected_calibration_error as ece

    head, torch = gated_head(args.model, *parts, gate_width)
    (p_rest, g_rest), (p_val, g_val) = (gated_answers(head, torch, x) for x in inputs)
    return {"rest_n": len(labels), "rest": float((p_rest.argmax(1) == labels).mean()),
            "rest_ece": ece(p_rest, labels), "gate_rest_site": float((g_rest > 0.5).mean()),
            "gate_val_source": float((g_val < 0.5).mean()),
            "benchmark_val": float((p_val.argmax(1) == val_y).mean()),
            "val_ece": ece(p_val, val_y)}  # fmt: skip


def gated_runs(args, samples, labels, groups) -> dict:
    """--gated: §21's map (module doc), for each gate input (--gate-blocks) and C (--gate-c)."""
    from brainmri.model.checkpoint import load_model
    from brainmri.train.probe_head import fit_gate

    sets = gate_sets(args.gate_blocks)
    union = sorted({i for s in sets for i in s})
    train, val = benchmark_split(args.model)
    feats, bench_x, val_x = (block_features(args.model, s, union) for s in (samples, train, val))
    val_y = np.array([x.label for x in val])
    source, _ = load_model(args.model, "cpu")
    width = 2 * source.num_features
    widths = {i: source.block_width([i]) for i in union}
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        for draw in (int(v) for v in args.draws.split(",")):
            site, rest = draw_site(labels, groups, k, draw)
            site_pipe = fit_probe(feats[site, :width], labels[site])
            for blocks in sets:
                cols = gate_columns(width, widths, union, blocks) if blocks else np.arange(width)
                keep = np.concatenate([np.arange(width), cols]) if blocks else cols
                for c in (float(v) for v in args.gate_c.split(",")):
                    gate = fit_gate(feats[site][:, cols], bench_x[:, cols], c)
                    inputs = (feats[rest][:, keep], val_x[:, keep])
                    gate_width = len(cols) if blocks else 0
                    row = {"k": k, "draw": draw, "gate_blocks": blocks or "pooled", "gate_c": c}
                    row |= gated_row(args, (site_pipe, gate), gate_width, inputs,
                                     labels[rest], val_y)  # fmt: skip
                    rows.append(row)
                    print(f"k={k:>3} draw {draw} gate {row['gate_blocks']} C {c:g}: rest "
                          f"{pct(row['rest'])} % (ECE {pct(row['rest_ece'])}, gate→site "
                          f"{pct(row['gate_rest_site'])} %), benchmark val "
                          f"{pct(row['benchmark_val'])} % (gate→source "
                          f"{pct(row['gate_val_source'])} %)", flush=True)  # fmt: skip
    return {"runs": rows, "train_n": len(train), "val_n": len(val), "provenance": provenance()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--ks", default="5,10,25,50,100,150")
    p.add_argument("--draws", default="0,1,2")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/external/probe_curve.json")
    p.add_argument(
        "--replay", action="store_true",
        help="the shipped features only, fitted on site + as many benchmark images (4 classes)",
    )  # fmt: skip
    p.add_argument(
        "--whole-benchmark", default=None, metavar="W,…",
        help="fit on the site (these sample weights) + every training file of the model",
    )  # fmt: skip
    p.add_argument("--gated", action="store_true", help="§21: site head + gate + shipped head")
    p.add_argument(
        "--gate-blocks", default="4,5,6", metavar="B,…;B,…",
        help="--gated: the gate's inputs to compare, ';'-separated: block indices or 'pooled'",
    )  # fmt: skip
    p.add_argument("--gate-c", default="0.01", metavar="C,…", help="--gated: the gate's C values")
    args = p.parse_args(argv)
    samples = scan_external(args.data)
    labels = np.array([s.label for s in samples])
    groups = scan_groups([s.path for s in samples])
    if args.gated:
        report = gated_runs(args, samples, labels, groups)
        write_json(args.out, report)
        return report
    if args.whole_benchmark:
        report = whole_benchmark_runs(args, samples, labels, groups)
        write_json(args.out, report)
        return report
    if args.replay:
        report = replay_runs(args, samples, labels, groups)
        write_json(args.out, report)
        return report
    features = {
        "imagenet_lite0_160": imagenet_features(decode_external(samples, 160)),
        "shipped_model": model_features(args.model, samples),
    }
    rows = []
    for k in (int(v) for v in args.ks.split(",")):
        for draw in (int(v) for v in args.draws.split(",")):
            site, rest = draw_site(labels, groups, k, draw)
            row = {"k": k, "draw": draw, "site_n": len(site), "rest_n": len(rest)}
            for name, feats in features.items():
                row[name] = probe_accuracy(feats, labels, site, rest)
            rows.append(row)
            print(
                f"k={k:>3} draw {draw}: rest {len(rest)}; "
                + ", ".join(f"{n} {pct(row[n])} %" for n in features),
                flush=True,
            )
    summary = {
        k: {n: float(np.mean([r[n] for r in rows if r["k"] == k])) for n in features}
        for k in sorted({r["k"] for r in rows})
    }
    report = {"runs": rows, "mean_by_k": summary, "provenance": provenance()}
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
