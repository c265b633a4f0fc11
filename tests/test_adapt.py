"""`brainmri adapt`: a real (short) fine-tune of the shipped model on a few labelled images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from brainmri import CLASS_NAMES
from brainmri.cli import app
from brainmri.config import load_adapt_config, load_recipe
from brainmri.data.folders import Sample
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.train.adapt import adapt_recipe, draw_replay, interpolate_weights


@pytest.fixture(scope="module")
def site(benchmark_dir: Path, tmp_path_factory) -> Path:
    """A 'site' folder of 3 classes (no pituitary), 4 Training images each (from the end of
    the folder: the replay fixture copies the first ones; the test split is never trained on)."""
    root = tmp_path_factory.mktemp("site")
    for cls in ("glioma", "meningioma", "notumor"):
        (root / cls).mkdir()
        for f in sorted((benchmark_dir / "Training" / cls).iterdir())[-4:]:
            shutil.copy(f, root / cls / f.name)
    return root


def test_adapt_writes_a_usable_model_with_a_refitted_guard(
    site: Path, small_benchmark: Path, tmp_path: Path
):
    out = tmp_path / "run"
    args = [
        "adapt",
        "--data",
        str(site),
        "--out",
        str(out),
        "--replay",
        str(small_benchmark),
        "--set",
        "steps=2",
        "--set",
        "guard_holdout=12",
        "--set",
        "batch_size=23",
    ]  # fmt: skip  (24 images: no last batch of one image)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "adapted on glioma 4, meningioma 4, notumor 4 site images" in result.output
    model = out / "model.safetensors"
    meta, source = read_metadata(model), read_metadata(shipped_model_path())
    adapted = meta["info"]["adapted"]
    assert adapted["site_counts"] == {"glioma": 4, "meningioma": 4, "notumor": 4, "pituitary": 0}
    assert sum(adapted["replay_counts"].values()) == 12 and all(adapted["replay_counts"].values())
    members = source["recipe"]["ensemble"]  # 24 images: 1 step per epoch, 2 steps per member
    assert [len(h) for h in adapted["history"]] == [2] * members
    assert meta["guard"]["ood_threshold"] != source["guard"]["ood_threshold"]
    assert 0 < meta["guard"]["reference_median"] != source["guard"]["reference_median"]
    assert "site images (12)" in meta["guard"]["reference_on"]
    new, old = load_file(str(model)), load_file(str(shipped_model_path()))
    key = next(k for k in old if k.endswith("backbone.conv_stem.weight"))  # first member's
    assert not torch.equal(new[key], old[key])  # the whole network trained
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["source_sha256"] == adapted["source_sha256"]
    replay = str(small_benchmark.resolve())
    assert summary["site"] == str(site.resolve()) and summary["replay"] == replay
    assert f"(+12 benchmark from {replay})" in result.output
    # what ran, not the YAML's stage.epochs: 24 images in batches of 23 (the one left over
    # dropped) is 1 step per epoch, so steps=2 is 2 epochs
    run = {"images": 24, "batch_size": 23, "steps_per_epoch": 1, "epochs": 2, "steps": 2}
    assert summary["run"] == run and [len(h) for h in summary["history"]] == [2] * members
    assert summary["settings"]["steps"] == 2 and "epochs" not in summary["settings"]["stage"]
    assert "site_weight" not in summary["settings"]  # a probe setting, not used here
    records = tmp_path / "pred.json"
    pred = CliRunner().invoke(
        app,
        [
            "predict",
            str(site / "glioma"),
            "--model",
            str(model),
            "--runtime",
            "torch",
            "--json",
            str(records),
        ],  # fmt: skip
    )
    assert pred.exit_code in (0, 1), pred.output
    recs = json.loads(records.read_text())
    assert len(recs) == 4 and all(r["status"] in ("ok", "rejected") for r in recs)
    assert {r["model_sha256"] for r in recs} != {adapted["source_sha256"]}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output


def test_probe_adapt_writes_a_linear_head_that_answers_like_its_regression(
    site: Path, small_benchmark: Path, tmp_path: Path
):
    """method=probe: backbone unchanged, the regression inside the file, exportable to ONNX."""
    from brainmri.data.cache import cache_samples
    from brainmri.infer.core import load_for_inference
    from brainmri.infer.export import export_onnx
    from brainmri.train.adapt import site_samples

    out = tmp_path / "probe"
    args = ["adapt", "--data", str(site), "--out", str(out), "--replay", str(small_benchmark),
            "--set", "method=probe", "--set", "guard_holdout=12"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = out / "model.safetensors"
    meta = read_metadata(model)
    assert meta["recipe"]["model"]["head"] == "linear" and meta["info"]["temperature"] == 1.0
    (fig,) = meta["info"]["adapted"]["history"][0]
    assert fig["method"] == "probe" and fig["site_train_acc"] >= 0.9  # 12 images, 2,560 features
    new, old = load_file(str(model)), load_file(str(shipped_model_path()))
    key = next(k for k in old if k.endswith("backbone.conv_stem.weight"))
    assert torch.equal(new[key], old[key])  # the backbone is the source's
    loaded = load_for_inference(model, "cpu")
    x, y = cache_samples(site_samples(site), loaded.image_size)
    probs = loaded.probs(x)
    assert torch.allclose(probs.sum(1), torch.ones(len(x)), atol=1e-5)
    assert float((probs.argmax(1) == y).float().mean()) == fig["site_train_acc"]
    assert Path(export_onnx(model, tmp_path / "probe.onnx")["out"]).is_file()


def test_gated_adapt_keeps_the_source_head_and_gates_the_site_head(
    site: Path, small_benchmark: Path, tmp_path: Path
):
    """method=gated: backbone and source head unchanged, the source temperature inside the
    head, the site images sent to the site head, an ONNX export that answers the same."""
    from brainmri.data.cache import cache_samples
    from brainmri.infer.core import Classifier
    from brainmri.infer.export import export_onnx
    from brainmri.train.adapt import site_samples

    out = tmp_path / "gated"
    args = ["adapt", "--data", str(site), "--out", str(out), "--replay", str(small_benchmark),
            "--set", "method=gated", "--set", "guard_holdout=12"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = out / "model.safetensors"
    meta, source = read_metadata(model), read_metadata(shipped_model_path())
    assert meta["recipe"]["model"]["head"] == "gated" and meta["info"]["temperature"] == 1.0
    assert meta["recipe"]["model"]["gate_blocks"] == [4, 5, 6]  # the adapt default
    (fig,) = meta["info"]["adapted"]["history"][0]
    assert fig["method"] == "gated" and fig["classes"] == ["glioma", "meningioma", "notumor"]
    assert fig["gate_blocks"] == [4, 5, 6]
    new, old = load_file(str(model)), load_file(str(shipped_model_path()))
    for key in (k for k in old if k.startswith(("backbone.", "head."))):
        twin = key.replace("head.", "head.source.", 1) if key.startswith("head.") else key
        assert torch.equal(new[twin], old[key]), key
    assert float(new["head.source_temperature"]) == pytest.approx(source["info"]["temperature"])
    clf = Classifier(model, runtime="torch")
    x, y = cache_samples(site_samples(site), clf.image_size)
    out = clf.run(x)
    with torch.no_grad():  # a gated head's penultimate features: pooled, then the gate's
        gate = clf.backend.graph.model.head.site_probability(torch.from_numpy(out["features"]))
    assert float(gate.min()) > 0.5  # its own training images go to the site head
    probs = torch.from_numpy(out["probs"])
    assert float(probs[:, CLASS_NAMES.index("pituitary")].max()) < 0.5
    assert float((probs.argmax(1) == y).float().mean()) >= fig["site_train_acc"] - 1 / len(y)
    onnx = Path(export_onnx(model, tmp_path / "gated.onnx")["out"])
    got = torch.from_numpy(Classifier(onnx, runtime="onnx", threads=1).run(x)["probs"])
    assert torch.equal(got.argmax(1), probs.argmax(1))
    assert float((got - probs).abs().max()) <= 1e-4


@pytest.mark.parametrize("refit", [False, True])
def test_calibrated_adapt_fits_its_temperature_on_held_out_site_images(
    site: Path, small_benchmark: Path, tmp_path: Path, refit: bool
):
    """calibration_share: whole groups of the site held out of a first fine-tune; the file's
    temperature is the one that fits that fine-tune's logits on them (refit=false: the file is
    that fine-tune, so its own logits reproduce the fit)."""
    from brainmri.data.cache import cache_samples
    from brainmri.infer.core import predict_logits
    from brainmri.model.checkpoint import load_model
    from brainmri.train.adapt import adapt
    from brainmri.train.loss import fit_temperature, temperature_bound, temperature_note

    sets = ["steps=1", "guard_holdout=0", "calibration_share=0.25", f"calibration_refit={refit}"]
    cfg = load_adapt_config("default", sets)
    res = adapt(shipped_model_path(), site, small_benchmark, tmp_path / "run", cfg)
    cal = res.summary["calibration"]
    meta = read_metadata(res.model_path)
    assert meta["info"]["temperature"] == pytest.approx(cal["temperature"])
    assert cal["source_temperature"] == read_metadata(shipped_model_path())["info"]["temperature"]
    held = cal["held_out_files"]
    assert cal["held_out_images"] == len(held) and 0 < len(held) < 12
    assert cal["fit_images"] + len(held) == 12
    trained = 12 if refit else cal["fit_images"]  # the fine-tune saved: + 12 replay images
    assert res.summary["run"]["images"] == trained + 12
    assert "calibration_refit" in res.summary["settings"]
    assert {Path(p).parent.name for p in held} <= {"glioma", "meningioma", "notumor"}
    if not refit:
        model, _ = load_model(res.model_path, "cpu")
        labels = [CLASS_NAMES.index(Path(p).parent.name) for p in held]
        samples = [Sample(Path(p), c, "Training") for p, c in zip(held, labels, strict=True)]
        x, y = cache_samples(samples, int(meta["preprocessing"]["image_size"]))
        logits = predict_logits(model, x, intensity=meta["preprocessing"].get("intensity", "none"))
        assert fit_temperature(logits[1][0], y) == pytest.approx(cal["temperature"], rel=1e-3)
        all_right = bool((logits[1][0].argmax(1) == y).all())
        assert cal["temperature_all_right"] is all_right  # said, as train says it (loss.py)
    assert cal["temperature_at_bound"] is (temperature_bound(cal["temperature"]) is not None)
    assert cal["temperature_note"] == temperature_note(
        cal["temperature"], cal["temperature_all_right"]
    )


def test_calibration_is_refused_for_fitted_heads(site: Path, small_benchmark: Path, tmp_path):
    from brainmri.errors import BrainMRIError
    from brainmri.train.adapt import adapt

    cfg = load_adapt_config("default", ["method=probe", "calibration_share=0.2"])
    with pytest.raises(BrainMRIError, match="finetune only"):
        adapt(shipped_model_path(), site, small_benchmark, tmp_path / "run", cfg)


def test_adapt_needs_replay_or_says_how_to_go_without(site: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BRAINMRI_DATA", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(app, ["adapt", "--data", str(site), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "BRAINMRI_DATA" in result.output
    result = CliRunner().invoke(
        app,
        [
            "adapt",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "replay_ratio=0",
        ],  # fmt: skip
    )
    assert result.exit_code == 2 and "class folders" in result.output


def test_a_replay_folder_that_replay_ratio_0_leaves_unused_is_refused(
    site: Path, small_benchmark: Path, tmp_path: Path
):
    """--replay DIR with replay_ratio=0: one error line before any work, not a folder that
    adapt.json records as `replay: null`."""
    from brainmri.train.adapt import check_replay

    args = ["adapt", "--data", str(site), "--out", str(tmp_path / "r"), "--replay",
            str(small_benchmark), "--set", "replay_ratio=0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: --replay {small_benchmark}: not used with ")
    assert "replay_ratio=0" in result.output and "drop --replay" in result.output
    assert not (tmp_path / "r").exists()
    check_replay(load_adapt_config("default", ["replay_ratio=0"]), None)  # no folder: fine
    check_replay(load_adapt_config("default"), small_benchmark)  # a folder that is used: fine


@pytest.mark.parametrize("sub", ["", "Testing", "Training", "lowercase"])
def test_adapt_refuses_a_benchmark_split(small_benchmark: Path, tmp_path: Path, sub: str):
    """--data of a Kaggle-layout folder (or one of its splits) must not train on its Testing/
    images: a one-line user error, before any model is loaded."""
    data = small_benchmark / sub
    if sub == "lowercase":  # a testing/<class>/ folder beside the class folders, any case
        data = tmp_path / "site"
        for name in ("glioma", "testing/glioma"):
            (data / name).mkdir(parents=True)
            for f in sorted((small_benchmark / "Testing" / "glioma").iterdir())[:2]:
                (data / name / f.name).symlink_to(f)
    args = ["adapt", "--data", str(data), "--out", str(tmp_path / "r"), "--replay",
            str(small_benchmark), "--set", "steps=1", "--set", "guard_holdout=0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "never a benchmark split" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "sets, key",
    [
        (["stage.epochs=8"], "steps"),  # adapt runs `steps`; the epochs follow from them
        (["method=probe", "steps=5"], "method=probe"),
        (["method=gated", "site_weight=3"], "method=gated"),
        (["probe_c=0.1"], "method=finetune"),
        (["replay_clusters=4"], "replay_draw=clusters"),
        (["calibration_refit=false"], "calibration_share"),
    ],
)
def test_a_setting_adapt_does_not_use_is_refused(
    site: Path, tmp_path: Path, monkeypatch, sets: list[str], key: str
):
    monkeypatch.setenv("BRAINMRI_DATA", str(tmp_path / "nowhere"))  # refused before replay
    args = ["adapt", "--data", str(site), "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--set", s))])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"--set {sets[-1].split('=')[0]}: not used" in result.output and key in result.output
    assert not (tmp_path / "r").exists()


def test_settings_record_only_what_is_used_and_the_help_example_works():
    from brainmri.train.adapt import check_overrides, recorded_settings

    sets = ["steps=null", "stage.epochs=8"]  # stage.epochs is read once steps is null
    cfg = load_adapt_config("default", sets)
    check_overrides(cfg, sets)
    settings = recorded_settings(cfg)
    assert settings["stage"]["epochs"] == 8 and settings["steps"] is None
    assert adapt_recipe(load_recipe("cpu"), cfg, 0, 24).train.stages[0].epochs == 8
    shown = CliRunner().invoke(app, ["adapt", "--help"], terminal_width=200).output
    assert "--set steps=100" in shown and "stage.epochs" not in shown
    cfg = load_adapt_config("default", ["steps=100"])  # the --help example
    check_overrides(cfg, ["steps=100"])
    settings = recorded_settings(cfg)
    assert settings["steps"] == 100 and "epochs" not in settings["stage"]
    assert settings["stage"]["lr"] == cfg.stage.lr
    assert not {"site_weight", "probe_c", "gate_blocks", "replay_clusters"} & set(settings)
    probe = recorded_settings(load_adapt_config("default", ["method=probe"]))
    assert {"probe_c", "site_weight"} <= set(probe)
    assert not {"stage", "steps", "batch_size", "gate_blocks"} & set(probe)


@pytest.mark.parametrize("n, steps, run", [(24, 50, (1, 50, 50)), (100, 50, (4, 13, 52)),
                                           (150, 50, (5, 10, 50)), (24, 2, (1, 2, 2))])  # fmt: skip
def test_run_length_is_steps_rounded_up_to_whole_epochs(n: int, steps: int, run: tuple):
    from brainmri.train.adapt import fine_tune_length

    cfg = load_adapt_config("default", [f"steps={steps}"])
    got = fine_tune_length(cfg, n)
    assert (got["steps_per_epoch"], got["epochs"], got["steps"]) == run
    assert adapt_recipe(load_recipe("cpu"), cfg, 0, n).train.stages[0].epochs == got["epochs"]


def test_replay_draw_is_disjoint_and_deals_every_class():
    pool = [Sample(Path(f"{c}_{i}.jpg"), c, "Training") for c in range(4) for i in range(30)]
    replay, holdout = draw_replay(pool, 10, 40, seed=3)
    assert len(replay) == 10 and len(holdout) == 40
    assert not {s.path for s in replay} & {s.path for s in holdout}
    assert {s.label for s in replay} == set(range(4))
    assert draw_replay(pool, 10, 40, seed=3) == (replay, holdout)
    assert draw_replay(pool, 10, 40, seed=4)[0] != replay


def test_weighted_replay_draw_follows_the_weights_and_stays_disjoint():
    pool = [Sample(Path(f"{c}_{i}.jpg"), c, "Training") for c in range(4) for i in range(30)]
    weights = np.array([50.0 if s.label == 2 else 1.0 for s in pool])
    replay, holdout = draw_replay(pool, 20, 40, seed=3, weights=weights)
    assert len(replay) == 20 == len({s.path for s in replay}) and len(holdout) == 40
    assert not {s.path for s in replay} & {s.path for s in holdout}
    assert sum(s.label == 2 for s in replay) >= 15  # 50:1 weights, 30 such images of 120
    assert draw_replay(pool, 20, 40, seed=3, weights=weights) == (replay, holdout)
    assert draw_replay(pool, 20, 40, seed=3)[0] != replay


def test_interpolated_weights_lie_between_source_and_fine_tuned():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    source = {n: v.detach().clone() for n, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3))  # BatchNorm buffers move too; num_batches_tracked is 1
    tuned = {n: v.detach().clone() for n, v in net.state_dict().items()}
    interpolate_weights(net, source, 1.0)
    assert all(torch.equal(v, tuned[n]) for n, v in net.state_dict().items())
    interpolate_weights(net, source, 0.25)
    for name, value in net.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.25 * tuned[name] + 0.75 * source[name])
        else:
            assert torch.equal(value, tuned[name])


@pytest.mark.parametrize("n_train, epochs", [(24, 50), (150, 10), (300, 5)])
def test_stage_epochs_follow_from_steps(n_train: int, epochs: int):
    cfg = load_adapt_config("default")
    recipe = adapt_recipe(load_recipe("cpu"), cfg, member=1, n_train=n_train)
    (stage,) = recipe.train.stages
    assert stage.epochs == epochs and recipe.seed == cfg.seed + 1 and recipe.ensemble == 1
    assert cfg.steps == 50 and len(CLASS_NAMES) == 4


@pytest.mark.parametrize("n, batch, steps", [(24, 32, 1), (64, 32, 2), (65, 32, 2), (66, 32, 3),
                                             (1, 32, 1), (33, 32, 1)])  # fmt: skip
def test_no_batch_of_one_image(n: int, batch: int, steps: int):
    from brainmri.train.epoch import steps_per_epoch

    assert steps_per_epoch(n, batch) == steps
