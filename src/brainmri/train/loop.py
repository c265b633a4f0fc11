"""The one training loop: stages, schedule, callbacks, checkpoints, resume, DDP.

Read top to bottom: `train()` prepares data and model, then runs each stage of the recipe.
Every epoch: set the LR (cosine with warm-up × plateau scale), one pass over shuffled batches
augmented on the batched uint8 cache, validation, CSV/TensorBoard logging, best-checkpoint
saving, ReduceLROnPlateau, early stopping, and an atomic `last.pt` for `--resume`.
A stage starts from the best weights of the stage before it.

Multi-process: launched by `torchrun`, each rank trains on its own shard of every epoch's
permutation (DistributedDataParallel, NCCL on GPU, gloo on CPU); validation runs on every
rank over the whole split, so early-stopping decisions agree; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from brainmri import CLASS_NAMES, __version__
from brainmri.config import Recipe, dump_recipe, load_recipe
from brainmri.data.cache import cache_samples
from brainmri.data.folders import (
    Sample,
    class_counts,
    read_file_list,
    scan_split,
    stratified_split,
    write_file_list,
)
from brainmri.data.transforms import BatchAugment, normalize_intensity, to_model_input
from brainmri.errors import BrainMRIError
from brainmri.infer.core import autocast_context, predict_logits
from brainmri.model.checkpoint import atomic_write, save_model
from brainmri.model.classifier import TumorClassifier
from brainmri.train.schedule import PlateauScale, cosine_with_warmup

CSV_FIELDS = [
    "stage",
    "epoch",
    "stage_epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
]


# --- loss ---------------------------------------------------------------------------------
def class_weights(counts: list[int]) -> torch.Tensor:
    """total / (classes · count) per class (Keras 'balanced')."""
    total, k = sum(counts), len(counts)
    return torch.tensor([total / (k * max(c, 1)) for c in counts], dtype=torch.float32)


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot with label smoothing: 1 − ε + ε/K on the label, ε/K elsewhere (0.925/0.025)."""
    off = smoothing / num_classes
    out = torch.full((len(labels), num_classes), off, device=labels.device)
    out.scatter_(1, labels[:, None], 1.0 - smoothing + off)
    return out


