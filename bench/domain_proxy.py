"""Which augmentation moves external-dev? A short, equal-cost fine-tune per hypothesis.

A measurement script, not the product training loop. Every variant starts from the same
weights (member 1 of the shipped model by default, or ImageNet lite0 with --init imagenet),
fine-tunes the head and the top --trainable share of the backbone (1 = all) at --size px for
--steps steps of --batch images drawn (same seeded order for every uniform variant) from the
benchmark Training split less the starting model's own validation files (its split rebuilt
from the model file: `brainmri.train.data.model_split`), with the shipped recipe's own
`BatchAugment` plus the variant's extra:

    a  nothing extra
    b  sequence/contrast randomization: random monotone / non-monotone intensity curves,
       inversion, histogram randomization (brainmri.data.mri_augment)
    c  MRI artifacts via TorchIO (bias field, noise, ghosting, motion, spike, anisotropic blur)
    d  framing: a quarter of the images replaced by their raw uncropped original
       (../shared/data/brain-tumor-mri-raw/Training, resized whole), another quarter shrunk
       into a black frame
    e  b + c + d
    f  class balance inside appearance clusters: images drawn with replacement so that every
       class is equally frequent within each k-means cluster of frozen ImageNet features
       (brainmri.data.balance), each cluster keeping its share of the draws
    g  f + b

Each is then measured on those benchmark validation files (accuracy; a temperature is fitted
there) and on external-dev (bench/external.py breakdown with that temperature; McNemar's exact
test against variant a). The official test split is never touched.

    python bench/domain_proxy.py [--variants init,a,b,c,d,e,f,g] [--steps 80] [--size 160]
        [--out bench/results/external/proxy]

Writes OUT/<variant>.json after each variant (so a partial run keeps what it measured),
OUT/summary.json and OUT/risk_coverage.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_OUT,
    ROOT,
    breakdown,
    decode_external,
    mcnemar_p,
    pct,
    plot_risk_coverage,
    provenance,
    scan_external,
    write_json,
)

from brainmri.config import AugmentConfig, ModelConfig  # noqa: E402
from brainmri.data.cache import decode_images  # noqa: E402
from brainmri.data.mri_augment import MRIAugment, MRIAugmentSettings  # noqa: E402
from brainmri.data.transforms import BatchAugment, normalize_intensity, to_model_input  # noqa: E402

BENCH = ROOT.parent / "shared" / "data" / "brain-tumor-mri"
RAW = ROOT.parent / "shared" / "data" / "brain-tumor-mri-raw" / "Training"
SHIPPED = ROOT / "src" / "brainmri" / "weights" / "lite0_cpu.safetensors"

SETTINGS: dict[str, MRIAugmentSettings] = {
    "a": MRIAugmentSettings(),
    "b": MRIAugmentSettings(curve_prob=0.5, invert_prob=0.15, histogram_prob=0.25),
    "c": MRIAugmentSettings(artifact_prob=0.5),
    "d": MRIAugmentSettings(frame_prob=0.25),
    "e": MRIAugmentSettings(
        curve_prob=0.5, invert_prob=0.15, histogram_prob=0.25, artifact_prob=0.5, frame_prob=0.25
    ),
    "f": MRIAugmentSettings(),
    "g": MRIAugmentSettings(curve_prob=0.5, invert_prob=0.15, histogram_prob=0.25),
}
RAW_SHARE = {"d": 0.25, "e": 0.25}
"""Share of each batch replaced by its raw uncropped original (framing variants)."""
BALANCED = {"f", "g"}
"""Variants that draw their images class-balanced inside appearance clusters."""
CLUSTERS = 8


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Scalar temperature minimising validation NLL (LBFGS on log T)."""
    logits = logits.clone()  # out of inference mode
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def initial_model(init: str):
    """(model, recipe dict): member 1 of the shipped model, or ImageNet lite0 + a fresh head."""
    from brainmri.model.checkpoint import load_model
    from brainmri.model.classifier import TumorClassifier

    shipped, meta = load_model(SHIPPED, "cpu")
    if init == "imagenet":
        return TumorClassifier(ModelConfig(**meta["recipe"]["model"])), meta["recipe"]
    member = shipped.members[0] if hasattr(shipped, "members") else shipped
    return member, meta["recipe"]


