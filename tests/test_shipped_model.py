"""The shipped model reproduces its model card: `brainmri evaluate` with no --model, plain
predictions, on the full official test split (TTA is the same code path with 5 views and is
left to the benchmark to keep the suite short)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.config import load_recipe, recipe_from_dict
from brainmri.model.checkpoint import read_metadata, shipped_model_path

REPO = Path(__file__).resolve().parents[1]
CARD_RESULTS = REPO / "bench" / "results" / "shipped" / "test_results_final.json"
SHIP_REPORT = REPO / "bench" / "results" / "ship_model.json"


def test_shipped_model_is_self_describing():
    meta = read_metadata(shipped_model_path())
    ship = json.loads(SHIP_REPORT.read_text())
    assert meta["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert meta["dtype"] == ship["shipped_dtype"]
    assert meta["recipe"]["ensemble"] == 1 and "members" not in meta["info"]
    assert meta["info"]["split"]["method"].startswith("StratifiedGroupKFold")  # grouped split
    assert 0.05 < meta["info"]["temperature"] < 5


def test_shipped_model_is_its_committed_run():
    """The file's recipe is the committed run's (bench/ship_model.py's --run), with the start
    file moved out of the recipe into `info.init_model` by its digest: the shipped recipe never
    names the file it replaced as `shipped`."""
    meta = read_metadata(shipped_model_path())
    ship = json.loads(SHIP_REPORT.read_text())
    run = REPO / ship["run"]
    recipe = load_recipe(run / "recipe.yaml")
    if recipe.model.init_model:
        assert meta["info"]["init_model"] == ship["init_model"]
        assert ship["init_model"].startswith(f"{recipe.model.init_model} (")
        recipe.model.init_model = None
    assert recipe_from_dict(meta["recipe"]) == recipe
    assert meta["info"]["shipped_from"] == f"{ship['run']}/models/best.safetensors"


def test_shipping_a_fine_tune_moves_its_start_file_into_info(tmp_path: Path):
    """bench/ship_model.py: a run started from a model file ships with `model.init_model`
    cleared and the start file named by its sha256 (a run from ImageNet weights: unchanged)."""
    import hashlib

    ship = _bench_module("ship_model")
    start = tmp_path / "start.safetensors"
    start.write_bytes(b"weights")
    recipe, info = load_recipe("cam", [f"model.init_model={start}"]), {}
    ship.resolve_init(recipe, info)
    assert recipe.model.init_model is None
    assert info["init_model"] == (
        f"{start} (start.safetensors, sha256 {hashlib.sha256(b'weights').hexdigest()})"
    )
    plain, info = load_recipe("cpu"), {}
    ship.resolve_init(plain, info)
    assert info == {} and plain == load_recipe("cpu")


def test_shipped_model_reproduces_card_numbers(benchmark_dir: Path, tmp_path: Path):
    card = json.loads(CARD_RESULTS.read_text())
    out = tmp_path / "res"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(benchmark_dir), "--tta", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    got = json.loads((out / "test_results_final.json").read_text())
    for subset in ("full", "leak_free"):
        mine, ref = got["plain"][subset], card["plain"][subset]
        assert mine["n"] == ref["n"]
        assert mine["confusion_matrix"] == ref["confusion_matrix"]
        assert mine["errors"] == ref["errors"]
        assert mine["macro_auc"] == pytest.approx(ref["macro_auc"], abs=1e-6)
        assert mine["ece"] == pytest.approx(ref["ece"], abs=1e-6)
    assert got["n_test"] == 1311


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_quote_the_results_files():
    """README, docs/RESULTS.md and MODEL_CARD.md hold exactly what bench/model_card.py makes
    from the committed results files: the figures cannot drift apart."""
    mc = _bench_module("model_card")
    res = json.loads(CARD_RESULTS.read_text())
    ext = mc.load_json(mc.SHIPPED / "external_dev.json")
    blocks = mc.generated_blocks(res, ext)
    for doc in mc.DOCS:
        text = (REPO / doc).read_text()
        for name in blocks:
            assert f"<!-- generated: {name} -->" in text, f"{doc}: no {name} block"
        assert mc.fill_blocks(text, blocks) == text, f"{doc} is stale: run bench/model_card.py"
    if not (REPO / ".git").exists():
        pytest.skip("the card names the commit that shipped the model: needs a git checkout")
    card = mc.render_card(res, ext, mc.load_json(mc.SHIPPED / "robustness.json"))
    assert (REPO / "MODEL_CARD.md").read_text() == card, "MODEL_CARD.md is stale"


def test_model_card_metadata_block():
    import yaml

    text = (REPO / "MODEL_CARD.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    for key in ("license", "datasets", "metrics", "intended_use", "limitations"):
        assert meta.get(key), key
    res = json.loads(CARD_RESULTS.read_text())
    head = res[res["headline"]]["full"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["value"] == round(head["accuracy"], 4)
    assert "test split was never used" not in text  # it states how the split was used instead
    assert "Test-split evaluations" in text


def test_results_file_has_intervals():
    res = json.loads(CARD_RESULTS.read_text())
    for variant in [v for v in ("plain", "tta") if v in res]:
        for subset in ("full", "leak_free"):
            ci = res[variant]["intervals"][subset]
            assert ci["n_resamples"] >= 2000
            lo, hi = ci["accuracy"]["ci"]
            assert lo <= res[variant][subset]["accuracy"] <= hi
