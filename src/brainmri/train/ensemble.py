"""Ensembles: train members one after another on one validation split, then combine them.

A recipe with `ensemble: N` trains N members (seeds seed, seed+1, ...; every member uses the
split of `data.split_seed`, default the recipe seed) into RUN/member<k>/, each an ordinary run
with its own metrics, curves and --resume. `assemble` then writes RUN/models/{best,final}
.safetensors: one model file whose forward averages the members' logits, with a softmax
temperature fitted on the shared validation split. Members validated on different splits are
refused: their average would be scored on images some member trained on. A member that is itself
an ensemble is refused too (its members would weigh less than the others): pass its members.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from brainmri import CLASS_NAMES
from brainmri.config import Recipe, dump_recipe, load_recipe
from brainmri.data.cache import cache_samples
from brainmri.data.dedupe import file_sha256
from brainmri.data.folders import read_file_list
from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import load_model, preprocessing_of, read_metadata, save_model
from brainmri.model.ensemble import EnsembleClassifier
from brainmri.train.data import split_seed
from brainmri.train.distributed import setup_distributed
from brainmri.train.epoch import view_logits
from brainmri.train.loss import (
    temperature_fit,
    temperature_note,
)
from brainmri.train.state import TrainResult


def member_recipe(recipe: Recipe, k: int) -> Recipe:
    """Member k (0-based): seed + k, the ensemble's split seed, trained as a single model."""
    data = recipe.data.model_copy(update={"split_seed": split_seed(recipe)})
    return recipe.model_copy(update={"seed": recipe.seed + k, "ensemble": 1, "data": data})


TrainOne = Callable[[Recipe, Path, Path, bool, "str | None"], TrainResult]


def train_ensemble(
    recipe: Recipe,
    data_dir: Path,
    run_dir: Path,
    resume: bool,
    device: str | None,
    train_one: TrainOne,
) -> TrainResult:
    """Train (or resume) every member in turn with `train_one`, then assemble them.

    Every rank inspects the run folder before rank 0 writes into it (a barrier between), so
    under torchrun a slower rank never finds the folder its peer just created.
    """
    d = setup_distributed(device)
    if not resume and (run_dir / "recipe.yaml").exists():
        raise BrainMRIError(f"{run_dir} already holds a run: pass --resume or another --out")
    d.barrier()
    if d.main and not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
        (run_dir / "run.json").write_text(
            json.dumps({"data": str(Path(data_dir).resolve())}, indent=2)
        )
    d.barrier()
    members = []
    for k in range(recipe.ensemble):
        mdir = run_dir / f"member{k + 1}"
        members.append(mdir)
        if (mdir / "models" / "final.safetensors").is_file():
            tqdm.write(f"member {k + 1}/{recipe.ensemble}: already trained ({mdir})")
            continue
        tqdm.write(f"member {k + 1}/{recipe.ensemble}: seed {recipe.seed + k} -> {mdir}")
        again = resume and (mdir / "last.pt").is_file()
        train_one(member_recipe(recipe, k), data_dir, mdir, again, device)
    summary = {"best_val_loss": float("nan"), "val_acc": float("nan")}
    summary |= {"train_wall_seconds": 0.0, "assemble_seconds": 0.0}
    if d.main:
        summary = assemble(members, run_dir, data_dir, device=d.device)
    d.barrier()
    return _result(run_dir, members, summary)


def completed_ensemble(run_dir: Path, recipe: Recipe) -> TrainResult | None:
    """The recorded result of an ensemble run that trained and assembled every member, else
    None (run.json gains the assembly's figures last, when everything else is written)."""
    summary = json.loads((run_dir / "run.json").read_text())
    if "assemble_seconds" not in summary:
        return None
    return _result(run_dir, [run_dir / f"member{k + 1}" for k in range(recipe.ensemble)], summary)


def _result(run_dir: Path, members: list[Path], summary: dict) -> TrainResult:
    models = run_dir / "models"
    return TrainResult(
        run_dir,
        models / "best.safetensors",
        models / "final.safetensors",
        summary["best_val_loss"],
        summary["val_acc"],
        sum(_epochs(m) for m in members),
        summary["train_wall_seconds"] + summary["assemble_seconds"],  # members + assembly
    )


def _epochs(member_dir: Path) -> int:
    rows = (member_dir / "metrics.csv").read_text().splitlines()
    return max(len(rows) - 1, 0)


def _check_members(member_dirs: list[Path]) -> list[Recipe]:
    """Distinct finished runs sharing image size, preprocessing, model shape and val files."""
    if len(member_dirs) < 2:
        raise BrainMRIError("an ensemble needs at least two member runs")
    recipes, vals, norms, seen = [], [], [], {}
    for m in member_dirs:
        for need in ("recipe.yaml", "splits/val.txt", "models/best.safetensors"):
            if not (m / need).is_file():
                raise BrainMRIError(f"{m} is not a finished training run (no {need})")
        meta = read_metadata(m / "models" / "best.safetensors")
        recipes.append(load_recipe(m / "recipe.yaml"))
        _refuse_nested(m, recipes[-1], meta)
        digest = file_sha256(m / "models" / "best.safetensors")
        if digest in seen:
            raise BrainMRIError(
                f"{m} and {seen[digest]} are the same run (identical best model): an ensemble "
                "of copies is one model counted twice"
            )
        seen[digest] = m
        vals.append((m / "splits" / "val.txt").read_text())
        norms.append(preprocessing_of(meta))
    first = recipes[0]
    for m, r, v, n in zip(member_dirs[1:], recipes[1:], vals[1:], norms[1:], strict=True):
        if v != vals[0]:
            raise BrainMRIError(
                f"{m} was validated on other images than {member_dirs[0]} (split seeds "
                f"{split_seed(r)} vs {split_seed(first)}): train members with one "
                "data.split_seed, or the ensemble's validation figures would be leaked"
            )
        same_model = r.model.model_dump(exclude={"weights", "weights_file"}) == (
            first.model.model_dump(exclude={"weights", "weights_file"})
        )
        if not same_model or r.data.image_size != first.data.image_size:
            raise BrainMRIError(f"{m} has another model shape or image size than {member_dirs[0]}")
        if r.data.intensity != first.data.intensity or n != norms[0]:
            raise BrainMRIError(
                f"{m} uses another intensity mode or normalization than {member_dirs[0]}"
            )
    return recipes


