"""bench/robustness.py: the perturbation table and a tiny end-to-end run of its main()."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainmri.config import load_recipe
from brainmri.model.checkpoint import save_model
from brainmri.model.classifier import TumorClassifier

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_robustness", REPO / "bench" / "robustness.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


robustness = _load_bench()
NAMES = [p.name for p in robustness.PERTURBATIONS]


def _scan(h: int = 200, w: int = 240) -> np.ndarray:
    """A non-square textured 'brain' on black, mid-range intensities (room to brighten)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 <= 1
    img = np.zeros((h, w), dtype=np.uint8)
    img[disc] = (60 + 0.4 * xx[disc] + rng.integers(0, 60, disc.sum())).astype(np.uint8)
    return img


def test_table_lists_the_documented_perturbations():
    assert NAMES == ["clean", "contrast", "brightness", "gamma_0.7", "gamma_1.5", "blur",
                     "lowres", "jpeg30", "gray_reencode", "rotate"]  # fmt: skip
    assert all(p.description for p in robustness.PERTURBATIONS)


@pytest.mark.parametrize("p", robustness.PERTURBATIONS, ids=NAMES)
def test_perturbation_shape_dtype_determinism(p):
    img = _scan()
    before = img.copy()
    out = p.fn(img, 0)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)  # input untouched
    np.testing.assert_array_equal(out, p.fn(img.copy(), 0))  # deterministic
    if p.name == "clean":
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out.astype(int) - img).mean() > 0.1, f"{p.name} is (nearly) the identity"


def test_rotate_alternates_direction():
    img = _scan()
    rotate = robustness.BY_NAME["rotate"].fn
    assert not np.array_equal(rotate(img, 0), rotate(img, 1))
    np.testing.assert_array_equal(rotate(img, 0), rotate(img, 2))
    np.testing.assert_array_equal(np.fliplr(rotate(np.fliplr(img), 1)), rotate(img, 0))


def test_pick_limit_keeps_every_class(small_benchmark):
    from brainmri.data.folders import scan_split

    picked = robustness.pick(scan_split(small_benchmark, "Testing"), 8)
    assert len(picked) == 8 and sorted({s.label for s in picked}) == [0, 1, 2, 3]


def test_main_writes_json_with_every_perturbation(small_benchmark, tmp_path):
    recipe = load_recipe("smoke", ["model.weights=none", "data.image_size=64"])
    torch.manual_seed(0)
    model_path = save_model(tmp_path / "untrained.safetensors", TumorClassifier(recipe.model),
                            recipe, {"temperature": 1.5})  # fmt: skip
    out = tmp_path / "robustness.json"
    report = robustness.main(["--model", str(model_path), "--data", str(small_benchmark),
                              "--out", str(out), "--limit", "8", "--device", "cpu",
                              "--workers", "2"])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["results"]) == NAMES
    assert set(saved["perturbations"]) == set(NAMES)
    assert saved["n_test"] == 8 and saved["temperature"] == 1.5 and saved["image_size"] == 64
    for name, r in saved["results"].items():
        assert r["n"] == 8, name
        assert 0.0 <= r["accuracy"] <= 1.0 and r["errors"] == round(8 * (1 - r["accuracy"]))
        assert set(r["recall"]) == {"glioma", "meningioma", "notumor", "pituitary"}
        assert r["macro_auc"] is not None
    assert saved["results"]["clean"]["delta_accuracy"] == 0.0
    assert {"machine", "date", "command"} <= set(saved)
    assert "--limit" in saved["command"]
