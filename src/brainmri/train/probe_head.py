"""`adapt --set method=probe`: a linear head fitted as a logistic regression on frozen features.

docs/RESULTS.md §20.3–20.6: the shipped model's pooled backbone features carry a new site's
classes better than its benchmark-trained head uses them, and a standardized logistic
regression on them, fitted on the site images (each weighted `site_weight`) together with every
benchmark Training image of the pool, keeps the benchmark while taking part of the site. This
fits that regression (scikit-learn) and writes it into a `model.head: linear` head — the
standardizer as an eval-mode BatchNorm, the coefficients as the Linear layer — so the result is
an ordinary model file. The backbone is not changed.
"""

from __future__ import annotations

import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.config import AdaptConfig, Recipe, recipe_from_dict
from brainmri.model.classifier import TumorClassifier
from brainmri.train.epoch import _Pooled, view_logits

ABSENT_LOGIT = -1e4
"""Bias of a class the fit never saw: never answered."""


def linear_recipe(recipe: Recipe) -> Recipe:
    """The recipe with `model.head: linear` (what the saved file is rebuilt from)."""
    data = recipe.model_dump(mode="json")
    data["model"]["head"] = "linear"
    return recipe_from_dict(data, "adapt probe")


def pooled_features(
    member: TumorClassifier, x: torch.Tensor, recipe: Recipe, mean, std
) -> np.ndarray:
    """Pooled backbone features of uint8 images, preprocessed as the model's recipe says."""
    return view_logits(_Pooled(member), x, recipe, torch.device("cpu"), mean, std)[0].numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None, c: float):
    """Standardizer + L2 logistic regression (scikit-learn pipeline), sample-weighted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    return pipe.fit(x, y, logisticregression__sample_weight=weight)


def fit_linear_head(
    member: TumorClassifier,
    recipe: Recipe,
    site: tuple[torch.Tensor, torch.Tensor],
    pool: tuple[torch.Tensor, torch.Tensor],
    cfg: AdaptConfig,
    mean,
    std,
) -> tuple[TumorClassifier, dict]:
    """(a copy of member with the fitted linear head, figures of the fit)."""
    member.eval()
    feats = [pooled_features(member, x, recipe, mean, std) for x in (site[0], pool[0])]
    x = np.concatenate(feats)
    y = np.concatenate([site[1].numpy(), pool[1].numpy()])
    w = np.concatenate([np.full(len(site[1]), cfg.site_weight), np.ones(len(pool[1]))])
    pipe = fit_logistic(x, y, w, cfg.probe_c)
    scaler, lr = pipe[0], pipe[-1]
    out = TumorClassifier(linear_recipe(recipe).model, len(CLASS_NAMES), pretrained=False)
    out.backbone.load_state_dict(member.backbone.state_dict())
    write_head(out, scaler, lr)
    train_acc = float((pipe.predict(feats[0]) == site[1].numpy()).mean())
    fig = {"method": "probe", "site_n": len(site[1]), "benchmark_n": len(pool[1]),
           "site_weight": cfg.site_weight, "C": cfg.probe_c, "site_train_acc": train_acc,
           "classes": [CLASS_NAMES[int(c)] for c in lr.classes_]}  # fmt: skip
    return out.eval(), fig


@torch.no_grad()
def write_head(model: TumorClassifier, scaler, lr) -> None:
    """Standardizer into the BatchNorm, coefficients into the Linear; absent classes get
    ABSENT_LOGIT (binary fits: the first class at logit 0)."""
    bn, lin = model.head[0], model.head[-1]
    bn.running_mean.copy_(torch.as_tensor(scaler.mean_, dtype=torch.float32))
    var = np.maximum(np.asarray(scaler.scale_, dtype=np.float64) ** 2 - bn.eps, 0.0)
    bn.running_var.copy_(torch.as_tensor(var, dtype=torch.float32))
    bn.weight.fill_(1.0)
    bn.bias.zero_()
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
