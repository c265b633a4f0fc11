"""The training recipe: a pydantic model loaded from YAML, with dotted command-line overrides.

Every epoch count, learning rate, fraction and size lives here as a default or in a YAML file
under configs/; nothing in the code hard-codes them.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from brainmri.errors import BrainMRIError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_Model = TypeVar("_Model", bound=BaseModel)


class DataConfig(_Strict):
    image_size: int = Field(224, ge=32, le=1024, description="square input size in pixels")
    val_fraction: float = Field(
        0.15,
        gt=0.0,
        le=0.5,
        description="share of Training held out for validation, dealt in whole duplicate "
        "groups (data/splits.py: k = round(1/val_fraction) folds, one is validation)",
    )
    split_seed: int | None = Field(
        None,
        description="seed of the train/val split (default: the recipe seed); fix it to "
        "compare or ensemble runs on one validation split; must match the seed of a data "
        "folder's splits/ written by clean",
    )
    max_per_class: int | None = Field(None, description="cap images per class (smoke tests)")
    intensity: Literal["none", "percentile"] = Field(
        "none", description="per-image intensity standardization before the model"
    )
    balance: Literal["none", "clusters"] = Field(
        "none",
        description="'clusters': draw training images (with replacement) so that every class "
        "is equally frequent inside each k-means cluster of frozen ImageNet Lite0 features, "
        "each cluster keeping its share (data/balance.py); 'none': a plain shuffle",
    )
    balance_clusters: int = Field(8, ge=2, description="k of the appearance clusters")
    balance_min_count: int = Field(
        10, ge=1, description="a (cluster, class) cell counts as at least this many images"
    )


class ModelConfig(_Strict):
    backbone: str = Field("efficientnet_lite0", description="timm model name")
    weights: Literal["pretrained", "none"] = Field(
        "pretrained", description="'pretrained': offline package / weights_file / hub; 'none'"
    )
    weights_file: str | None = Field(None, description="local .safetensors/.pth backbone weights")
    init_model: str | None = Field(
        None,
        description="start training from this brainmri model file's weights (same backbone and "
        "head); 'shipped' = the shipped model. Without it training starts from `weights`",
    )
    head: Literal["mlp", "linear", "gated"] = Field(
        "mlp",
        description="'mlp': BatchNorm, Dropout, Dense+Swish, Dropout, logits (the recipe); "
        "'linear': BatchNorm (a standardizer) then logits on the pooled features, the head "
        "`adapt --set method=probe` fits as a logistic regression; 'gated': an 'mlp' head, a "
        "linear site head and a gate mixing them, written by `adapt --set method=gated` "
        "(not trained by `train`)",
    )
    gate_blocks: list[int] = Field(
        default_factory=list,
        description="'gated' head: backbone blocks (timm forward_intermediates indices) whose "
        "average-pooled outputs the gate reads; empty: the pooled features",
    )
    dense_units: int = Field(256, ge=1)
    dropout: float = Field(0.35, ge=0.0, lt=1.0)
    head_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before the logits")
    l2: float = Field(1e-4, ge=0.0, description="L2 penalty on head Dense kernels (explicit term)")
    channels_last: bool = True


class AugmentConfig(_Strict):
    rotation_deg: float = 15.0
    shift: float = 0.10
    zoom: float = 0.10
    shear: float = Field(0.10, description="shear factor (tan of the angle), ±")
    hflip: bool = True
    brightness: tuple[float, float] = (0.85, 1.15)
    contrast: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    blur_prob: float = Field(0.0, ge=0.0, le=1.0, description="chance of a Gaussian blur")
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    lowres_prob: float = Field(0.0, ge=0.0, le=1.0, description="chance of down-then-up sampling")
    lowres_scale: tuple[float, float] = (0.4, 0.8)
    # MRI-specific ops (brainmri.data.mri_augment), per-image chances; 0 = off (the default)
    mri_curve_prob: float = Field(0.0, ge=0.0, le=1.0, description="random intensity curve")
    mri_invert_prob: float = Field(0.0, ge=0.0, le=1.0, description="negative of the head")
    mri_histogram_prob: float = Field(0.0, ge=0.0, le=1.0, description="histogram randomization")
    mri_artifact_prob: float = Field(0.0, ge=0.0, le=1.0, description="one TorchIO MRI artifact")
    mri_frame_prob: float = Field(0.0, ge=0.0, le=1.0, description="shrink into a black frame")


class StageConfig(_Strict):
    name: str
    trainable_fraction: float = Field(
        ..., ge=0.0, le=1.0, description="share of backbone blocks trained, counted from the top"
    )
    epochs: int = Field(..., ge=0)
    lr: float = Field(..., gt=0.0)
    min_lr: float = Field(1e-6, ge=0.0)
    warmup_epochs: int = Field(1, ge=0, description="linear warm-up, per step, over these epochs")
    warmup_lr_init: float = Field(1e-6, ge=0.0, description="LR of the first warm-up step")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled decay (backbone+head)")
    cam_penalty: float = Field(
        0.0,
        ge=0.0,
        description="weight of a loss term: the share of the true class's Grad-CAM map outside "
        "the head (train/cam_penalty.py); 0 = off. Needs a trainable backbone, one process",
    )
    cam_apart: float = Field(
        0.0,
        ge=0.0,
        description="weight of a loss term that keeps the true class's Grad-CAM map apart from "
        "another class's: max(0, margin - their mean |difference|) (train/cam_penalty.py); "
        "0 = off. Same needs as cam_penalty",
    )
    cam_apart_margin: float = Field(
        0.1, gt=0.0, le=1.0, description="cam_apart's margin: the mean |difference| asked for"
    )
    freeze_bn_stats: bool = Field(
        False,
        description="every BatchNorm layer (backbone and head) keeps its running mean and "
        "variance while the stage trains (eval mode); their scale and shift still train",
    )

    @property
    def map_terms(self) -> bool:
        """Whether the stage trains with a term on the Grad-CAM map."""
        return self.cam_penalty > 0 or self.cam_apart > 0


class TrainConfig(_Strict):
    batch_size: int = Field(32, ge=1)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    class_weights: bool = True
    early_stopping_patience: int = Field(10, ge=1)
    plateau_patience: int = Field(3, ge=1, description="ReduceLROnPlateau patience (epochs)")
    plateau_factor: float = Field(0.5, gt=0.0, le=1.0)
    monitor: Literal["val_loss", "val_acc"] = "val_loss"
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, full fp32 on CPU; fp16 adds a gradient scaler",
    )
    num_threads: int | None = Field(None, description="torch intra-op threads (default: cores)")
    max_steps_per_epoch: int | None = Field(None, description="cap batches per epoch (tests)")
    cache_frozen_features: bool = Field(
        False,
        description="stages with trainable_fraction 0 train the head on backbone features "
        "computed once per stage (no augmentation in those stages; much faster epochs)",
    )
    stages: list[StageConfig]


class EvaluateConfig(_Strict):
    tta: int = Field(
        5, ge=1, le=5, description="TTA views of the validation figures reported after training"
    )
    batch_size: int = Field(64, ge=1)


class Recipe(_Strict):
    name: str = "recipe"
    seed: int = 42
    ensemble: int = Field(
        1,
        ge=1,
        le=16,
        description="members trained one after another (seeds seed, seed+1, ...) "
        "on one validation split; the shipped model averages their logits",
    )
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _check_stages(self) -> Recipe:
        if not self.train.stages:
            raise ValueError("train.stages must list at least one stage")
        return self


class AdaptConfig(_Strict):
    """`brainmri adapt`: fine-tune a model file on a few labelled images of a new site."""

    stage: StageConfig = Field(
        ..., description="one training stage run for its full epochs (no validation to stop on)"
    )
    batch_size: int = Field(32, ge=1)
    steps: int | None = Field(
        50,
        ge=1,
        description="optimizer steps per member, whatever the number of site images (the "
        "stage's epochs follow from it); None: run stage.epochs",
    )
    replay_ratio: float = Field(
        1.0, ge=0.0, description="benchmark Training images mixed in per site image (forgetting)"
    )
    method: Literal["finetune", "probe", "gated"] = Field(
        "finetune",
        description="'finetune': the training loop on site + replay images; 'probe': a linear "
        "head fitted as a logistic regression on the frozen pooled features of the site images "
        "(weight site_weight) and every image of the replay pool; 'gated': the source head kept, "
        "a site head fitted on the site images alone and a gate (site against the pool) mixing "
        "them (train/probe_head.py)",
    )
    site_weight: float = Field(30.0, gt=0.0, description="probe: sample weight of a site image")
    probe_c: float = Field(0.01, gt=0.0, description="probe/gated: inverse L2 strength (C)")
    gate_blocks: list[int] = Field(
        default_factory=lambda: [4, 5, 6],
        description="gated: backbone blocks whose average-pooled outputs the gate reads "
        "(docs/RESULTS.md §21.3); []: the pooled features (§21.2)",
    )
    replay_draw: Literal["classes", "clusters"] = Field(
        "classes",
        description="how replay images are drawn: 'classes' in turn; 'clusters': weighted by "
        "class balance inside appearance clusters of the benchmark pool (data/balance.py), so "
        "that replay shows the classes in every look (e.g. tumours that look like the pool's "
        "notumor images) instead of teaching which look goes with which class",
    )
    replay_clusters: int = Field(8, ge=2, description="k of the clusters ('clusters' draw)")
    interpolate: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="weight a of the fine-tuned parameters in the saved model: a·adapted + "
        "(1 − a)·source, buffers included (WiSE-FT); 1: the fine-tuned model as trained",
    )
    calibration_share: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="finetune: share of the site images (whole near-copy groups, stratified by "
        "class) held out of a first fine-tune; the temperature is fitted on them "
        "(docs/RESULTS.md §22); 0: the source model's temperature",
    )
    calibration_refit: bool = Field(
        True,
        description="with calibration_share: fine-tune again on every site image and keep the "
        "fitted temperature (twice the time); false: save the first fine-tune",
    )
    guard_holdout: int = Field(
        400, ge=0, description="benchmark images, not trained on here, that set the guard threshold"
    )
    guard_accept: float = Field(0.99, gt=0.0, le=1.0, description="share of them accepted")
    seed: int = 0


def load_adapt_config(
    source: str | Path = "default", overrides: list[str] | None = None
) -> AdaptConfig:
    """Adaptation settings by path or built-in name (configs/adapt/<name>.yaml)."""
    path = Path(source)
    if not path.is_file():
        path = Path(str(resources.files("brainmri") / "configs" / "adapt" / f"{source}.yaml"))
        if not path.is_file():
            raise BrainMRIError(f"adaptation settings not found: {source}")
    data = _read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    return _validated(AdaptConfig, data, f"adapt settings {source}", "settings")


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped in the package (configs/*.yaml)."""
    folder = resources.files("brainmri") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if not path.is_file():
        builtin = resources.files("brainmri") / "configs" / f"{source}.yaml"
        if builtin.is_file():
            text = builtin.read_text()
        else:
            raise BrainMRIError(
                f"recipe not found: {source} "
                f"(a YAML file, or one of {', '.join(builtin_recipes())})"
            )
    else:
        text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BrainMRIError(f"recipe {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise BrainMRIError(f"recipe {source} must be a YAML mapping")
    return data


def apply_override(data: dict[str, Any], dotted: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) in place; `train.stages.0.epochs=1` indexes."""
    key, sep, raw = dotted.partition("=")
    if not sep or not key:
        raise BrainMRIError(f"override must look like key.path=value, got {dotted!r}")
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise BrainMRIError(f"override {key}: {part!r} is not a valid index")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
                if not isinstance(node, dict | list):
                    raise BrainMRIError(f"override {key}: {part!r} is not a section")
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise BrainMRIError(f"override {key}: {part!r} is not a section")


def load_recipe(source: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by path or built-in name, apply overrides, validate."""
    data = _read_yaml(source)
    for item in overrides or []:
        apply_override(data, item)
    return recipe_from_dict(data, str(source))


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    return _validated(Recipe, data, f"recipe {source}", "recipe")


def _validated(model: type[_Model], data: dict[str, Any], what: str, top: str) -> _Model:
    """`model` from `data`; the first validation error as one line: "what: field.path: msg"
    (`top` names the field when the error is about the whole mapping)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or top
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = unknown_key_message(model, first["loc"])
        raise BrainMRIError(f"{what}: {where}: {msg}") from exc


def unknown_key_message(model: type[BaseModel], loc: tuple) -> str:
    """'unknown key (did you mean batch_size?)', or the keys there when none is close."""
    known = _keys_at(model, [p for p in loc[:-1] if not isinstance(p, int)])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (known here: {', '.join(known)})" if known else "unknown key"


def _keys_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the settings section at `path` inside `model` ([] if not a section)."""
    cls: Any = model
    for part in path:
        field = cls.model_fields.get(part)
        cls = None if field is None else _section_type(field.annotation)
        if cls is None:
            return []
    return list(cls.model_fields)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (X, X | None, list[X]), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
