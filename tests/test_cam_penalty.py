"""The Grad-CAM terms of train/cam_penalty.py: the map they train is the one pytorch-grad-cam
computes, its share outside the head is counted per cell, the outside term trains the map
toward the head, the apart term trains two classes' maps apart, and a stage with both trains;
model.init_model starts a run from a model file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from brainmri.config import load_recipe
from brainmri.data.images import load_gray, resize_square
from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import model_weights, save_model
from brainmri.model.classifier import TumorClassifier
from brainmri.train.cam_penalty import (
    CamPenalty,
    apart,
    head_masks,
    other_classes,
    outside_share,
    scaled_cam,
)
from brainmri.train.loop import check_cam_penalty, start_from, train

SIZE = 64


def smoke_model(**changes) -> TumorClassifier:
    recipe = load_recipe("smoke", [f"model.{k}={v}" for k, v in changes.items()])
    torch.manual_seed(0)
    return TumorClassifier(recipe.model).eval()


def real_batch(benchmark_dir: Path, per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, SIZE, SIZE) uint8 benchmark Training images and their labels."""
    planes, labels = [], []
    for k, cls in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
        for f in sorted((benchmark_dir / "Training" / cls).iterdir())[:per_class]:
            planes.append(resize_square(load_gray(f), SIZE))
            labels.append(k)
    return torch.from_numpy(np.stack(planes))[:, None], torch.tensor(labels)


def model_input(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255.0) - 0.5).repeat(1, 3, 1, 1) / 0.25


def test_outside_share_counts_each_cell_by_its_share_outside_the_head():
    masks = torch.zeros(3, 1, 64, 64)
    masks[:, :, :, :32] = 1.0  # the head: the left half
    cam = torch.zeros(3, 4, 4)
    cam[0] = 1.0  # everywhere: half of it outside
    cam[1, :, :2] = 1.0  # on the head only
    cam[2, :, 2:] = 1.0  # off the head only
    assert outside_share(cam, masks).tolist() == pytest.approx([0.5, 0.0, 1.0], abs=1e-6)


def test_penalized_map_is_the_map_pytorch_grad_cam_draws(benchmark_dir):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from brainmri.infer.gradcam import target_layer

    model = smoke_model()
    x, y = real_batch(benchmark_dir, per_class=1)
    xin = model_input(x)
    with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        library = cam(input_tensor=xin, targets=[ClassifierOutputTarget(int(c)) for c in y])
    store = {}
    hook = target_layer(model).register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(xin)
    hook.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), store["a"])
    ours = scaled_cam(store["a"], grads).detach().numpy()
    upsampled = np.stack([cv2.resize(m, (SIZE, SIZE)) for m in ours])
    upsampled -= upsampled.min(axis=(1, 2), keepdims=True)  # the library scales again after
    upsampled /= 1e-7 + upsampled.max(axis=(1, 2), keepdims=True)  # resizing
    assert library.shape == upsampled.shape
    assert np.abs(library - upsampled).max() < 1e-4


def test_the_penalty_alone_moves_the_map_toward_the_head(benchmark_dir):
    model = smoke_model(dropout=0, head_dropout=0)
    x, y = real_batch(benchmark_dir)
    masks, xin = head_masks(x), model_input(x)
    assert 0.2 < float(masks.mean()) < 0.9  # a head on a black background in every image
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    shares = []
    with CamPenalty(model) as cam:
        for _ in range(12):
            share = cam.share(model(xin), y, masks).mean()
            opt.zero_grad()
            share.backward()
            opt.step()
            shares.append(float(share.detach()))
    assert min(shares[-4:]) < shares[0] - 0.2, shares


def test_apart_is_the_shortfall_of_the_mean_difference_from_the_margin():
    a = torch.zeros(3, 4, 4)
    b = torch.zeros(3, 4, 4)
    b[1, :2] = 0.1  # mean |difference| 0.05
    b[2] = 0.5  # far apart
    assert apart(a, b, 0.1).tolist() == pytest.approx([0.1, 0.05, 0.0], abs=1e-6)


