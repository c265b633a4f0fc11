"""`brainmri adapt`: fine-tune a model file on a few labelled images of a new site.

A model trained on one collection can fail on another (docs/RESULTS.md section 13: the
shipped model answers by MRI sequence off the benchmark). Given a plain `<class>/` folder of
labelled images from the new site, every member of the model is fine-tuned by the training
loop's own epoch (`train.epoch.train_one_epoch`: the recipe's augmentation, label smoothing,
class weights, AdamW, warm-up + cosine) for a fixed number of optimizer steps (`steps`, so
the time is the same for 5 or 50 images per class), on the site images mixed
with as many benchmark Training images (`replay_ratio`) so that it keeps what it knew. There is
no validation split to stop on with a few images, so the stage runs its full length
(settings: configs/adapt/default.yaml). Two options act on forgetting and on the benchmark's
shortcuts: `replay_draw: clusters` draws the replay images by class balance inside appearance
clusters of the benchmark pool, and `interpolate` saves a weighted average of the fine-tuned and
the source weights.

The input guard is refitted, because the features move: class means and the shared covariance
on the trained images (site + replay), the threshold at `guard_accept` of a held-out draw of
benchmark images together with the site images. The temperature is the source model's, unless
`calibration_share` holds part of the site out of a first fine-tune and fits it there: the
source's temperature, fitted on the benchmark, leaves an adapted model overconfident on its
site (docs/RESULTS.md §22). The output is an ordinary model file: predict, evaluate, export,
explain and serve take it with `--model`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri import CLASS_NAMES
from brainmri.config import AdaptConfig, Recipe, recipe_from_dict
from brainmri.data.cache import cache_samples
from brainmri.data.folders import (
    SPLITS,
    Sample,
    class_counts,
    class_dirs,
    samples_in,
    scan_split,
)
from brainmri.data.mri_augment import TrainAugment
from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import (
    add_extra_tensors,
    load_model,
    preprocessing_of,
    save_model,
)
from brainmri.model.ensemble import EnsembleClassifier, members_of
from brainmri.train.data import RunData
from brainmri.train.distributed import Dist
from brainmri.train.epoch import Context, setup_stage, steps_per_epoch, train_one_epoch
from brainmri.train.loss import (
    class_weights,
    temperature_fit,
    temperature_note,
)
from brainmri.train.probe_head import fit_linear_head, head_recipe

MODEL_NAME = "model.safetensors"
SUMMARY_NAME = "adapt.json"
_SPLITS = {name.lower() for name in SPLITS}


@dataclass
class AdaptResult:
    model_path: Path
    summary: dict


SITE_FOLDER = (
    f"adapt --data takes a folder of <class>/ sub-folders ({', '.join(CLASS_NAMES)}; any "
    "subset) of the site's labelled images, never a benchmark split"
)


def site_samples(site_dir: Path) -> list[Sample]:
    """Labelled site images: a plain <class>/ folder (any subset of the classes).

    A benchmark folder (one with Training/ or Testing/, or one of those splits) is refused:
    adapting on it would train on the benchmark, its official test images included."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise BrainMRIError(f"site folder not found: {site_dir} ({SITE_FOLDER})")
    names = [c.name for c in sorted(site_dir.iterdir()) if c.is_dir()]
    splits = [name for name in names if name.lower() in _SPLITS]
    if splits or site_dir.resolve().name.lower() in _SPLITS:
        found = f"has {'/, '.join(splits)}/" if splits else "is a benchmark split"
        raise BrainMRIError(f"{site_dir} {found}: {SITE_FOLDER}")
    folders = class_dirs(site_dir)
    if not folders:
        raise BrainMRIError(f"{site_dir}: no class folders: {SITE_FOLDER}")
    samples = samples_in(folders, "Training")
    if len(samples) < 2:
        raise BrainMRIError(f"{site_dir}: adapt needs at least 2 labelled images")
    return samples


def _dealt(pool: list[Sample], rng: np.random.Generator) -> list[int]:
    """Pool indices in a seeded order, the classes taken in turn."""
    by_class = []
    for c in sorted({s.label for s in pool}):
        members = [i for i, s in enumerate(pool) if s.label == c]
        by_class.append([members[j] for j in rng.permutation(len(members))])
    return [i for row in itertools.zip_longest(*by_class) for i in row if i is not None]


