"""The training driver: a recipe's stages, epoch after epoch, into a run directory.

Read top to bottom: `train()` checks the run folder, builds the context (grouped split decoded
once, model, normalization), then for each stage of the recipe sets it up (freeze, AdamW,
per-step schedule, gradient scaler) and runs its epochs: one pass over shuffled, augmented
batches (epoch.py), validation, the best checkpoint, the plateau scale, early stopping, a log
row and an atomic `last.pt` (state.py) for `--resume`. A stage starts from the best weights of
the stage before it. At the end: final weights, the temperature fitted on validation, curves.

Several processes (torchrun): each rank trains on its own shard of every epoch's permutation
under DistributedDataParallel (NCCL on GPU, gloo on CPU); validation runs on every rank over the
whole split, so early-stopping decisions agree; only rank 0 writes files. A recipe with
`ensemble: N` trains N such runs as members (ensemble.py) and assembles them.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from brainmri import CLASS_NAMES
from brainmri.config import Recipe, dump_recipe, load_recipe
from brainmri.data.folders import write_file_list
from brainmri.data.mri_augment import TrainAugment
from brainmri.errors import BrainMRIError
from brainmri.model.backbones import input_normalization
from brainmri.model.checkpoint import atomic_write, model_weights, save_model
from brainmri.model.classifier import TumorClassifier
from brainmri.model.shipped import shipped_model_path
from brainmri.train.data import RunData, appearance_draw_weights, load_data
from brainmri.train.distributed import Dist, environment, setup_distributed
from brainmri.train.ensemble import completed_ensemble, train_ensemble
from brainmri.train.epoch import (
    Context,
    StageRun,
    batch_logits,
    setup_stage,
    train_one_epoch,
    validate,
)
from brainmri.train.log import CSV_FIELDS, RunLog
from brainmri.train.loss import (
    class_weights,
    temperature_fit,
    temperature_note,
    weighted_smoothed_ce,
)
from brainmri.train.state import TrainResult, TrainState, load_last, save_last, set_rng_state

__all__ = ["CSV_FIELDS", "TrainResult", "train", "weighted_smoothed_ce"]


def train(
    recipe: Recipe | None,
    data_dir: Path | None,
    run_dir: Path,
    resume: bool = False,
    device: str | None = None,
) -> TrainResult:
    """Train `recipe` on data_dir into run_dir, or continue run_dir (resume=True, recipe None).

    A failure before the run has a resumable checkpoint removes the run folder if this call
    created it; a folder that existed before is left as it was.
    """
    run_dir = Path(run_dir)
    if resume:
        if recipe is not None:
            raise BrainMRIError("--resume continues the recorded recipe: do not pass another")
        if not (run_dir / "recipe.yaml").is_file():
            raise BrainMRIError(f"nothing to resume: {run_dir / 'recipe.yaml'} not found")
        done = completed_run(run_dir)
        if done is not None:  # nothing to train, and nothing to re-fit or rewrite
            return done
        recipe = load_recipe(run_dir / "recipe.yaml")
        data_dir = Path(json.loads((run_dir / "run.json").read_text())["data"])
    elif recipe is None or data_dir is None:
        raise BrainMRIError("a recipe and a data folder are needed unless --resume is given")
    if recipe.model.head == "gated":
        raise BrainMRIError(
            "model.head 'gated' is written by `brainmri adapt --set method=gated`, not trained: "
            "set model.head to 'mlp' or 'linear'"
        )
    created = not run_dir.exists()
    try:
        if recipe.ensemble > 1:
            return train_ensemble(recipe, Path(data_dir), run_dir, resume, device, train_single)
        return train_single(recipe, Path(data_dir), run_dir, resume, device)
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.rglob("last.pt")):
            if setup_distributed(device).main:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise


def completed_run(run_dir: Path) -> TrainResult | None:
    """The recorded result of a run that has nothing left to do (every stage trained, final
    files and temperature written), else None: an unfinished run, or no run at all."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file() or not (run_dir / "run.json").is_file():
        return None
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.ensemble > 1:
        return completed_ensemble(run_dir, recipe)
    if not (run_dir / "last.pt").is_file():
        return None
    saved = load_last(run_dir / "last.pt")
    st: TrainState = saved["state"]
    if saved["stage"] is not None or st.stage < len(recipe.train.stages):
        return None  # `finish` writes a last.pt without stage state once the run is complete
    models = run_dir / "models"
    best, final = models / "best.safetensors", models / "final.safetensors"
    return TrainResult(run_dir, best, final, st.best, st.best_acc, st.epoch, st.elapsed)


