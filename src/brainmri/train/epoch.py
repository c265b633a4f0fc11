"""One stage's set-up, one training epoch, and validation (the pieces `loop.train` drives)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from brainmri.config import Recipe, StageConfig
from brainmri.data.transforms import normalize_intensity, to_model_input, tta_views
from brainmri.model.classifier import TumorClassifier
from brainmri.train.cam_penalty import CamPenalty, apart, head_masks, other_classes, outside_share
from brainmri.train.data import RunData
from brainmri.train.distributed import Dist
from brainmri.train.loss import weighted_smoothed_ce
from brainmri.train.precision import autocast, grad_scaler
from brainmri.train.schedule import PlateauScale, StageSchedule


@dataclass
class Context:
    """What every epoch of a run reads: recipe, ranks, model, data, preprocessing."""

    recipe: Recipe
    d: Dist
    model: TumorClassifier
    data: RunData
    augment: nn.Module  # data.mri_augment.TrainAugment
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_weights: torch.Tensor | None
    draw_weights: torch.Tensor | None = None  # data.balance: per-image draw weights

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's seeded order of training images: a permutation, or as many weighted
        draws with replacement when the recipe balances classes inside appearance clusters."""
        gen = torch.Generator().manual_seed(self.recipe.seed * 100_003 + epoch)
        n = len(self.data.x_train)
        if self.draw_weights is None:
            return torch.randperm(n, generator=gen)
        return torch.multinomial(self.draw_weights, n, replacement=True, generator=gen)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] or uint8 gray batch -> normalized 3-channel model input."""
        x = normalize_intensity(x, self.recipe.data.intensity)
        return to_model_input(x, self.recipe.model.channels_last, self.mean, self.std)


@dataclass
class StageRun:
    """One stage, set up: what trains, with which optimizer, schedule and scaler."""

    index: int
    config: StageConfig
    net: nn.Module  # the model, or its head on cached features; DDP-wrapped on several ranks
    optimizer: torch.optim.Optimizer
    schedule: StageSchedule
    scaler: torch.amp.GradScaler
    steps: int  # optimizer steps per epoch on each rank
    batch: int  # images per step on each rank
    features: tuple[torch.Tensor, torch.Tensor] | None  # cached (train, val) backbone features

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])


def steps_per_epoch(n: int, batch: int) -> int:
    """Batches in one pass over n images; a last batch of one image is dropped, because
    BatchNorm cannot train on a single image."""
    steps = math.ceil(n / batch)
    return steps - 1 if steps > 1 and n % batch == 1 else steps


def setup_stage(ctx: Context, index: int) -> StageRun:
    """Freeze to the stage's fraction; AdamW, the per-step schedule, the scaler; DDP wrap."""
    tc, d, model = ctx.recipe.train, ctx.d, ctx.model
    stage = tc.stages[index]
    model.bn_stats_frozen = stage.freeze_bn_stats
    model.set_trainable_fraction(stage.trainable_fraction)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    batch = max(1, tc.batch_size // d.world)
    steps = steps_per_epoch(len(ctx.data.x_train) // d.world, batch)
    if tc.max_steps_per_epoch:
        steps = min(steps, tc.max_steps_per_epoch)
    plateau = PlateauScale(tc.plateau_patience, tc.plateau_factor)
    schedule = StageSchedule(optimizer, stage, steps, plateau)
    features = None
    if tc.cache_frozen_features and stage.trainable_fraction == 0:
        features = frozen_features(ctx)
    net: nn.Module = model.head if features is not None else model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    scaler = grad_scaler(d.device, tc.amp)
    return StageRun(index, stage, net, optimizer, schedule, scaler, steps, batch, features)


def train_one_epoch(ctx: Context, run: StageRun, epoch: int, stage_epoch: int) -> dict:
    """One pass over this rank's shard of the epoch's seeded permutation; figures of all ranks."""
    d, recipe, model = ctx.d, ctx.recipe, ctx.model
    x_train, y_train = ctx.data.x_train, ctx.data.y_train
    t0 = time.time()
    run.net.train()
    perm = ctx.epoch_order(epoch)
    per_rank = len(perm) // d.world
    shard = perm[d.rank * per_rank : (d.rank + 1) * per_rank]
    aug_gen = torch.Generator(device=d.device).manual_seed(recipe.seed * 7919 + epoch * 31 + d.rank)
    totals = torch.zeros(5, device=d.device)  # loss, correct, seen, map outside, maps' shortfall
    lr = 0.0
    terms = run.features is None and run.config.map_terms
    cam = CamPenalty(model) if terms else contextlib.nullcontext()
    other_gen = torch.Generator().manual_seed(recipe.seed * 4099 + epoch)
    with cam:
        for step in range(run.steps):
            lr = run.schedule.set_step(stage_epoch * run.steps + step)
            idx = shard[step * run.batch : (step + 1) * run.batch].to(x_train.device)
            yb = y_train[idx].to(d.device, non_blocking=True)
            if run.features is not None:
                xb = run.features[0][idx.to(run.features[0].device)]
            else:
                xb = ctx.augment(x_train[idx].to(d.device, non_blocking=True), generator=aug_gen)
                masks = head_masks(xb) if terms else None
                xb = ctx.model_input(xb)
            with autocast(d.device, recipe.train.amp):
                logits = run.net(xb)
            loss = weighted_smoothed_ce(
                logits, yb, ctx.class_weights, recipe.train.label_smoothing
            )
            if model.l2 > 0:
                loss = loss + model.l2_penalty()
            if terms:
                outside, short = map_term_values(cam, run.config, logits, yb, masks, other_gen)
                loss = loss + run.config.cam_penalty * outside + run.config.cam_apart * short
                totals[3:5] += torch.stack([outside, short]).detach() * len(yb)
            step_optimizer(run, loss)
            totals[0] += loss.detach().float() * len(yb)
            totals[1] += (logits.argmax(1) == yb).sum()
            totals[2] += len(yb)
    train_seconds = time.time() - t0
    if d.world > 1:
        dist.all_reduce(totals)
        # BatchNorm running stats moved on each rank's own batches: take rank 0's (as DDP's
        # next forward would) so every rank validates, and decides, identically
        for buf in model.buffers():
            dist.broadcast(buf, 0)
    seen = max(float(totals[2]), 1.0)
    fig = {
        "lr": lr,
        "train_loss": float(totals[0]) / seen,
        "train_acc": float(totals[1]) / seen,
        "images_per_s": seen / max(train_seconds, 1e-9),
    }
    if terms:
        fig["train_cam_outside"] = float(totals[3]) / seen
        if run.config.cam_apart > 0:
            fig["train_cam_apart"] = float(totals[4]) / seen
    return fig


def map_term_values(
    cam: CamPenalty,
    stage: StageConfig,
    logits: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean share of the true class's map outside the head, and (when the stage
    asks for it) the mean shortfall of that map's distance from another class's map."""
    true_maps = cam.maps(logits, y)
    outside = outside_share(true_maps, masks).mean()
    if stage.cam_apart == 0:
        return outside, torch.zeros((), device=outside.device)
    others = cam.maps(logits, other_classes(y, logits.shape[1], generator))
    return outside, apart(true_maps, others, stage.cam_apart_margin).mean()


def step_optimizer(run: StageRun, loss: torch.Tensor) -> None:
    """Zero the gradients, backward through the (scaled) loss, step, update the scaler."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()


@torch.inference_mode()
def view_logits(
    model: nn.Module,
    x: torch.Tensor,
    recipe: Recipe,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    tta: int = 1,
) -> torch.Tensor:
    """Logits (V, N, C), float32 on CPU, of uint8 images under `tta` views (eval mode)."""
    was_training = model.training
    model.eval()
    chunks = []
    cl, intensity, bs = (
        recipe.model.channels_last,
        recipe.data.intensity,
        recipe.evaluate.batch_size,
    )
    for start in range(0, len(x), bs):
        xb = x[start : start + bs].to(device).float() / 255.0
        with autocast(device, recipe.train.amp):
            views = [
                model(to_model_input(normalize_intensity(v, intensity), cl, mean, std)).float()
                for _, v in tta_views(xb, tta)
            ]
        chunks.append(torch.stack(views).cpu())
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def batch_logits(ctx: Context, model: nn.Module, x: torch.Tensor, tta: int = 1) -> torch.Tensor:
    """view_logits with the run's recipe, device and normalization."""
    return view_logits(model, x, ctx.recipe, ctx.d.device, ctx.mean, ctx.std, tta)


def validate(ctx: Context, run: StageRun | None = None) -> dict:
    """Plain-view validation loss (unweighted, unsmoothed cross-entropy) and accuracy."""
    y = ctx.data.y_val
    if run is not None and run.features is not None:
        with torch.inference_mode():
            ctx.model.head.eval()
            logits = ctx.model.head(run.features[1]).float().cpu()
    else:
        logits = batch_logits(ctx, ctx.model, ctx.data.x_val)[0]
    return {
        "val_loss": float(F.cross_entropy(logits, y)),
        "val_acc": float((logits.argmax(1) == y).float().mean()),
        "logits": logits,
    }


class _Pooled(nn.Module):
    """The classifier up to its pooled backbone features."""

    def __init__(self, model: TumorClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def frozen_features(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features of the un-augmented train and val images, computed once.

    With the backbone frozen (and its BatchNorm in eval) the head sees exactly these features,
    so a frozen epoch costs a pass through the head instead of the backbone.
    """
    pooled = _Pooled(ctx.model)
    out = [
        batch_logits(ctx, pooled, x)[0].to(ctx.d.device).clone()  # clone: not an inference tensor
        for x in (ctx.data.x_train, ctx.data.x_val)
    ]
    return out[0], out[1]