def weighted_smoothed_ce(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """Mean over the batch of w[y] · CE(smoothed target, softmax(logits))."""
    target = smooth_targets(labels, logits.shape[1], smoothing)
    per_sample = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is not None:
        per_sample = per_sample * weights[labels]
    return per_sample.mean()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T minimizing validation NLL of softmax(logits / T) (a 1-D search on log T)."""
    grid = torch.linspace(math.log(0.05), math.log(5.0), 400).exp()
    nll = torch.stack([F.cross_entropy(logits / t, labels) for t in grid])
    return float(grid[int(nll.argmin())])


# --- setup --------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> Dist:
    """Use torchrun's env (WORLD_SIZE > 1) for DDP; else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        dev = torch.device(f"cuda:{local}") if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(dev)
        return Dist(dist.get_rank(), world, dev)
    if device:
        return Dist(0, 1, torch.device(device))
    return Dist(0, 1, torch.device("cuda" if want_cuda else "cpu"))


def environment(d: Dist, recipe: Recipe) -> dict:
    import timm

    env = {
        "brainmri": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(d.device),
        "world_size": d.world,
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if d.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(d.device)
    return env


def load_split(data_dir: Path, recipe: Recipe) -> tuple[list[Sample], list[Sample]]:
    """Train/val lists: the clean step's splits/ files if present, else a seeded split."""
    split_dir = data_dir / "splits"
    if (split_dir / "train.txt").is_file() and (split_dir / "val.txt").is_file():
        train = read_file_list(split_dir / "train.txt", data_dir)
        val = read_file_list(split_dir / "val.txt", data_dir)
    else:
        samples = scan_split(data_dir, "Training")
        if not samples:
            raise BrainMRIError(f"no Training/<class>/ images under {data_dir}")
        split_seed = recipe.seed if recipe.data.split_seed is None else recipe.data.split_seed
        train, val = stratified_split(samples, recipe.data.val_fraction, split_seed)
    cap = recipe.data.max_per_class
    if cap:
        train = [
            s for k in range(len(CLASS_NAMES)) for s in [t for t in train if t.label == k][:cap]
        ]
        val = [s for k in range(len(CLASS_NAMES)) for s in [t for t in val if t.label == k][:cap]]
    return train, val


# --- the loop -----------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    final_path: Path
    best_val_loss: float
    best_val_acc: float
    epochs_run: int
    wall_seconds: float


def train(
    recipe: Recipe | None,
    data_dir: Path,
    run_dir: Path,
    resume: bool = False,
    device: str | None = None,
) -> TrainResult:
    run_dir = Path(run_dir)
    on_disk = run_dir / "recipe.yaml"
    if (recipe is not None and not resume and recipe.ensemble > 1) or (
        resume and on_disk.is_file() and load_recipe(on_disk).ensemble > 1
    ):
        from brainmri.train.ensemble import train_ensemble

        return train_ensemble(recipe, data_dir, run_dir, resume, device)
    d = setup_distributed(device)
    state_path = run_dir / "last.pt"
    if resume:
        if not state_path.is_file():
            raise BrainMRIError(f"nothing to resume: {state_path} not found")
        recipe = load_recipe(run_dir / "recipe.yaml")
        data_dir = Path(json.loads((run_dir / "run.json").read_text())["data"])
    elif recipe is None:
        raise BrainMRIError("a recipe is needed unless --resume is given")
    elif state_path.exists():
        raise BrainMRIError(f"{run_dir} already holds a run: pass --resume or another --out")
    tc = recipe.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(recipe.seed + d.rank)
    models_dir = run_dir / "models"
    if d.main:
        models_dir.mkdir(parents=True, exist_ok=True)

    # data: decoded once into memory as uint8
    train_s, val_s = load_split(data_dir, recipe)
    size = recipe.data.image_size
    x_train, y_train = cache_samples(train_s, size, desc="decode train")
    x_val, y_val = cache_samples(val_s, size, desc="decode val")
    if d.device.type == "cuda":
        x_train, y_train = x_train.to(d.device), y_train.to(d.device)
    counts = class_counts(train_s)
    weights = class_weights(counts).to(d.device) if tc.class_weights else None
    if d.main:
        dump_recipe(recipe, run_dir / "recipe.yaml")
        write_file_list(run_dir / "splits" / "train.txt", train_s, data_dir)
        write_file_list(run_dir / "splits" / "val.txt", val_s, data_dir)
        (models_dir / "class_labels.json").write_text(json.dumps(list(CLASS_NAMES), indent=2))
        (run_dir / "environment.json").write_text(json.dumps(environment(d, recipe), indent=2))
        (run_dir / "run.json").write_text(
            json.dumps(
                {
                    "data": str(Path(data_dir).resolve()),
                    "train_counts": counts,
                    "n_train": len(train_s),
                    "n_val": len(val_s),
                },
                indent=2,
            )
        )

    model = TumorClassifier(recipe.model).to(d.device)
    if recipe.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = BatchAugment(recipe.augment)

    # state carried across epochs, stages and resumes
    st = {
        "stage": 0,
        "stage_epoch": 0,
        "epoch": 0,
        "best": math.inf,
        "best_acc": 0.0,
        "stage_best": math.inf,
        "bad_epochs": 0,
        "plateau": None,
        "optim": None,
        "elapsed": 0.0,
        "stage_done": False,
    }
    if resume:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        st.update(saved["state"])
    t_start = time.time() - st["elapsed"]

    writer = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        csv_path = run_dir / "metrics.csv"
        if not csv_path.exists():
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_FIELDS)
        elif resume:
            _truncate_metrics(csv_path, st["epoch"])
            for stale in run_dir.rglob(".*.tmp"):  # left by a kill inside atomic_write
                stale.unlink()

    per_rank_batch = max(1, tc.batch_size // d.world)
    final_weights: dict[str, torch.Tensor] | None = None
    for stage_idx in range(st["stage"], len(tc.stages)):
        stage = tc.stages[stage_idx]
        stage_best_path = models_dir / f"stage{stage_idx + 1}_best.safetensors"
        fresh_stage = st["stage"] != stage_idx or (st["stage_epoch"] == 0 and st["optim"] is None)
        if fresh_stage:
            st.update(
                stage=stage_idx,
                stage_epoch=0,
                stage_best=math.inf,
                bad_epochs=0,
                plateau=None,
                optim=None,
                stage_done=False,
            )
        model.set_trainable_fraction(stage.trainable_fraction)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        if st["optim"] is not None:
            optimizer.load_state_dict(st["optim"])
        plateau = PlateauScale(tc.plateau_patience, tc.plateau_factor)
        if st["plateau"] is not None:
            plateau.load_state_dict(st["plateau"])
        # frozen backbone + cache_frozen_features: the head trains on features computed once
        feats = None
        if tc.cache_frozen_features and stage.trainable_fraction == 0:
            feats = _frozen_features(model, x_train, x_val, recipe, d)
        net: nn.Module = model.head if feats is not None else model
        if d.world > 1:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )
        n_units = len(model.backbone_units())
        n_trainable = sum(p.numel() for p in params)
        if d.main:
            tqdm.write(
                f"stage {stage_idx + 1}/{len(tc.stages)} '{stage.name}': top "
                f"{stage.trainable_fraction:.0%} of {n_units} backbone units trainable, "
                f"{n_trainable:,} parameters, lr {stage.lr:g}, {stage.epochs} epochs"
            )

        while not st["stage_done"] and st["stage_epoch"] < stage.epochs:
            e = st["stage_epoch"]
            lr = cosine_with_warmup(e, stage.epochs, stage.lr, stage.min_lr, stage.warmup_epochs)
            lr *= plateau.scale
            for group in optimizer.param_groups:
                group["lr"] = lr

            # one pass over this rank's shard of a seeded permutation
            t0 = time.time()
            net.train()
            gen = torch.Generator().manual_seed(recipe.seed * 100_003 + st["epoch"])
            perm = torch.randperm(len(x_train), generator=gen)
            per_rank = len(perm) // d.world
            shard = perm[d.rank * per_rank : (d.rank + 1) * per_rank]
            steps = math.ceil(len(shard) / per_rank_batch)
            if tc.max_steps_per_epoch:
                steps = min(steps, tc.max_steps_per_epoch)
            aug_gen = torch.Generator(device=d.device).manual_seed(
                recipe.seed * 7919 + st["epoch"] * 31 + d.rank
            )
            loss_sum = torch.zeros((), device=d.device)
            correct = torch.zeros((), device=d.device)
            seen = 0
            bar = tqdm(
                range(steps),
                desc=f"{stage.name} {e + 1}/{stage.epochs}",
                leave=False,
                disable=not d.main,
                unit="batch",
                mininterval=2.0,
            )
            for step in bar:
                idx = shard[step * per_rank_batch : (step + 1) * per_rank_batch].to(x_train.device)
                yb = y_train[idx].to(d.device, non_blocking=True)
                if feats is not None:
                    xb = feats[0][idx.to(feats[0].device)]
                else:
                    xb = augment(x_train[idx].to(d.device, non_blocking=True), generator=aug_gen)
                    xb = normalize_intensity(xb, recipe.data.intensity)
                    xb = to_model_input(xb, recipe.model.channels_last)
                with autocast_context(d.device, tc.amp):
                    logits = net(xb)
                loss = weighted_smoothed_ce(logits, yb, weights, tc.label_smoothing)
                if model.l2 > 0:
                    loss = loss + model.l2_penalty()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(yb)
            totals = torch.stack(
                [loss_sum, correct.float(), torch.tensor(float(seen), device=d.device)]
            )
            if d.world > 1:
                dist.all_reduce(totals)
                # BatchNorm running stats moved on each rank's own batches: take rank 0's (as
                # DDP's next forward would) so every rank validates, and decides, identically
                for buf in model.buffers():
                    dist.broadcast(buf, 0)
            train_loss, train_acc = float(totals[0] / totals[2]), float(totals[1] / totals[2])
            train_seconds = time.time() - t0

            # validation (every rank, whole split): plain log-loss and accuracy
            if feats is not None:
                with torch.inference_mode():
                    model.head.eval()
                    val_logits = model.head(feats[1]).float().cpu()
            else:
                _, val_logits = predict_logits(
                    model,
                    x_val,
                    tc.batch_size * 2,
                    d.device,
                    recipe.model.channels_last,
                    tc.amp,
                    intensity=recipe.data.intensity,
                )
                val_logits = val_logits[0]
            val_loss = float(F.cross_entropy(val_logits, y_val)) if len(y_val) else train_loss
            val_acc = (
                float((val_logits.argmax(1) == y_val).float().mean()) if len(y_val) else train_acc
            )
            seconds = time.time() - t0
            st["epoch"] += 1
            st["stage_epoch"] += 1

            # callbacks: best checkpoint, plateau, early stopping
            monitor = val_loss if tc.monitor == "val_loss" else -val_acc
            improved = monitor < st["stage_best"]
            info = {
                "stage": stage.name,
                "stage_index": stage_idx + 1,
                "epoch": st["epoch"],
                "val_loss": val_loss,
                "val_acc": val_acc,
            }
            if improved:
                st["stage_best"], st["bad_epochs"] = monitor, 0
                if d.main:
                    save_model(stage_best_path, model, recipe, info)
                if monitor < st["best"]:
                    st["best"], st["best_acc"] = monitor, val_acc
                    if d.main:
                        save_model(models_dir / "best.safetensors", model, recipe, info)
            else:
                st["bad_epochs"] += 1
            plateau.step(monitor)
            if st["bad_epochs"] >= tc.early_stopping_patience:
                st["stage_done"] = True

            if d.main:
                row = [
                    stage.name,
                    st["epoch"],
                    e + 1,
                    f"{lr:.6g}",
                    f"{train_loss:.5f}",
                    f"{train_acc:.5f}",
                    f"{val_loss:.5f}",
                    f"{val_acc:.5f}",
                    f"{seconds:.1f}",
                    f"{seen * d.world / train_seconds:.2f}",
                ]
                with (run_dir / "metrics.csv").open("a", newline="") as f:
                    csv.writer(f).writerow(row)
                for key, val in (
                    ("loss/train", train_loss),
                    ("loss/val", val_loss),
                    ("acc/train", train_acc),
                    ("acc/val", val_acc),
                    ("lr", lr),
                ):
                    writer.add_scalar(key, val, st["epoch"])
                tqdm.write(
                    f"  epoch {st['epoch']:3d} [{stage.name} {e + 1}/{stage.epochs}] "
                    f"lr {lr:.2e}  loss {train_loss:.4f} acc {train_acc:.4f}  "
                    f"val_loss {val_loss:.4f} val_acc {val_acc:.4f}  "
                    f"{seconds:.0f}s {seen * d.world / train_seconds:.1f} img/s"
                    + ("  *" if improved else "")
                    + ("  early stop" if st["stage_done"] else "")
                )
                st["elapsed"] = time.time() - t_start
                st["plateau"], st["optim"] = plateau.state_dict(), optimizer.state_dict()
                snapshot = {"model": model.state_dict(), "state": dict(st)}
                atomic_write(state_path, lambda tmp, s=snapshot: torch.save(s, tmp))

        # next stage starts from this stage's best weights
        final_weights = {k: v.clone() for k, v in model.state_dict().items()}
        if d.world > 1:
            dist.barrier()  # every rank, before the check: rank 0 may still be writing the file
        if stage_best_path.exists() and stage_idx + 1 < len(tc.stages):
            _load_weights(model, stage_best_path)
        st.update(stage=stage_idx + 1, stage_epoch=0, optim=None, plateau=None, stage_done=False)

    # the end: final weights, calibration on validation, curves
    if final_weights is not None:
        model.load_state_dict(final_weights)
    wall = time.time() - t_start
    final_path = models_dir / "final.safetensors"
    best_path = models_dir / "best.safetensors"
    if d.main:
        save_model(final_path, model, recipe, {"stage": "final", "epoch": st["epoch"]})
        if not best_path.exists():
            save_model(best_path, model, recipe, {"stage": "final", "epoch": st["epoch"]})
        _calibrate(best_path, x_val, y_val, recipe, d, wall)
        from brainmri.evaluate.plots import plot_training_curves

        plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
        writer.close()
        st["elapsed"] = wall
        atomic_write(
            state_path,
            lambda tmp: torch.save({"model": model.state_dict(), "state": dict(st)}, tmp),
        )
    # Test hook (tests/test_ddp.py), off unless BRAINMRI_DDP_DUMP_DIR is set: every rank writes
    # rank{r}.json with what it ended with, so a test can check that DDP kept the ranks agreeing.
    dump_dir = os.environ.get("BRAINMRI_DDP_DUMP_DIR")
    if dump_dir:
        view = {
            "rank": d.rank,
            "world": d.world,
            "epochs": st["epoch"],
            "best": st["best"],
            "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
            "buffer_sum": float(sum(b.detach().double().sum() for b in model.buffers())),
        }
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        (Path(dump_dir) / f"rank{d.rank}.json").write_text(json.dumps(view))
    if d.world > 1:
        dist.barrier()
    return TrainResult(
        run_dir, best_path, final_path, st["best"], st["best_acc"], st["epoch"], wall
    )


class _Features(nn.Module):
    """The classifier up to the pooled features (for predict_logits' batching + preprocessing)."""

    def __init__(self, model: TumorClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def _frozen_features(
    model: TumorClassifier, x_train: torch.Tensor, x_val: torch.Tensor, recipe: Recipe, d: Dist
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features of the un-augmented train and val images, computed once.

    With the backbone frozen (and its BatchNorm in eval) the head sees exactly these features,
    so a frozen epoch costs a pass through the head instead of the backbone.
    """
    t0 = time.time()
    out = []
    for x in (x_train, x_val):
        _, f = predict_logits(
            _Features(model), x, recipe.evaluate.batch_size, d.device,
            recipe.model.channels_last, recipe.train.amp, intensity=recipe.data.intensity,
        )  # fmt: skip
        out.append(f[0].to(d.device).clone())  # clone: a normal tensor, not an inference one
    if d.main:
        tqdm.write(f"backbone features cached for the frozen stage in {time.time() - t0:.1f}s")
    return out[0], out[1]


def _truncate_metrics(csv_path: Path, epochs_done: int) -> None:
    """Drop rows logged after the last checkpoint (a kill between the CSV row and last.pt)."""
    import io

    rows = list(csv.reader(csv_path.open(newline="")))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[1]) <= epochs_done]
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    atomic_write(csv_path, lambda tmp: tmp.write_text(buf.getvalue()))


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(
        {k: v.to(next(model.parameters()).device) for k, v in load_file(str(path)).items()}
    )


def _calibrate(
    path: Path, x_val: torch.Tensor, y_val: torch.Tensor, recipe: Recipe, d: Dist, wall: float
) -> None:
    """Fit a softmax temperature on the validation split; store it in the best model's metadata."""
    from brainmri.infer.core import load_for_inference
    from brainmri.model.checkpoint import read_metadata

    loaded = load_for_inference(path, d.device)
    model = loaded.model
    _, logits = predict_logits(
        model,
        x_val,
        recipe.evaluate.batch_size,
        d.device,
        loaded.channels_last,
        recipe.train.amp,
        intensity=loaded.intensity,
    )
    temperature = fit_temperature(logits[0], y_val) if len(y_val) else 1.0
    info = read_metadata(path)["info"]
    info.update(
        temperature=temperature,
        train_wall_seconds=round(wall, 1),
        val_acc_at_best=float((logits[0].argmax(1) == y_val).float().mean())
        if len(y_val)
        else None,
    )
    save_model(path, model, recipe, info)
    tqdm.write(f"temperature fitted on validation: {temperature:.3f}")