def complete_note(result: TrainResult) -> str:
    """The console line for a --resume of a run that is already complete."""
    return (
        f"{result.run_dir} is already complete ({result.epochs_run} epochs in "
        f"{result.wall_seconds / 60:.1f} min): nothing resumed, nothing rewritten; "
        f"best val_loss {result.best_val_loss:.4f} (val_acc {result.best_val_acc:.4f}); "
        f"best model {result.best_path}"
    )


def resume_hint(run_dir: Path) -> str:
    """What to do after an interrupted `brainmri train` into run_dir."""
    if any(Path(run_dir).rglob("last.pt")):
        return f"continue with: brainmri train --resume {shlex.quote(str(run_dir))}"
    return "no epoch had finished: nothing to resume"


def resume_point(recipe: Recipe, run_dir: Path, st: TrainState) -> str:
    """`resuming RUN at stage S/N 'name', epoch E (D done)` for a run continued from last.pt."""
    stages = recipe.train.stages
    s, e = (st.stage + 1, 0) if st.stage_done else (st.stage, st.stage_epoch)
    while s < len(stages) and e >= stages[s].epochs:
        s, e = s + 1, 0
    if s >= len(stages):
        return f"resuming {run_dir} after its last epoch ({st.epoch} done): finishing the run"
    return (
        f"resuming {run_dir} at stage {s + 1}/{len(stages)} '{stages[s].name}', epoch "
        f"{st.epoch + 1} ({st.epoch} done)"
    )


def train_single(
    recipe: Recipe, data_dir: Path, run_dir: Path, resume: bool, device: str | None
) -> TrainResult:
    """One model: the stages of the recipe (see the module doc)."""
    d = setup_distributed(device)
    saved = load_last(run_dir / "last.pt") if resume else None
    if not resume and (run_dir / "last.pt").exists():
        raise BrainMRIError(f"{run_dir} already holds a run: pass --resume or another --out")
    d.barrier()  # every rank has looked at the folder before rank 0 writes into it
    ctx = build_context(recipe, data_dir, d)
    if d.main and not resume:
        write_run_files(run_dir, ctx, data_dir)
    st = TrainState()
    if saved is not None:
        ctx.model.load_state_dict(saved["model"])
        st = saved["state"]
        if d.main:
            tqdm.write(resume_point(recipe, run_dir, st))
    log = RunLog(run_dir, d.main, st.epoch)
    t_start = time.time() - st.elapsed
    while st.stage < len(recipe.train.stages):
        run = setup_stage(ctx, st.stage)
        if saved is not None:  # resumed: the stage in progress and every RNG as they were
            if saved["stage"] is not None:
                run.load_state_dict(saved["stage"])
            set_rng_state(saved["rng"])
            saved = None
        run_stage(ctx, run, st, log, run_dir, t_start)
        end_stage(ctx, st, run_dir)
    log.close()
    return finish(ctx, st, run_dir, time.time() - t_start)


def build_context(recipe: Recipe, data_dir: Path, d: Dist) -> Context:
    """Seeds and threads, the decoded split, the model, its input normalization."""
    if recipe.train.num_threads:
        torch.set_num_threads(recipe.train.num_threads)
    torch.manual_seed(recipe.seed + d.rank)
    check_cam_penalty(recipe, d)  # before the decode: a refusal should not wait for it
    data = load_data(data_dir, recipe, d.device)
    # a run started from a model file gets all its weights from there: no ImageNet weights
    # are read only to be overwritten (the RNG draws of building the model are the same)
    model = TumorClassifier(recipe.model, pretrained=not recipe.model.init_model)
    if recipe.model.init_model:
        start_from(model, recipe.model.init_model)
    model = model.to(d.device)
    if recipe.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = input_normalization(model.backbone)
    weights = class_weights(data.counts).to(d.device) if recipe.train.class_weights else None
    draws = appearance_draw_weights(data, recipe) if recipe.data.balance == "clusters" else None
    return Context(recipe, d, model, data, TrainAugment(recipe.augment), mean, std, weights, draws)


