"""`adapt --set method=probe|gated`: heads fitted as logistic regressions on frozen features.

docs/RESULTS.md §20.3–20.6: the shipped model's pooled backbone features carry a new site's
classes better than its benchmark-trained head uses them, and a standardized logistic
regression on them, fitted on the site images (each weighted `site_weight`) together with every
benchmark Training image of the pool, keeps the benchmark while taking part of the site. This
fits that regression (scikit-learn) and writes it into a `model.head: linear` head — the
standardizer as an eval-mode BatchNorm, the coefficients as the Linear layer — so the result is
an ordinary model file. The backbone is not changed.

`method=gated` (§21) keeps the source head and adds two regressions on the same features: a
site head fitted on the site images alone and a gate (site images against the pool) whose
probability mixes the two heads' answers (`model.classifier.GatedHead`). The gate reads the
average-pooled outputs of `gate_blocks` (earlier backbone blocks, §21.3), where the site's
look shows more plainly than in the class-trained pooled features.
"""

from __future__ import annotations

import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.config import AdaptConfig, Recipe, recipe_from_dict
from brainmri.model.classifier import TumorClassifier
from brainmri.train.epoch import view_logits

ABSENT_LOGIT = -1e4
"""Bias of a class the fit never saw: never answered."""


def head_recipe(recipe: Recipe, head: str, gate_blocks: list[int] | None = None) -> Recipe:
    """The recipe with `model.head: head` (what the saved file is rebuilt from)."""
    data = recipe.model_dump(mode="json")
    data["model"]["head"] = head
    data["model"]["gate_blocks"] = list(gate_blocks or [])
    return recipe_from_dict(data, f"adapt {head} head")