def _refuse_nested(run: Path, recipe: Recipe, meta: dict) -> None:
    """A member that is itself an ensemble would weigh its own members by 1/(N·n): refused."""
    n = max(recipe.ensemble, int(meta.get("recipe", {}).get("ensemble", 1)))
    if n <= 1:
        return
    inner = [str(mi["run"]) for mi in meta.get("info", {}).get("members", []) if "run" in mi]
    of = f" ({', '.join(inner)})" if inner else ""
    raise BrainMRIError(
        f"{run} is already an ensemble of {n} runs{of}: pass its member runs instead"
    )


def assemble(
    member_dirs: list[Path],
    out_dir: Path,
    data_dir: Path | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Combine finished member runs into OUT/models/{best,final}.safetensors (+ run files).

    Returns validation figures for the ensemble and each member, computed the same way
    (plain view, raw-logit cross-entropy as in training, accuracy), so the two can be compared.
    """
    t0 = time.time()
    member_dirs = [Path(m) for m in member_dirs]
    recipes = _check_members(member_dirs)
    data_dir = Path(data_dir or json.loads((member_dirs[0] / "run.json").read_text())["data"])
    dev = torch.device(device or "cpu")
    first = recipes[0]
    data = first.data.model_copy(update={"split_seed": split_seed(first)})
    recipe = first.model_copy(update={"ensemble": len(member_dirs), "data": data})
    val = read_file_list(member_dirs[0] / "splits" / "val.txt", data_dir)
    x_val, y_val = cache_samples(val, recipe.data.image_size, desc="decode val")
    mean, std = preprocessing_of(read_metadata(member_dirs[0] / "models" / "best.safetensors"))

    def val_logits(model: torch.nn.Module) -> torch.Tensor:
        if recipe.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return view_logits(model, x_val, recipe, dev, mean, std)[0]

    def figures(logits: torch.Tensor) -> dict:
        return {
            "val_loss": round(float(F.cross_entropy(logits, y_val)), 5),
            "val_acc": round(float((logits.argmax(1) == y_val).float().mean()), 5),
            "val_errors": int((logits.argmax(1) != y_val).sum()),
        }

    walls = []
    member_info = []
    for m, r in zip(member_dirs, recipes, strict=True):
        info = read_metadata(m / "models" / "best.safetensors")["info"]
        walls.append(float(info.get("train_wall_seconds", 0.0)))
        member_info.append({"run": str(m), "seed": r.seed, "train_wall_seconds": walls[-1]})
    summary: dict = {}
    for which in ("best", "final"):
        members = [load_model(m / "models" / f"{which}.safetensors", dev)[0] for m in member_dirs]
        member_logits = [val_logits(model) for model in members]
        if which == "best":
            for mi, ml in zip(member_info, member_logits, strict=True):
                mi.update(figures(ml))
        ensemble = EnsembleClassifier(members).to(dev).eval()
        logits = torch.stack(member_logits).mean(dim=0)  # what ensemble's forward computes
        fit = temperature_fit(logits, y_val)
        info = {
            "stage": f"ensemble of {len(members)} {which}",
            "members": member_info,
            **fit,
            "train_wall_seconds": round(sum(walls), 1),
            **figures(logits),
        }
        path = out_dir / "models" / f"{which}.safetensors"
        save_model(path, ensemble, recipe, info, mean=mean, std=std)
        if which == "best":
            summary = {
                "best_val_loss": info["val_loss"],
                "val_acc": info["val_acc"],
                "val_errors": info["val_errors"],
                **fit,
                "members": member_info,
                "train_wall_seconds": info["train_wall_seconds"],
            }
    (out_dir / "splits").mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "val.txt"):
        shutil.copyfile(member_dirs[0] / "splits" / name, out_dir / "splits" / name)
    (out_dir / "models" / "class_labels.json").write_text(json.dumps(list(CLASS_NAMES), indent=2))
    dump_recipe(recipe, out_dir / "recipe.yaml")
    summary["assemble_seconds"] = round(time.time() - t0, 1)
    (out_dir / "run.json").write_text(
        json.dumps({"data": str(data_dir.resolve()), "n_val": len(val), **summary}, indent=2)
    )
    report_validation(summary)
    return summary


def report_validation(summary: dict) -> None:
    """Each member (by its run folder) and the ensemble on validation, one line each."""
    rows = [(f"member {mi['run']}", mi["val_loss"], mi["val_acc"]) for mi in summary["members"]]
    rows.append(("ensemble", summary["best_val_loss"], summary["val_acc"]))
    width = max(len(label) for label, _, _ in rows)
    lines = [f"  {label:<{width}}  loss {loss:.4f} acc {acc:.4f}" for label, loss, acc in rows]
    note = temperature_note(summary["temperature"], summary.get("temperature_all_right", False))
    lines[-1] += f"  temperature {note}"
    tqdm.write("\n".join(["ensemble on validation:", *lines]))