def check_cam_penalty(recipe: Recipe, d: Dist) -> None:
    """A stage's map terms (cam_penalty, cam_apart) need the backbone's forward pass, in one
    process."""
    stages = [s for s in recipe.train.stages if s.map_terms]
    if stages and d.world > 1:
        raise BrainMRIError(
            "train.stages[].cam_penalty and cam_apart need one process (their gradient of a "
            "gradient does not run under DistributedDataParallel): run it without torchrun"
        )
    cached = [s.name for s in stages if s.trainable_fraction == 0]
    if cached and recipe.train.cache_frozen_features:
        raise BrainMRIError(
            f"stage {cached[0]!r} has a map term (cam_penalty or cam_apart) but trains on "
            "cached features (train.cache_frozen_features), which have no map: set one of them to "
            "0/false"
        )


def start_from(model: TumorClassifier, spec: str) -> None:
    """Load a model file's weights into a freshly built classifier (model.init_model)."""
    path = shipped_model_path() if spec == "shipped" else Path(spec).expanduser()
    if not path.is_file():
        raise BrainMRIError(f"model.init_model: no model file at {path}")
    try:
        model.load_state_dict(model_weights(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise BrainMRIError(
            f"model.init_model: {path} does not fit the recipe's model (another backbone, head "
            f"or width?): {first[1].strip() if len(first) > 1 else first[0]}"
        ) from exc


def write_run_files(run_dir: Path, ctx: Context, data_dir: Path) -> None:
    """recipe.yaml, environment.json, run.json, splits/ (with split.json), class labels."""
    data: RunData = ctx.data
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    dump_recipe(ctx.recipe, run_dir / "recipe.yaml")
    write_file_list(run_dir / "splits" / "train.txt", data.train, data_dir)
    write_file_list(run_dir / "splits" / "val.txt", data.val, data_dir)
    (run_dir / "splits" / "split.json").write_text(json.dumps(data.split, indent=2) + "\n")
    labels = json.dumps(list(CLASS_NAMES), indent=2)
    (run_dir / "models" / "class_labels.json").write_text(labels)
    (run_dir / "environment.json").write_text(json.dumps(environment(ctx.d), indent=2))
    run = {
        "data": str(Path(data_dir).resolve()),
        "train_counts": data.counts,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "split": data.split,
        "normalization": {"mean": ctx.mean, "std": ctx.std},
    }
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))


def save(ctx: Context, path: Path, info: dict) -> None:
    """A model file of the current weights, with split and normalization recorded (rank 0)."""
    if ctx.d.main:
        info = info | {"split": ctx.data.split}
        save_model(path, ctx.model, ctx.recipe, info, mean=ctx.mean, std=ctx.std)


def run_stage(
    ctx: Context, run: StageRun, st: TrainState, log: RunLog, run_dir: Path, t_start: float
) -> None:
    """The stage's remaining epochs: train, validate, checkpoint, plateau, early stop, log."""
    tc, stage = ctx.recipe.train, run.config
    if ctx.d.main and st.stage_epoch == 0:
        tqdm.write(
            f"stage {run.index + 1}/{len(tc.stages)} '{stage.name}': top "
            f"{stage.trainable_fraction:.0%} of {len(ctx.model.backbone_units())} backbone "
            f"units trainable, lr {stage.lr:g} (warm-up {stage.warmup_epochs} epoch(s) of "
            f"{run.steps} steps), {stage.epochs} epochs"
        )
    while not st.stage_done and st.stage_epoch < stage.epochs:
        t0 = time.time()
        fig = train_one_epoch(ctx, run, st.epoch, st.stage_epoch)
        val = validate(ctx, run)
        fig |= {"val_loss": val["val_loss"], "val_acc": val["val_acc"]}
        fig["seconds"] = time.time() - t0
        st.epoch += 1
        st.stage_epoch += 1
        monitor = fig["val_loss"] if tc.monitor == "val_loss" else -fig["val_acc"]
        improved = monitor < st.stage_best
        info = {"stage": stage.name, "stage_index": run.index + 1, "epoch": st.epoch}
        info |= {"val_loss": fig["val_loss"], "val_acc": fig["val_acc"]}
        if improved:
            st.stage_best, st.bad_epochs = monitor, 0
            save(ctx, run_dir / "models" / f"stage{run.index + 1}_best.safetensors", info)
            if monitor < st.best:
                st.best, st.best_acc = monitor, fig["val_acc"]
                save(ctx, run_dir / "models" / "best.safetensors", info)
        else:
            st.bad_epochs += 1
        run.schedule.plateau.step(monitor)
        st.stage_done = st.bad_epochs >= tc.early_stopping_patience
        note = ("  *" if improved else "") + ("  early stop" if st.stage_done else "")
        log.epoch(stage.name, st.epoch, st.stage_epoch, stage.epochs, fig, note)
        st.elapsed = time.time() - t_start
        if ctx.d.main:
            save_last(run_dir / "last.pt", ctx.model, st, run.state_dict())


