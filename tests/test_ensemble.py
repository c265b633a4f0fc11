"""Ensembles: members share one validation split, the model file averages their logits.

One tiny 2-member run of the smoke recipe (module fixture, ~30 s on 2 cores) on a small real
subset; the refusal tests edit copies of its member folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.config import load_recipe
from brainmri.data.cache import cache_samples
from brainmri.data.folders import read_file_list
from brainmri.data.transforms import to_model_input
from brainmri.errors import BrainMRIError
from brainmri.evaluate.run import evaluate
from brainmri.infer.core import load_for_inference
from brainmri.model.checkpoint import load_model, preprocessing_of
from brainmri.model.classifier import TumorClassifier
from brainmri.model.ensemble import EnsembleClassifier
from brainmri.train.data import load_split
from brainmri.train.ensemble import assemble, member_recipe
from brainmri.train.epoch import view_logits
from brainmri.train.loop import train
from brainmri.train.loss import fit_temperature, temperature_bound


@pytest.fixture(scope="module")
def ensemble_run(small_benchmark: Path, tmp_path_factory) -> tuple[Path, object]:
    recipe = load_recipe("smoke", ["ensemble=2", "train.stages.1.epochs=0"])
    run_dir = tmp_path_factory.mktemp("ens") / "run"
    result = train(recipe, small_benchmark, run_dir, device="cpu")
    return run_dir, result


def test_member_recipes_differ_in_seed_only_and_share_the_split(small_benchmark: Path):
    recipe = load_recipe("smoke", ["ensemble=3", "seed=5"])
    members = [member_recipe(recipe, k) for k in range(3)]
    assert [m.seed for m in members] == [5, 6, 7]
    assert {m.data.split_seed for m in members} == {5}
    assert all(m.ensemble == 1 for m in members)
    vals = [sorted(str(s.path) for s in load_split(small_benchmark, m)[1]) for m in members]
    assert vals[0] == vals[1] == vals[2]
    # without a split seed, the split follows the seed
    other = load_recipe("smoke", ["seed=6"])
    assert sorted(str(s.path) for s in load_split(small_benchmark, other)[1]) != vals[0]


def test_ensemble_run_trains_each_member_then_assembles(ensemble_run):
    run_dir, result = ensemble_run
    for k, seed in ((1, 0), (2, 1)):
        member = run_dir / f"member{k}"
        assert (member / "models" / "final.safetensors").is_file()
        assert load_recipe(member / "recipe.yaml").seed == seed
    assert (run_dir / "member1" / "splits" / "val.txt").read_text() == (
        run_dir / "member2" / "splits" / "val.txt"
    ).read_text()
    for rel in ("recipe.yaml", "run.json", "splits/val.txt", "models/class_labels.json"):
        assert (run_dir / rel).is_file(), rel
    assert result.best_path == run_dir / "models" / "best.safetensors"
    assert load_recipe(run_dir / "recipe.yaml").ensemble == 2
    summary = json.loads((run_dir / "run.json").read_text())
    assert len(summary["members"]) == 2
    assert summary["train_wall_seconds"] == pytest.approx(
        sum(m["train_wall_seconds"] for m in summary["members"]), abs=0.2
    )
    assert result.wall_seconds == pytest.approx(
        summary["train_wall_seconds"] + summary["assemble_seconds"], abs=0.2
    )


def test_ensemble_file_averages_member_logits(ensemble_run, small_benchmark: Path):
    run_dir, _ = ensemble_run
    model, meta = load_model(run_dir / "models" / "best.safetensors")
    assert isinstance(model, EnsembleClassifier) and len(model.members) == 2
    # the stored validation figures and temperature are those of this file's own logits
    recipe = load_recipe(run_dir / "recipe.yaml")
    val = read_file_list(run_dir / "splits" / "val.txt", small_benchmark)
    x_val, y_val = cache_samples(val, 64, desc="decode")
    mean, std = preprocessing_of(meta)
    logits = view_logits(model, x_val, recipe, torch.device("cpu"), mean, std)[0]
    assert meta["info"]["val_acc"] == pytest.approx(
        float((logits.argmax(1) == y_val).float().mean()), abs=1e-5
    )
    assert meta["info"]["temperature"] == pytest.approx(fit_temperature(logits, y_val), rel=1e-3)
    paths = [run_dir / f"member{k}" / "models" / "best.safetensors" for k in (1, 2)]
    members = [load_model(p)[0] for p in paths]
    assert all(isinstance(m, TumorClassifier) for m in members)
    val = read_file_list(run_dir / "splits" / "val.txt", small_benchmark)
    x = to_model_input(cache_samples(val, 64, desc="decode")[0][:8])
    with torch.no_grad():
        want = torch.stack([m(x) for m in members]).mean(0)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_evaluate_scores_an_ensemble_file(ensemble_run, small_benchmark: Path, tmp_path: Path):
    run_dir, _ = ensemble_run
    loaded = load_for_inference(run_dir / "models" / "best.safetensors", "cpu")
    assert isinstance(loaded.model, EnsembleClassifier)
    res = evaluate(
        run_dir / "models" / "best.safetensors", small_benchmark, tmp_path, tta=2, plots=False
    )
    assert sum(map(sum, res["tta"]["full"]["confusion_matrix"])) == 48


def test_resume_of_a_finished_ensemble_skips_trained_members(ensemble_run, tmp_path: Path):
    run_dir, _ = ensemble_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "member1" / "models" / "best.safetensors").read_bytes()
    top = (copy / "models" / "best.safetensors").read_bytes()
    result = train(None, Path(), copy, resume=True, device="cpu")
    assert (copy / "member1" / "models" / "best.safetensors").read_bytes() == before
    assert (copy / "models" / "best.safetensors").read_bytes() == top  # not re-assembled
    assert result.best_path == copy / "models" / "best.safetensors"


def _copy_member(run_dir: Path, tmp_path: Path, k: int) -> Path:
    dst = tmp_path / f"m{k}"
    shutil.copytree(run_dir / f"member{k}", dst)
    return dst


def test_assemble_refuses_members_validated_on_other_images(ensemble_run, tmp_path: Path):
    run_dir, _ = ensemble_run
    a, b = _copy_member(run_dir, tmp_path, 1), _copy_member(run_dir, tmp_path, 2)
    lines = (b / "splits" / "val.txt").read_text().splitlines()
    (b / "splits" / "val.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(BrainMRIError, match="validated on other images"):
        assemble([a, b], tmp_path / "out")


def test_assemble_refuses_members_of_another_image_size(ensemble_run, tmp_path: Path):
    run_dir, _ = ensemble_run
    a, b = _copy_member(run_dir, tmp_path, 1), _copy_member(run_dir, tmp_path, 2)
    recipe = yaml.safe_load((b / "recipe.yaml").read_text())
    recipe["data"]["image_size"] = 96
    (b / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(BrainMRIError, match="image size"):
        assemble([a, b], tmp_path / "out")


def test_ensemble_command_combines_runs_and_rejects_a_single_run(ensemble_run, tmp_path: Path):
    run_dir, _ = ensemble_run
    runs = [str(run_dir / "member1"), str(run_dir / "member2")]
    out = tmp_path / "ens"
    result = CliRunner().invoke(app, ["ensemble", *runs, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2" in result.output
    for run in runs:  # each member's validation line names its run folder
        assert any(line.strip().startswith(f"member {run}") for line in result.output.splitlines())
    assert load_recipe(out / "recipe.yaml").ensemble == 2
    one = CliRunner().invoke(app, ["ensemble", runs[0], "--out", str(tmp_path / "one")])
    assert one.exit_code == 2
    assert "at least two" in one.output


def test_ensemble_refuses_a_member_that_is_an_ensemble(ensemble_run, tmp_path: Path):
    """An ensemble as a member would weigh its members 1/4 each beside a run at 1/2."""
    run_dir, _ = ensemble_run
    runs = [str(run_dir / "member1"), str(run_dir / "member2")]
    ens = tmp_path / "ens"
    assert CliRunner().invoke(app, ["ensemble", *runs, "--out", str(ens)]).exit_code == 0
    for nested in (ens, run_dir):  # made by `brainmri ensemble`, and by a recipe's ensemble: 2
        out = tmp_path / f"nested-{nested.name}"
        res = CliRunner().invoke(app, ["ensemble", str(nested), runs[0], "--out", str(out)])
        assert res.exit_code == 2, res.output
        line = f"error: {nested} is already an ensemble of 2 runs ({runs[0]}, {runs[1]}): "
        assert res.output.strip() == line + "pass its member runs instead"
        assert not out.exists()


def test_ensemble_records_whether_its_temperature_fit_hit_a_bound(ensemble_run):
    run_dir, _ = ensemble_run
    summary = json.loads((run_dir / "run.json").read_text())
    at_bound = temperature_bound(summary["temperature"]) is not None
    assert summary["temperature_at_bound"] is at_bound
    info = load_model(run_dir / "models" / "best.safetensors")[1]["info"]
    assert info["temperature_at_bound"] is at_bound


def test_ensemble_refuses_the_same_run_twice(ensemble_run, tmp_path: Path):
    run_dir, _ = ensemble_run
    one = str(run_dir / "member1")
    copy = tmp_path / "copy"
    shutil.copytree(run_dir / "member1", copy)
    for runs in ([one, one], [one, str(copy)]):
        res = CliRunner().invoke(app, ["ensemble", *runs, "--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and "same run" in res.output, res.output
