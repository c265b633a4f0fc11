"""The grouped, leak-free train/validation split (data/splits.py) and how train takes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri.config import load_recipe
from brainmri.data.dedupe import Features, compute_features
from brainmri.data.folders import Sample, scan_split, stratified_split
from brainmri.data.splits import (
    SPLIT_THRESHOLD,
    check_validation,
    duplicate_components,
    grouped_split,
    leak_counts,
    read_split,
    write_split,
)
from brainmri.errors import BrainMRIError
from brainmri.train.data import load_split, model_split


def unit(v: np.ndarray) -> np.ndarray:
    v = v - v.mean()
    return (v / np.linalg.norm(v)).astype(np.float32)


def synthetic(n_per_class: int = 40, copies: int = 4, seed: int = 0):
    """Samples + features: every 5th image of a class has `copies` near copies (corr > 0.98)
    and one exact copy; the rest are unrelated random vectors."""
    rng = np.random.default_rng(seed)
    samples, feats = [], []
    for label in range(4):
        for i in range(n_per_class):
            base = unit(rng.normal(size=576))
            group = [("", base)]
            if i % 5 == 0:
                group += [
                    ("", unit(base + 0.08 * unit(rng.normal(size=576)))) for _ in range(copies)
                ]
                group += [("exact", base)]
            for k, (kind, vec) in enumerate(group):
                sha = f"{label}-{i}" if kind == "exact" or k == 0 else f"{label}-{i}-{k}"
                samples.append(Sample(Path(f"/x/{label}/{i:03d}_{k}.jpg"), label, "Training"))
                feats.append(Features(sha, vec))
    return samples, feats


def test_components_join_exact_and_near_copies_only():
    samples, feats = synthetic(10)
    groups = duplicate_components(feats, SPLIT_THRESHOLD)
    by_name = {s.path.name: g for s, g in zip(samples, groups, strict=True)}
    # image 0 of a class: itself, 4 near copies, 1 exact copy -> one group of 6
    assert len({by_name[f"000_{k}.jpg"] for k in range(6)}) == 1
    assert by_name["000_0.jpg"] != by_name["001_0.jpg"]  # unrelated images stay apart
    assert len(set(groups.tolist())) == 40  # 10 images per class, each with its copies


def test_grouped_split_never_separates_a_group_and_is_stratified():
    samples, feats = synthetic(60)
    train, val, info = grouped_split(samples, 0.15, seed=42, features=feats)
    groups = duplicate_components(feats, SPLIT_THRESHOLD)
    group_of = {s.path: g for s, g in zip(samples, groups, strict=True)}
    assert not {group_of[s.path] for s in train} & {group_of[s.path] for s in val}
    assert len(train) + len(val) == len(samples) and not set(train) & set(val)
    assert info.folds == 7 and info.groups == 240 and info.multi_file_groups == 48
    share = [sum(s.label == k for s in val) / sum(s.label == k for s in samples) for k in range(4)]
    assert all(0.08 < f < 0.22 for f in share), share
    by_feat = {s.path: f for s, f in zip(samples, feats, strict=True)}
    leaks = leak_counts([by_feat[s.path] for s in train], [by_feat[s.path] for s in val])
    assert leaks["exact"] == leaks["near_0.995"] == leaks["near_0.98"] == 0
    # the per-image split of the same data does leak: the test above can fail
    old_tr, old_va = stratified_split(samples, 0.15, 42)
    old = leak_counts([by_feat[s.path] for s in old_tr], [by_feat[s.path] for s in old_va])
    assert old["exact"] > 0 and old["near_0.98"] > old["exact"]


def test_grouped_split_is_seeded_and_order_free():
    samples, feats = synthetic(30)
    a = grouped_split(samples, 0.2, seed=1, features=feats)[1]
    rev = grouped_split(samples[::-1], 0.2, seed=1, features=feats[::-1])[1]
    other = grouped_split(samples, 0.2, seed=2, features=feats)[1]
    assert [s.path for s in a] == [s.path for s in rev]
    assert {s.path for s in a} != {s.path for s in other}


@pytest.mark.parametrize("fraction", [0.0, 0.6, -0.1])
def test_fraction_out_of_range_is_refused(fraction):
    samples, feats = synthetic(5)
    with pytest.raises(BrainMRIError, match="val_fraction"):
        grouped_split(samples, fraction, 0, features=feats)


def test_empty_or_single_class_validation_is_an_error():
    with pytest.raises(BrainMRIError, match="at least two classes"):
        check_validation([], "x")
    with pytest.raises(BrainMRIError, match="at least two classes"):
        check_validation([Sample(Path("a.jpg"), 1, "Training")] * 3, "x")
    check_validation([Sample(Path("a.jpg"), 1, "Training"), Sample(Path("b.jpg"), 2, "T")], "x")


def test_split_files_round_trip_and_old_splits_are_refused(tmp_path):
    samples, feats = synthetic(10)
    root = Path("/x")
    tr, va, info = grouped_split(samples, 0.25, 3, features=feats)
    write_split(tmp_path / "splits", tr, va, info, root)
    tr2, va2, info2 = read_split(tmp_path / "splits", root)
    assert [s.path for s in va2] == [s.path for s in va] and info2 == info
    (tmp_path / "splits" / "split.json").unlink()
    with pytest.raises(BrainMRIError, match="older `brainmri clean`"):
        read_split(tmp_path / "splits", root)


def _folder_with_copies(src: Path, dst: Path) -> Path:
    """A Training folder of real images plus, for 3 of them per class, an exact copy and a
    re-encoded, resized copy (what the benchmark is full of)."""
    for cls_dir in sorted((src / "Training").iterdir()):
        out = dst / "Training" / cls_dir.name
        out.mkdir(parents=True)
        for k, f in enumerate(sorted(cls_dir.iterdir())):
            shutil.copy2(f, out / f.name)
            if k < 3:
                shutil.copy2(f, out / f"copy_{f.name}")
                im = Image.open(f).convert("L")
                im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(
                    out / f"re_{f.stem}.jpg", quality=70
                )
    return dst


def test_train_split_of_a_folder_with_copies_has_no_leak(small_benchmark, tmp_path):
    data = _folder_with_copies(small_benchmark, tmp_path / "data")
    recipe = load_recipe("smoke", ["data.max_per_class=null"])
    train, val, split = load_split(data, recipe)
    assert split["source"] == "drawn from Training/ by train" and split["near_threshold"] == 0.98
    f = compute_features([s.path for s in train + val], workers=1)
    leaks = leak_counts(f[: len(train)], f[len(train) :])
    assert leaks["exact"] == leaks["near_0.98"] == 0, leaks
    stems = {s.path.name.removeprefix("copy_").removeprefix("re_").split(".")[0] for s in val}
    assert not stems & {s.path.name.removeprefix("copy_").removeprefix("re_").split(".")[0]
                        for s in train}  # fmt: skip


def test_train_refuses_a_recipe_that_asks_for_another_split_than_the_folders(
    small_benchmark, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(small_benchmark, data)
    recipe = load_recipe("smoke")  # val_fraction 0.25, split seed = seed 0
    samples = scan_split(data, "Training")
    tr, va, info = grouped_split(samples, 0.25, 0)
    write_split(data / "splits", tr, va, info, data)
    _, val, split = load_split(data, recipe)
    assert split["source"] == "splits/ of the data folder" and len(val) == len(va)
    other = load_recipe("smoke", ["data.split_seed=5"])
    with pytest.raises(BrainMRIError, match="split seed 5"):
        load_split(data, other)
    json.loads((data / "splits" / "split.json").read_text())  # still intact


def test_model_split_rebuilds_a_model_files_recorded_split(small_benchmark):
    """fit_guard, adapt_curve and framed find a model's own validation files from its file."""
    recipe = load_recipe("smoke", ["data.val_fraction=0.25", "data.split_seed=3"])
    _, val, info = grouped_split(scan_split(small_benchmark, "Training"), 0.25, 3)
    meta = {"recipe": recipe.model_dump(mode="json"), "info": {"split": info.to_dict()}}
    _, got, how = model_split(small_benchmark, meta)
    assert [s.path for s in got] == [s.path for s in val] and how["split"] == "grouped"
    meta["info"]["split"]["n_val"] += 1  # recorded on other data
    with pytest.raises(BrainMRIError, match="not the data it was trained on"):
        model_split(small_benchmark, meta)
    del meta["info"]["split"]  # a model from before the grouped split
    assert model_split(small_benchmark, meta)[2]["split"].startswith("stratified")