def test_other_classes_are_drawn_from_the_rest_only():
    y = torch.arange(4).repeat(500)
    other = other_classes(y, 4, torch.Generator().manual_seed(0))
    assert not bool((other == y).any())
    for k in range(4):
        drawn = torch.bincount(other[y == k], minlength=4).tolist()
        assert drawn[k] == 0
        assert all(120 < n < 215 for j, n in enumerate(drawn) if j != k), drawn  # ~167 each


def test_the_apart_term_alone_moves_two_class_maps_apart(benchmark_dir):
    model = smoke_model(dropout=0, head_dropout=0)
    x, y = real_batch(benchmark_dir)
    xin, other = model_input(x), (y + 1) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gaps = []
    with CamPenalty(model) as cam:
        for _ in range(12):
            logits = model(xin)
            short = apart(cam.maps(logits, y), cam.maps(logits, other), 0.5).mean()
            opt.zero_grad()
            short.backward()
            opt.step()
            gaps.append(0.5 - float(short.detach()))
    assert gaps[-1] > gaps[0] + 0.05, gaps


def test_share_before_any_forward_pass_is_an_error():
    with CamPenalty(smoke_model()) as cam, pytest.raises(RuntimeError, match="no forward"):
        cam.share(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.ones(1, 1, 8, 8))


def test_start_from_loads_a_model_file_and_refuses_another_shape(tmp_path):
    recipe = load_recipe("smoke")
    trained = smoke_model()
    for p in trained.parameters():
        p.data.add_(0.01)
    path = tmp_path / "m.safetensors"
    save_model(path, trained, recipe, {})
    fresh = smoke_model()
    start_from(fresh, str(path))
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a.float(), b.float()), name
    with pytest.raises(BrainMRIError, match="does not fit the recipe's model"):
        start_from(smoke_model(dense_units=16), str(path))
    with pytest.raises(BrainMRIError, match="no model file"):
        start_from(fresh, str(tmp_path / "missing.safetensors"))


def test_the_penalty_is_refused_where_it_cannot_run():
    stage = "{name: s, trainable_fraction: 0.0, epochs: 1, lr: 0.001, cam_penalty: 1.0}"
    recipe = load_recipe("smoke", [f"train.stages=[{stage}]", "train.cache_frozen_features=true"])
    with pytest.raises(BrainMRIError, match="cached features"):
        check_cam_penalty(recipe, SimpleNamespace(world=1))
    with pytest.raises(BrainMRIError, match="one process"):
        check_cam_penalty(recipe, SimpleNamespace(world=2))
    check_cam_penalty(load_recipe("smoke"), SimpleNamespace(world=2))
    apart_only = "{name: s, trainable_fraction: 1.0, epochs: 1, lr: 0.001, cam_apart: 1.0}"
    with pytest.raises(BrainMRIError, match="one process"):
        check_cam_penalty(
            load_recipe("smoke", [f"train.stages=[{apart_only}]"]), SimpleNamespace(world=2)
        )


def test_a_stage_with_both_terms_trains_from_a_model_file_and_logs_them(
    small_benchmark, tmp_path, capsys
):
    start = tmp_path / "start.safetensors"
    save_model(start, smoke_model(), load_recipe("smoke"), {})
    stage = (
        "{name: map, trainable_fraction: 1.0, epochs: 1, lr: 1.0e-4, cam_penalty: 1.0, "
        "cam_apart: 1.0, cam_apart_margin: 0.2, freeze_bn_stats: true}"
    )
    recipe = load_recipe(
        "smoke",
        [f"train.stages=[{stage}]", f"model.init_model={start}", "train.max_steps_per_epoch=2"],
    )
    result = train(recipe, small_benchmark, tmp_path / "run", device="cpu")
    assert result.best_path.is_file()
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "[map 1/1]" in ln)
    share = float(line.split("map outside the head ")[1].split()[0])
    assert 0.0 <= share <= 1.0
    short = float(line.split("maps' shortfall from the margin ")[1].split()[0])
    assert 0.0 <= short <= 0.2
    # freeze_bn_stats: every BatchNorm keeps the start's statistics while the weights train
    before, after = model_weights(start), model_weights(result.best_path)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert any(k.startswith("head.") for k in stats) and len(stats) > 10
    assert all(torch.equal(before[k], after[k]) for k in stats)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.endswith(".weight"))