def end_stage(ctx: Context, st: TrainState, run_dir: Path) -> None:
    """The next stage starts from this stage's best weights (the last stage keeps its own)."""
    ctx.d.barrier()  # rank 0 may still be writing the stage's best file
    best = run_dir / "models" / f"stage{st.stage + 1}_best.safetensors"
    if best.exists() and st.stage + 1 < len(ctx.recipe.train.stages):
        from safetensors.torch import load_file

        ctx.model.load_state_dict({k: v.to(ctx.d.device) for k, v in load_file(best).items()})
    st.next_stage()


def finish(ctx: Context, st: TrainState, run_dir: Path, wall: float) -> TrainResult:
    """final.safetensors, the calibrated best model, curves; every rank returns the result."""
    models = run_dir / "models"
    final_path, best_path = models / "final.safetensors", models / "best.safetensors"
    final_state = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    save(ctx, final_path, {"stage": "final", "epoch": st.epoch})
    if ctx.d.main:
        if not best_path.exists():
            save(ctx, best_path, {"stage": "final", "epoch": st.epoch})
        calibrate(ctx, run_dir, wall)
        ctx.model.load_state_dict(final_state)
        from brainmri.evaluate.plots import plot_training_curves

        plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
        st.elapsed = wall
        save_last(run_dir / "last.pt", ctx.model, st, None)
    ctx.d.barrier()
    return TrainResult(
        run_dir, best_path, final_path, st.best, st.best_acc, st.epoch, wall, ctx.model
    )


def calibrate(ctx: Context, run_dir: Path, wall: float) -> None:
    """Fit the softmax temperature on validation; record plain and TTA validation figures in
    the best model file, and the temperature (whether its fit ended on a bound, and whether
    every validation image was right, which leaves it uninformative) in run.json."""
    from safetensors.torch import load_file

    from brainmri.model.checkpoint import read_metadata

    best_path = run_dir / "models" / "best.safetensors"
    ctx.model.load_state_dict({k: v.to(ctx.d.device) for k, v in load_file(best_path).items()})
    tta = ctx.recipe.evaluate.tta
    logits = batch_logits(ctx, ctx.model, ctx.data.x_val, tta)
    y = ctx.data.y_val
    fit = temperature_fit(logits[0], y)
    temperature, all_right = fit["temperature"], fit["temperature_all_right"]
    tta_probs = torch.softmax(logits / temperature, dim=-1).mean(0)
    info = read_metadata(best_path)["info"]
    info.update(
        **fit,
        train_wall_seconds=round(wall, 1),
        val_acc_at_best=float((logits[0].argmax(1) == y).float().mean()),
        val_tta_views=tta,
        val_acc_tta=float((tta_probs.argmax(1) == y).float().mean()),
    )
    save(ctx, best_path, info)
    run = json.loads((run_dir / "run.json").read_text())
    run |= fit
    atomic_write(run_dir / "run.json", lambda tmp: tmp.write_text(json.dumps(run, indent=2)))
    tqdm.write(
        f"temperature fitted on validation: {temperature_note(temperature, all_right)}; "
        f"validation accuracy "
        f"{info['val_acc_at_best']:.4f} plain, {info['val_acc_tta']:.4f} with {tta} TTA views"
    )


DEFAULT_RECIPE = "cpu"
DEFAULT_RECIPE_NOTE = (
    "no --config given: training the `cpu` recipe, the shipped model's (one EfficientNet-Lite0 "
    "at 192 px, 17 epochs). Measured: 44.5 min on a 2-core CPU (docs/RESULTS.md, section 3.1). "
    "For a short run pass --config quick (training ~6 min on 2 cores, section 7)."
)


def refuse_with_resume(given: list[str]) -> None:
    """--resume continues the run as recorded; options it would ignore are refused."""
    if given:
        raise BrainMRIError(
            f"--resume continues the run as recorded in its recipe.yaml and run.json; it does "
            f"not take {', '.join(given)} (start a new run with --out for other settings)"
        )