@torch.inference_mode()
def logits_of(model, images: torch.Tensor, intensity: str, batch: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize_intensity(images[i : i + batch].float() / 255.0, intensity)
        out.append(model(to_model_input(x, channels_last=True)).float())
    return torch.cat(out)


class Data:
    """Decoded once, shared by every variant: the training files, their raw twins if a framing
    variant runs, val, external; `draw(variant)` is the variant's sequence of training images."""

    def __init__(self, size: int, args, variants: list[str]) -> None:
        from brainmri.model.checkpoint import read_metadata
        from brainmri.train.data import model_split

        train, val, self.split = model_split(BENCH, read_metadata(SHIPPED))
        val = val[:: max(1, len(val) // args.limit)] if args.limit else val
        self.n_draw, self.seed = args.steps * args.batch, args.seed
        self.train = train
        self.train_x = decode_images([s.path for s in train], size, desc="train")
        self.train_y = torch.tensor([s.label for s in train])
        self.has_raw = torch.zeros(len(train), dtype=torch.bool)
        self.raw_x = torch.zeros_like(self.train_x[:1]).expand_as(self.train_x)
        if RAW_SHARE.keys() & set(variants):
            raw = [RAW / s.path.parent.name / s.path.name for s in train]
            self.has_raw = torch.tensor([p.is_file() for p in raw])
            self.raw_x = torch.zeros_like(self.train_x)
            self.raw_x[self.has_raw] = decode_images(
                [p for p in raw if p.is_file()], size, desc="raw"
            )
        self.clusters = self.cluster_table = None
        if BALANCED & set(variants):
            self.cluster_images()
        self.val_x = decode_images([s.path for s in val], size, desc="val")
        self.val_y = torch.tensor([s.label for s in val])
        self.ext = scan_external(DEFAULT_DATA)
        self.ext = self.ext[:: max(1, len(self.ext) // args.limit)] if args.limit else self.ext
        self.ext_x = decode_external(self.ext, size)
        self.ext_y = np.array([s.label for s in self.ext])

    def cluster_images(self) -> None:
        from ceiling import imagenet_features

        from brainmri.data.balance import (
            appearance_clusters,
            cluster_balanced_weights,
            contingency,
        )

        self.clusters = appearance_clusters(
            imagenet_features(self.train_x), k=CLUSTERS, seed=self.seed
        )
        labels = self.train_y.numpy()
        self.weights = cluster_balanced_weights(self.clusters, labels)
        self.cluster_table = contingency(self.clusters, labels, 4).tolist()
        print("clusters x classes:", self.cluster_table, flush=True)

    def draw(self, variant: str) -> torch.Tensor:
        """Training-image indices, one per draw: the same seeded order for every uniform
        variant (no image twice), a seeded weighted draw for the balanced ones."""
        rng = np.random.default_rng(self.seed)
        n = len(self.train_y)
        if variant in BALANCED:
            p = self.weights / self.weights.sum()
            pick = rng.choice(n, size=self.n_draw, replace=True, p=p)
        else:
            pick = rng.choice(n, size=min(self.n_draw, n), replace=False)
        return torch.from_numpy(pick)


def train_variant(model, data: Data, variant: str, recipe: dict, args) -> float:
    """Fine-tune in place; returns seconds."""
    base = BatchAugment(AugmentConfig(**recipe["augment"]))
    extra = MRIAugment(SETTINGS[variant])
    intensity = recipe["data"].get("intensity", "none")
    gen = torch.Generator().manual_seed(args.seed)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm)))
        ),
    )
    order = data.draw(variant)
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = order[torch.arange(step * args.batch, (step + 1) * args.batch) % len(order)]
        x = data.train_x[idx].clone()
        share = RAW_SHARE.get(variant, 0.0)
        if share:
            swap = (torch.rand(len(idx), generator=gen) < share) & data.has_raw[idx]
            x[swap] = data.raw_x[idx][swap]
        x = extra(base(x, gen), gen)
        x = normalize_intensity(x, intensity)
        loss = F.cross_entropy(
            model(to_model_input(x, channels_last=True)), data.train_y[idx], label_smoothing=0.1
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            print(f"  {variant} step {step}/{args.steps} loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0


def measure(model, data: Data, intensity: str) -> dict:
    """Validation accuracy + fitted temperature, then the external-dev breakdown."""
    t0 = time.perf_counter()
    val_logits = logits_of(model, data.val_x, intensity)
    temp = fit_temperature(val_logits, data.val_y)
    val_acc = float((val_logits.argmax(1) == data.val_y).float().mean())
    ext_logits = logits_of(model, data.ext_x, intensity)
    probs = torch.softmax(ext_logits / temp, dim=1).numpy()
    res = breakdown(probs, data.ext_y, data.ext, ["glioma", "meningioma", "notumor", "pituitary"])
    res["right"] = (probs.argmax(1) == data.ext_y).astype(int).tolist()
    res["val_accuracy"] = val_acc
    res["val_n"] = len(data.val_y)
    res["temperature"] = temp
    res["measure_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def row(name: str, r: dict) -> str:
    cls = " | ".join(
        pct(r["per_class"][c]["accuracy"]) for c in ("glioma", "meningioma", "notumor")
    )
    seq = " | ".join(pct(r["per_sequence"][q]["accuracy"]) for q in ("T1C+", "T1", "T2"))
    p = r.get("mcnemar_p_vs_a")
    p_txt = "—" if p is None else f"{p:.3g}"
    return (
        f"| {name} | {pct(r['val_accuracy'])} | {pct(r['accuracy'])} | {cls} | {seq} | "
        f"{pct(r['ece'])} | {p_txt} | {r.get('train_seconds', 0):.0f} s |"
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="init,a,b,c,d,e")
    p.add_argument("--init", choices=("member", "imagenet"), default="member")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--trainable", type=float, default=1.0, help="top share of backbone units trained"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "proxy")
    p.add_argument("--limit", type=int, default=None, help="about N val / external images (smoke)")
    p.add_argument("--summarize", action="store_true", help="only tabulate OUT/<variant>.json")
    args = p.parse_args(argv)
    if args.summarize:
        return summarize(args.out, args)
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    t0 = time.perf_counter()
    data = Data(args.size, args, variants)
    print(f"decoded in {time.perf_counter() - t0:.0f} s", flush=True)
    results: dict[str, dict] = {}
    for v in variants:
        torch.manual_seed(args.seed)
        model, recipe = initial_model(args.init)
        model = model.to(memory_format=torch.channels_last)
        model.set_trainable_fraction(args.trainable)
        secs = 0.0 if v == "init" else train_variant(model, data, v, recipe, args)
        res = measure(model, data, recipe["data"].get("intensity", "none"))
        res["train_seconds"] = round(secs, 1)
        res["settings"] = (
            None
            if v == "init"
            else SETTINGS[v].__dict__
            | {"raw_share": RAW_SHARE.get(v, 0.0), "cluster_balanced": v in BALANCED}
        )
        res["split"] = data.split | {"n_train": len(data.train_y), "n_val": len(data.val_y)}
        if v in BALANCED:
            res["clusters_x_classes"] = data.cluster_table
        res["args"] = vars(args) | {"out": str(args.out)}
        results[v] = res
        res["provenance"] = provenance()
        write_json(args.out / f"{v}.json", res)
        print(row(v, res), flush=True)
    return summarize(args.out, args)


def summarize(out: Path, args) -> dict:
    """Table, McNemar p vs a and one risk-coverage PNG over every <variant>.json in out."""
    order = ["init", "a", "b", "c", "d", "e", "f", "g"]
    results = {
        v: json.loads((out / f"{v}.json").read_text())
        for v in order
        if (out / f"{v}.json").is_file()
    }
    if "a" in results:
        for v, res in results.items():
            if v != "a":
                res["mcnemar_p_vs_a"] = mcnemar_p(
                    np.array(results["a"]["right"], bool), np.array(res["right"], bool)
                )
                write_json(out / f"{v}.json", res)
    header = (
        "| variant | bench val | external-dev | glioma | meningioma | notumor | T1C+ | T1 | T2 | "
        "ECE | McNemar p vs a | train time |"
    )
    table = "\n".join([header, "|" + "---|" * 12] + [row(v, r) for v, r in results.items()])
    print(table)
    keys = ("val_accuracy", "accuracy", "ece", "train_seconds", "mcnemar_p_vs_a")
    summary = {
        "table": table,
        "provenance": provenance(),
        "variants": {v: {k: r.get(k) for k in keys} for v, r in results.items()},
    }
    write_json(out / "summary.json", summary)
    plot_risk_coverage(
        {v: r["risk_coverage"] for v, r in results.items()},
        out / "risk_coverage.png",
        f"external-dev, proxy variants ({args.steps} steps, {args.size} px)",
    )
    return summary


if __name__ == "__main__":
    main()
