"""infer/occlusion.py: occlusion-sensitivity maps, and `explain --method occlusion`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_brain
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.config import load_recipe
from brainmri.infer.gradcam import plane_maps
from brainmri.infer.occlusion import black_input, occlusion_maps, window_for
from brainmri.model.checkpoint import save_model
from brainmri.model.classifier import TumorClassifier


class Quadrants(nn.Module):
    """Class c's logit is the mean of quadrant c of channel 0: only that quadrant matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        q = [x[:, 0, :h, :h], x[:, 0, :h, h:], x[:, 0, h:, :h], x[:, 0, h:, h:]]
        return torch.stack([v.mean(dim=(1, 2)) for v in q], dim=1)


def test_window_is_a_sixth_of_the_side_with_half_stride():
    assert window_for(192) == (32, 16)
    assert window_for(64) == (11, 5)


def test_map_lies_where_the_class_score_comes_from():
    x = torch.full((2, 3, 48, 48), 2.0)  # bright everywhere: occluding anything drops a logit
    maps = occlusion_maps(Quadrants(), x, [0, 3])
    assert maps.shape == (2, 48, 48) and maps.dtype == np.float32
    assert maps.min() == 0.0 and maps.max() == pytest.approx(1.0)
    w = window_for(48)[0]
    # class 0 reads the top-left quadrant: nothing a window away from it gets any weight
    assert maps[0, 24 + w :, :].max() == 0 and maps[0, :, 24 + w :].max() == 0
    assert maps[1, : 24 - w, :].max() == 0 and maps[1, :, : 24 - w].max() == 0
    assert maps[0, :12, :12].mean() > 0.5 and maps[1, -12:, -12:].mean() > 0.5


def test_black_on_black_gets_no_weight():
    """The occluding value is the model input of a black pixel: a black region weighs 0."""
    x = black_input().reshape(1, 3, 1, 1).repeat(1, 1, 48, 48).clone()
    x[:, :, :24, :24] = 2.0  # the top-left quadrant is bright, the rest black
    maps = occlusion_maps(Quadrants(), x, 3)  # class 3 reads the black bottom-right quadrant
    assert maps.max() == 0.0
    maps = occlusion_maps(Quadrants(), x, 0)
    w = window_for(48)[0]
    assert maps[0, 24 + w :, :].max() == 0 and maps[0, :12, :12].min() > 0


def test_plane_maps_occlusion_has_the_image_size():
    recipe = load_recipe("smoke", ["model.weights=none", "data.image_size=64"])
    torch.manual_seed(0)
    model = TumorClassifier(recipe.model, pretrained=False).eval()
    maps = plane_maps(model, synthetic_brain(80, seed=7), 64, [1, 2], method="occlusion")
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1


def test_explain_command_with_occlusion(tmp_path):
    recipe = load_recipe("smoke", ["model.weights=none", "data.image_size=64"])
    torch.manual_seed(0)
    net = TumorClassifier(recipe.model, pretrained=False).eval()
    model = save_model(tmp_path / "m.safetensors", net, recipe, {"temperature": 1.0})
    scan = tmp_path / "scan.png"
    Image.fromarray(synthetic_brain(96, seed=6)).save(scan)
    out = tmp_path / "maps"
    args = ["explain", str(scan), "--out", str(out), "--model", str(model)]
    res = CliRunner().invoke(app, [*args, "--method", "occlusion"])
    assert res.exit_code == 0, res.output
    assert (out / "scan_occlusion.png").is_file() and not (out / "scan_gradcam.png").exists()
    res = CliRunner().invoke(app, [*args, "--method", "lime"])
    assert res.exit_code == 2 and "--method must be one of gradcam, occlusion" in res.output


def test_onnx_runtime_occlusion_gives_the_same_map(tmp_path):
    """explain runs the occluded copies on ONNX Runtime (3x faster on 2 cores); the map is the
    one PyTorch gives."""
    from brainmri.infer.core import Classifier, load_for_inference
    from brainmri.infer.gradcam import explain_plane

    recipe = load_recipe("smoke", ["model.weights=none", "data.image_size=64"])
    torch.manual_seed(0)
    net = TumorClassifier(recipe.model, pretrained=False).eval()
    path = save_model(tmp_path / "m.safetensors", net, recipe, {"temperature": 1.0})
    plane = synthetic_brain(80, seed=8)
    loaded = load_for_inference(path, "cpu")
    backend = Classifier(path, runtime="onnx").backend
    assert backend.name == "onnx"
    eager, probs, k = explain_plane(loaded, plane, None, "occlusion")
    fast, probs_fast, k_fast = explain_plane(loaded, plane, None, "occlusion", backend)
    assert k_fast == k and eager.shape == fast.shape == (64, 64) and eager.max() == 1.0
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    np.testing.assert_allclose(probs_fast, probs)