def draw_replay(
    pool: list[Sample],
    n_replay: int,
    n_holdout: int,
    seed: int,
    weights: np.ndarray | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Two disjoint seeded draws from the benchmark pool: (replay, guard hold-out).

    Without weights both are dealt class by class in turn, so that every class is present;
    with per-image weights the replay images are drawn without replacement in proportion to
    them, and the hold-out is dealt from what is left.
    """
    rng = np.random.default_rng(seed)
    n_replay = min(n_replay, len(pool))
    if weights is None:
        order = _dealt(pool, rng)
        chosen, left = order[:n_replay], order[n_replay:]
    else:
        p = np.asarray(weights, dtype=np.float64)
        chosen = rng.choice(len(pool), size=n_replay, replace=False, p=p / p.sum()).tolist()
        taken = set(chosen)
        left = [i for i in _dealt(pool, rng) if i not in taken]
    return [pool[i] for i in chosen], [pool[i] for i in left[:n_holdout]]


def replay_weights(pool: list[Sample], size: int, cfg: AdaptConfig) -> np.ndarray | None:
    """Per-image replay weights of `replay_draw: clusters` (None for the plain draw)."""
    if cfg.replay_draw != "clusters" or not pool:
        return None
    from brainmri.train.data import appearance_weights

    x, y = cache_samples(pool, size, desc="decode replay pool")
    weights, _ = appearance_weights(x, y.numpy(), cfg.replay_clusters, 1, cfg.seed)
    return weights


def interpolate_weights(member: torch.nn.Module, source: dict[str, torch.Tensor], a: float) -> None:
    """member := a·member + (1 − a)·source for every floating parameter and buffer (WiSE-FT:
    the fine-tuned and the source weights averaged keep more of what the source knew)."""
    if a >= 1.0:
        return
    state = member.state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            value.copy_(a * value + (1.0 - a) * source[name].to(value.dtype))


def unused_settings(cfg: AdaptConfig) -> dict[str, str]:
    """Settings (dotted keys) that adapt never reads with `cfg`, each with the reason: they are
    left out of adapt.json, and a --set of one is refused (check_overrides)."""
    unused: dict[str, str] = {}
    if cfg.method == "finetune":
        fitted_only = ("site_weight", "probe_c", "gate_blocks")
        unused |= dict.fromkeys(fitted_only, "not used with method=finetune")
        if cfg.steps is not None:
            unused["stage.epochs"] = (
                f"not used: adapt runs `steps` optimizer steps per member (now {cfg.steps}; the "
                "epochs follow from them): --set steps=N, or steps=null to run stage.epochs"
            )
        if cfg.calibration_share == 0:
            unused["calibration_refit"] = "not used without calibration_share > 0"
    else:
        only = "gate_blocks" if cfg.method == "probe" else "site_weight"
        for key in ("stage", "steps", "batch_size", "interpolate", "calibration_refit", only):
            unused[key] = f"not used with method={cfg.method}"
    if cfg.replay_ratio == 0:
        unused |= dict.fromkeys(("replay_draw", "replay_clusters"), "not used: replay_ratio=0")
    elif cfg.replay_draw != "clusters":
        unused["replay_clusters"] = "not used without replay_draw=clusters"
    return unused


def check_overrides(cfg: AdaptConfig, overrides: list[str] | None) -> None:
    """A --set of a setting that adapt does not use is a user error (not a value recorded in
    adapt.json and ignored)."""
    unused = unused_settings(cfg)
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        hit = next((u for u in unused if key == u or key.startswith(f"{u}.")), None)
        if hit is not None:
            raise BrainMRIError(f"--set {key}: {unused[hit]}")


def check_replay(cfg: AdaptConfig, replay: Path | None) -> None:
    """A --replay folder that adapt would not read (replay_ratio=0 mixes in no benchmark image)
    is a user error, not a folder silently left out of adapt.json."""
    if replay is not None and cfg.replay_ratio == 0:
        raise BrainMRIError(
            f"--replay {replay}: not used with replay_ratio=0 (no benchmark images are mixed "
            "in): drop --replay, or --set replay_ratio=R with R > 0"
        )


def recorded_settings(cfg: AdaptConfig) -> dict:
    """The settings as adapt.json records them: those adapt used, none that it did not."""
    data = cfg.model_dump(mode="json")
    for key in unused_settings(cfg):
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node[part]
        node.pop(last, None)
    return data


def fine_tune_length(cfg: AdaptConfig, n_train: int) -> dict[str, int]:
    """What one member's fine-tune on n_train images runs: `steps` rounded up to whole epochs
    (stage.epochs when steps is null)."""
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    epochs = math.ceil(cfg.steps / per_epoch) if cfg.steps is not None else cfg.stage.epochs
    return {"images": n_train, "batch_size": cfg.batch_size, "steps_per_epoch": per_epoch,
            "epochs": epochs, "steps": epochs * per_epoch}  # fmt: skip


def adapt_recipe(recipe: Recipe, cfg: AdaptConfig, member: int, n_train: int) -> Recipe:
    """The source recipe with the adaptation stage in place of its stages (epochs from steps)."""
    stage = cfg.stage.model_dump(mode="json")
    stage["epochs"] = fine_tune_length(cfg, n_train)["epochs"]
    data = recipe.model_dump(mode="json")
    data["seed"] = cfg.seed + member
    data["ensemble"] = 1
    train = data["train"]
    train |= {"batch_size": cfg.batch_size, "cache_frozen_features": False}
    train |= {"max_steps_per_epoch": None, "stages": [stage]}
    return recipe_from_dict(data, "adapt")


def fit_member(
    member: torch.nn.Module, recipe: Recipe, data: RunData, meta: dict, label: str
) -> list[dict]:
    """Fine-tune one member in place for the stage's epochs; per-epoch figures."""
    mean, std = preprocessing_of(meta)
    weights = class_weights(data.counts) if recipe.train.class_weights else None
    torch.manual_seed(recipe.seed)
    ctx = Context(recipe, Dist(), member, data, TrainAugment(recipe.augment), mean, std, weights)
    run = setup_stage(ctx, 0)
    history = []
    bar = tqdm(range(run.config.epochs), desc=f"adapt {label}", unit="epoch", leave=False,
               disable=None)  # fmt: skip
    for epoch in bar:
        fig = train_one_epoch(ctx, run, epoch, epoch)
        bar.set_postfix(loss=f"{fig['train_loss']:.3f}", acc=f"{fig['train_acc']:.3f}")
        history.append({"epoch": epoch + 1} | {k: round(v, 6) for k, v in fig.items()})
    member.eval()
    return history


def refit_guard(
    model: torch.nn.Module,
    meta: dict,
    fit_x: torch.Tensor,
    fit_y: torch.Tensor,
    threshold_sets: tuple[torch.Tensor, torch.Tensor],
    accept: float,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Guard statistics of the adapted model: (guard.* tensors, metadata `guard`).

    threshold_sets: (benchmark hold-out, site images); the threshold accepts `accept` of both
    together. The site check's reference median is the larger of the two sets' medians, so that
    neither the benchmark nor the site the model was adapted to reads as shifted."""
    from brainmri.infer.guard import (
        AUGMENTED_COPIES,
        augmented_planes,
        fit_depths,
        guard_features,
        threshold_for,
    )

    intensity = meta["preprocessing"].get("intensity", "none")
    augment = recipe_from_dict(meta["recipe"]).augment
    fit_x = torch.cat([fit_x, augmented_planes(fit_x, augment)])
    fit_y = fit_y.repeat(AUGMENTED_COPIES + 1)
    threshold_x = torch.cat(threshold_sets)
    with torch.inference_mode():
        feats, _ = guard_features(model, fit_x, intensity)
        held, _ = guard_features(model, threshold_x, intensity)
        tensors, scorer = fit_depths(feats, fit_y, held, len(meta["class_names"]))
        scores = scorer(held)
    threshold = threshold_for(scores.numpy(), accept)
    parts = np.split(scores.numpy(), [len(threshold_sets[0])])  # infer/site_check.py
    info = dict(meta.get("guard", {}))
    info |= {
        "ood_threshold": threshold,
        "feature_widths": scorer.widths,
        "fitted_on": f"adapt: the {len(fit_x) // (AUGMENTED_COPIES + 1)} images trained on "
        f"(site + benchmark replay) and {AUGMENTED_COPIES} augmented draws of each",
        "threshold_on": f"{len(threshold_x)} images (benchmark hold-out + site), "
        f"{accept:.2%} accepted",
        "reference_median": max(float(np.median(part)) for part in parts if len(part)),
        "reference_on": "the larger of the medians of the benchmark hold-out "
        f"({len(threshold_sets[0])}) and of the site images ({len(threshold_sets[1])})",
    }
    return tensors, info


def finetune_members(
    model: torch.nn.Module,
    recipe: Recipe,
    meta: dict,
    cfg: AdaptConfig,
    images: tuple[torch.Tensor, torch.Tensor],
    samples: list[Sample],
) -> list[list[dict]]:
    """Fine-tune every member of `model` in place on `images` (site + replay); per-member
    per-epoch figures. `interpolate` is applied here."""
    x, y = images
    empty = torch.empty((0, *x.shape[1:]), dtype=torch.uint8)
    data = RunData(samples, [], {}, x, y, empty, torch.empty(0, dtype=torch.long))
    members = members_of(model)
    history = []
    for k, member in enumerate(members):
        label = f"member {k + 1}/{len(members)}"
        member_recipe = adapt_recipe(recipe, cfg, k, len(x))
        source = {n: v.detach().clone() for n, v in member.state_dict().items()}
        history.append(fit_member(member, member_recipe, data, meta, label))
        interpolate_weights(member, source, cfg.interpolate)
    model.eval()
    return history


def calibrate_on_site(
    model: torch.nn.Module,
    recipe: Recipe,
    meta: dict,
    cfg: AdaptConfig,
    site: tuple[list[Sample], torch.Tensor, torch.Tensor],
    replay: tuple[list[Sample], torch.Tensor, torch.Tensor],
) -> tuple[dict, torch.nn.Module, list[list[dict]]]:
    """Fine-tune a copy of `model` without a held-out share of the site (whole near-copy
    groups, stratified: data.splits.grouped_split) and fit the temperature on that share.
    site, replay: (samples, decoded planes, labels). Returns (figures, the fine-tuned copy, its
    history)."""
    from brainmri.data.splits import grouped_split
    from brainmri.infer.core import predict_logits

    samples, x_site, y_site = site
    fit, held, _ = grouped_split(samples, cfg.calibration_share, cfg.seed)
    row = {s.path: i for i, s in enumerate(samples)}  # the planes are decoded once, in adapt
    fit_rows, held_rows = [row[s.path] for s in fit], [row[s.path] for s in held]
    x_held, y_held = x_site[held_rows], y_site[held_rows]
    copy_ = copy.deepcopy(model)
    images = (torch.cat([x_site[fit_rows], replay[1]]), torch.cat([y_site[fit_rows], replay[2]]))
    history = finetune_members(copy_, recipe, meta, cfg, images, fit + replay[0])
    intensity = meta["preprocessing"].get("intensity", "none")
    logits = predict_logits(copy_, x_held, intensity=intensity)[1][0]
    calibration = temperature_fit(logits, y_held)
    note = temperature_note(calibration["temperature"], calibration["temperature_all_right"])
    figures = {
        **calibration,
        "temperature_note": note,
        "source_temperature": float(meta.get("info", {}).get("temperature", 1.0)),
        "fit_images": len(fit),
        "held_out_images": len(held),
        "held_out_accuracy": float((logits.argmax(1) == y_held).float().mean()),
        "refit": cfg.calibration_refit,
        "held_out_files": [str(s.path) for s in held],
    }
    return figures, copy_, history


def fit_heads(
    model: torch.nn.Module,
    recipe: Recipe,
    site: tuple[torch.Tensor, torch.Tensor],
    pool: tuple[torch.Tensor, torch.Tensor],
    cfg: AdaptConfig,
    meta: dict,
    temperature: float,
) -> tuple[torch.nn.Module, list[list[dict]]]:
    """`method=probe|gated`: every member with its fitted head (train/probe_head.py)."""
    mean, std = preprocessing_of(meta)
    members = members_of(model)
    history = []
    for k, member in enumerate(members):
        members[k], fig = fit_linear_head(member, recipe, site, pool, cfg, mean, std, temperature)
        history.append([fig])
    return (EnsembleClassifier(members) if len(members) > 1 else members[0]), history


def adapt(
    model_path: Path,
    site_dir: Path,
    replay_dir: Path | None,
    out_dir: Path,
    cfg: AdaptConfig,
    replay_pool: list[Sample] | None = None,
) -> AdaptResult:
    """Fine-tune `model_path` on the site folder into out_dir/model.safetensors (module doc).

    replay_pool: the benchmark images to draw replay and guard hold-out from (default: every
    Training image under replay_dir).
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    if (out_dir / MODEL_NAME).exists():
        raise BrainMRIError(f"{out_dir / MODEL_NAME} exists: pass another --out")
    site = site_samples(site_dir)
    model, meta = load_model(model_path, "cpu")
    recipe = recipe_from_dict(meta["recipe"], str(model_path))
    if replay_pool is None:
        replay_pool = scan_split(replay_dir, "Training") if replay_dir is not None else []
    n_replay = round(cfg.replay_ratio * len(site))
    if n_replay and not replay_pool:
        raise BrainMRIError(
            "adapt mixes in benchmark Training images so the model keeps what it knew: pass "
            "--replay DIR (a folder with Training/<class>/), or --set replay_ratio=0"
        )
    size = int(meta["preprocessing"]["image_size"])
    weights = replay_weights(replay_pool, size, cfg) if n_replay else None
    replay, holdout = draw_replay(replay_pool, n_replay, cfg.guard_holdout, cfg.seed, weights)
    x_site, y_site = cache_samples(site, size, desc="decode site")
    x_rep, y_rep = cache_samples(replay, size, desc="decode replay")
    x, y = torch.cat([x_site, x_rep]), torch.cat([y_site, y_rep])
    mean, std = preprocessing_of(meta)
    fitted = cfg.method != "finetune"
    if fitted and cfg.calibration_share > 0:
        raise BrainMRIError("calibration_share applies to method=finetune only")
    pool = cache_samples(replay_pool, size, desc="decode benchmark") if fitted else None
    temperature = float(meta.get("info", {}).get("temperature", 1.0))
    calibration = None
    if pool is not None:
        model, history = fit_heads(model, recipe, (x_site, y_site), pool, cfg, meta, temperature)
    else:
        if cfg.calibration_share > 0:
            calibration, first, history = calibrate_on_site(
                model, recipe, meta, cfg, (site, x_site, y_site), (replay, x_rep, y_rep)
            )
            temperature = calibration["temperature"]
        if calibration is not None and not cfg.calibration_refit:
            model = first  # the first fine-tune is the result
        else:
            history = finetune_members(model, recipe, meta, cfg, (x, y), site + replay)
    adapted = model.eval()
    summary = _summary(model_path, (site_dir, replay_dir), site, replay, cfg, history)
    summary["train_seconds"] = round(time.time() - t0, 1)
    if not fitted:  # the fine-tune whose history this is: on every site image, or the first's
        first_only = calibration is not None and not cfg.calibration_refit
        n_train = calibration["fit_images"] + len(replay) if first_only else len(x)
        summary["run"] = fine_tune_length(cfg, n_train)
    info = dict(meta.get("info", {})) | {"adapted": summary}
    if calibration is not None:
        summary["calibration"] = calibration
        info["temperature"] = temperature
    if pool is not None:  # the regressions' probabilities are their own: temperature 1
        gated = cfg.method == "gated"
        head, blocks = ("gated", cfg.gate_blocks) if gated else ("linear", [])
        recipe, info["temperature"] = head_recipe(recipe, head, blocks), 1.0
    out_dir.mkdir(parents=True, exist_ok=True)
    path = save_model(out_dir / MODEL_NAME, adapted, recipe, info, mean=mean, std=std)
    if "guard" in meta and holdout:
        x_hold, _ = cache_samples(holdout, size, desc="decode guard hold-out")
        tensors, guard = refit_guard(adapted, meta, x, y, (x_hold, x_site), cfg.guard_accept)
        add_extra_tensors(path, tensors, {"guard": guard})
        summary["guard_threshold"] = guard["ood_threshold"]
    summary["seconds"] = round(time.time() - t0, 1)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return AdaptResult(path, summary)


def _summary(
    model_path: Path,
    folders: tuple[Path, Path | None],
    site: list[Sample],
    replay: list[Sample],
    cfg: AdaptConfig,
    history: list[list[dict]],
) -> dict:
    """adapt.json: folders (site, replay) as absolute paths; replay null when there was no
    replay folder (replay_ratio 0, or a replay_pool passed by the caller)."""
    from brainmri.data.dedupe import file_sha256

    site_dir, replay_dir = folders
    return {
        "source_model": str(model_path),
        "source_sha256": file_sha256(model_path),
        "site": str(Path(site_dir).resolve()),
        "replay": str(Path(replay_dir).resolve()) if replay_dir is not None else None,
        "site_counts": dict(zip(CLASS_NAMES, class_counts(site), strict=True)),
        "replay_counts": dict(zip(CLASS_NAMES, class_counts(replay), strict=True)),
        "settings": recorded_settings(cfg),
        "history": history,
    }