class _PooledBlocks(torch.nn.Module):
    """Pooled backbone features, then the average-pooled outputs of `blocks`."""

    def __init__(self, model: TumorClassifier, blocks: list[int]) -> None:
        super().__init__()
        self.model, self.blocks = model, list(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blocks:
            return self.model.pool(self.model.backbone(x))
        pooled, blocks = self.model.pooled_and_blocks(x, self.blocks)
        return torch.cat([pooled, *blocks], dim=1)


def pooled_features(
    member: TumorClassifier, x: torch.Tensor, recipe: Recipe, mean, std, blocks=()
) -> np.ndarray:
    """Pooled backbone features of uint8 images, preprocessed as the model's recipe says, then
    the average-pooled outputs of `blocks` (none by default)."""
    net = _PooledBlocks(member, list(blocks))
    return view_logits(net, x, recipe, torch.device("cpu"), mean, std)[0].numpy()


def logistic_pipeline(c: float):
    """Standardizer + L2 logistic regression at inverse strength `c` (an unfitted scikit-learn
    pipeline): the probe head of adapt and of the bench probes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None, c: float):
    """`logistic_pipeline(c)` fitted, sample-weighted."""
    return logistic_pipeline(c).fit(x, y, logisticregression__sample_weight=weight)


def fit_gate(site_x: np.ndarray, pool_x: np.ndarray, c: float):
    """The gate of a gated head: site images (class 1) against the benchmark pool (class 0),
    the two classes weighted equally."""
    x = np.concatenate([site_x, pool_x])
    y = np.concatenate([np.ones(len(site_x), int), np.zeros(len(pool_x), int)])
    w = np.where(y == 1, len(pool_x) / max(len(site_x), 1), 1.0)
    return fit_logistic(x, y, w, c)


def fit_linear_head(
    member: TumorClassifier,
    recipe: Recipe,
    site: tuple[torch.Tensor, torch.Tensor],
    pool: tuple[torch.Tensor, torch.Tensor],
    cfg: AdaptConfig,
    mean,
    std,
    source_temperature: float = 1.0,
) -> tuple[TumorClassifier, dict]:
    """(a copy of member with the fitted linear or gated head, figures of the fit)."""
    member.eval()
    blocks = cfg.gate_blocks if cfg.method == "gated" else []
    feats = [pooled_features(member, x, recipe, mean, std, blocks) for x in (site[0], pool[0])]
    if cfg.method == "gated":
        out, fig = _gated_member(member, recipe, feats, site[1].numpy(), cfg)
        out.head.source_temperature.fill_(source_temperature)
        return out, fig
    x = np.concatenate(feats)
    y = np.concatenate([site[1].numpy(), pool[1].numpy()])
    w = np.concatenate([np.full(len(site[1]), cfg.site_weight), np.ones(len(pool[1]))])
    pipe = fit_logistic(x, y, w, cfg.probe_c)
    scaler, lr = pipe[0], pipe[-1]
    out = TumorClassifier(head_recipe(recipe, "linear").model, len(CLASS_NAMES), pretrained=False)
    out.backbone.load_state_dict(member.backbone.state_dict())
    write_linear(out.head[0], out.head[-1], scaler, lr)
    train_acc = float((pipe.predict(feats[0]) == site[1].numpy()).mean())
    fig = {"method": "probe", "site_n": len(site[1]), "benchmark_n": len(pool[1]),
           "site_weight": cfg.site_weight, "C": cfg.probe_c, "site_train_acc": train_acc,
           "classes": [CLASS_NAMES[int(c)] for c in lr.classes_]}  # fmt: skip
    return out.eval(), fig


def _gated_member(
    member: TumorClassifier, recipe: Recipe, feats: list[np.ndarray], site_y, cfg: AdaptConfig
) -> tuple[TumorClassifier, dict]:
    """A copy of member with a gated head: its own head as the source head (module doc).
    feats: (site, pool) features, pooled then the gate blocks' (`pooled_features`)."""
    width = 2 * member.num_features
    pooled = [f[:, :width] for f in feats]
    gate_in = [f[:, width:] for f in feats] if cfg.gate_blocks else pooled
    site_pipe = fit_logistic(pooled[0], site_y, None, cfg.probe_c)
    gate_pipe = fit_gate(gate_in[0], gate_in[1], cfg.probe_c)
    out_recipe = head_recipe(recipe, "gated", cfg.gate_blocks)
    out = TumorClassifier(out_recipe.model, len(CLASS_NAMES), pretrained=False)
    out.backbone.load_state_dict(member.backbone.state_dict())
    out.head.source.load_state_dict(member.head.state_dict())
    write_linear(out.head.site[0], out.head.site[1], site_pipe[0], site_pipe[-1])
    write_linear(out.head.gate[0], out.head.gate[1], gate_pipe[0], gate_pipe[-1], binary=True)
    site_acc = float((site_pipe.predict(pooled[0]) == site_y).mean())
    fig = {"method": "gated", "site_n": len(site_y), "benchmark_n": len(feats[1]),
           "C": cfg.probe_c, "site_train_acc": site_acc, "gate_blocks": list(cfg.gate_blocks),
           "gate_site_train": float(gate_pipe.predict_proba(gate_in[0])[:, 1].mean()),
           "gate_pool_train": float(gate_pipe.predict_proba(gate_in[1])[:, 1].mean()),
           "classes": [CLASS_NAMES[int(c)] for c in site_pipe[-1].classes_]}  # fmt: skip
    return out.eval(), fig


@torch.no_grad()
def write_linear(bn, lin, scaler, lr, binary: bool = False) -> None:
    """Standardizer into the BatchNorm, coefficients into the Linear; absent classes get
    ABSENT_LOGIT (binary class fits: the first class at logit 0). binary: a one-logit Linear
    holding the logit of class 1 (the gate)."""
    bn.running_mean.copy_(torch.as_tensor(scaler.mean_, dtype=torch.float32))
    var = np.maximum(np.asarray(scaler.scale_, dtype=np.float64) ** 2 - bn.eps, 0.0)
    bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float32))
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    if binary:
        lin.weight[0] = torch.as_tensor(np.asarray(lr.coef_)[0], dtype=torch.float32)
        lin.bias[0] = float(np.asarray(lr.intercept_)[0])
        return
    lin.weight.zero_()
    lin.bias.fill_(ABSENT_LOGIT)
    classes = [int(c) for c in lr.classes_]
    coef, intercept = np.asarray(lr.coef_), np.asarray(lr.intercept_)
    if len(classes) == 2:
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    for row, c in enumerate(classes):
        lin.weight[c] = torch.as_tensor(coef[row], dtype=torch.float32)
        lin.bias[c] = float(intercept[row])
