"""Recipes: built-ins load, dotted overrides apply, user mistakes raise BrainMRIError."""

from __future__ import annotations

import pytest

from brainmri.config import (
    Recipe,
    apply_override,
    builtin_recipes,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
)
from brainmri.errors import BrainMRIError


def test_builtin_recipes_listed():
    names = builtin_recipes()
    assert "smoke" in names and "seed" in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", builtin_recipes())
def test_each_builtin_recipe_loads(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.train.stages, name
    for stage in recipe.train.stages:
        assert 0.0 <= stage.trainable_fraction <= 1.0
        assert stage.lr > 0


def test_smoke_recipe_is_tiny():
    recipe = load_recipe("smoke")
    assert recipe.data.image_size <= 64
    assert recipe.data.max_per_class is not None and recipe.data.max_per_class <= 16
    assert [s.trainable_fraction for s in recipe.train.stages] == [0.0, 0.3, 1.0]


def test_overrides_apply():
    recipe = load_recipe(
        "smoke",
        [
            "train.stages.0.epochs=3",
            "train.stages.1.lr=0.5",
            "model.weights=none",
            "augment.brightness=[0.9, 1.1]",
            "train.max_steps_per_epoch=2",
            "data.max_per_class=null",
        ],
    )
    assert recipe.train.stages[0].epochs == 3
    assert recipe.train.stages[1].lr == 0.5
    assert recipe.model.weights == "none"
    assert recipe.augment.brightness == (0.9, 1.1)
    assert recipe.train.max_steps_per_epoch == 2
    assert recipe.data.max_per_class is None
    # untouched values keep the file's
    assert recipe.train.stages[0].lr == load_recipe("smoke").train.stages[0].lr


def test_override_replaces_whole_stage_list():
    recipe = load_recipe(
        "smoke",
        ["train.stages=[{name: only, trainable_fraction: 0.0, epochs: 1, lr: 0.01}]"],
    )
    assert [s.name for s in recipe.train.stages] == ["only"]


def test_apply_override_creates_missing_section():
    data: dict = {}
    apply_override(data, "evaluate.tta=3")
    assert data == {"evaluate": {"tta": 3}}


@pytest.mark.parametrize(
    "override, where",
    [
        ("train.bogus=1", "train.bogus"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("train.stages.0.colour=red", "train.stages.0.colour"),
    ],
)
def test_unknown_key_raises(override, where):
    with pytest.raises(BrainMRIError, match=where):
        load_recipe("smoke", [override])


@pytest.mark.parametrize(
    "override, says",
    [
        ("train.batchsize=4", "train.batchsize: unknown key (did you mean batch_size?)"),
        ("train.stages.0.epoch=4", "train.stages.0.epoch: unknown key (did you mean epochs?)"),
        ("zzz.q=1", "zzz: unknown key (known here: name, seed, ensemble, data, model,"),
    ],
)
def test_a_misspelt_key_gets_the_nearest_known_one(override, says):
    with pytest.raises(BrainMRIError) as info:
        load_recipe("smoke", [override])
    assert says in str(info.value) and "Extra inputs" not in str(info.value)


@pytest.mark.parametrize(
    "override, where",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.stages.0.epochs=x", "train.stages.0.epochs"),
        ("data.image_size=[1, 2]", "data.image_size"),
        ("model.weights=imagenet", "model.weights"),
        ("train.stages.1.trainable_fraction=1.5", "train.stages.1.trainable_fraction"),
        ("data.val_fraction=0", "data.val_fraction"),  # no validation: refused, not ignored
        ("data.val_fraction=0.6", "data.val_fraction"),
        ("train.stages.0.warmup_lr_init=-1", "train.stages.0.warmup_lr_init"),
        ("train.amp=fp8", "train.amp"),
    ],
)
def test_bad_value_names_field_path(override, where):
    with pytest.raises(BrainMRIError) as info:
        load_recipe("smoke", [override])
    assert where in str(info.value)
    assert "\n" not in str(info.value).splitlines()[0]


@pytest.mark.parametrize(
    "override",
    [
        "no-equals-sign",
        "=1",
        "train.stages.9.epochs=1",  # index out of range
        "train.stages.x.epochs=1",  # not an index
        "seed.x=1",  # a scalar is not a section
        "train.stages.0.name.x=1",
        "train.stages=[]",  # at least one stage
    ],
)
def test_malformed_override_raises(override):
    with pytest.raises(BrainMRIError):
        load_recipe("smoke", [override])


def test_override_through_a_list_of_scalars_is_a_user_error():
    # augment.brightness is a list of floats: indexing into it then asking for a key is a user
    # mistake and must raise BrainMRIError, not a TypeError traceback.
    with pytest.raises(BrainMRIError):
        load_recipe("smoke", ["augment.brightness.0.x=1"])


def test_missing_recipe_raises(tmp_path):
    with pytest.raises(BrainMRIError, match="recipe not found"):
        load_recipe("no-such-recipe")
    with pytest.raises(BrainMRIError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_bad_yaml_files_raise(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(BrainMRIError, match="not valid YAML"):
        load_recipe(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(BrainMRIError, match="mapping"):
        load_recipe(scalar)
    nostages = tmp_path / "nostages.yaml"
    nostages.write_text("name: x\n")
    with pytest.raises(BrainMRIError, match="train"):
        load_recipe(nostages)


def test_dump_and_reload_round_trip(tmp_path):
    recipe = load_recipe("smoke", ["train.stages.0.epochs=7", "augment.hflip=false"])
    path = tmp_path / "recipe.yaml"
    dump_recipe(recipe, path)
    assert load_recipe(path) == recipe
    assert recipe_from_dict(recipe.model_dump(mode="json")) == recipe
