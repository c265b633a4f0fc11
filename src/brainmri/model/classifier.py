"""Backbone -> dual pooling (avg ‖ max) -> BatchNorm -> Dropout -> Dense+Swish -> Dropout -> logits.

Freezing is counted in backbone *units*: timm's fine-grained parameter groups (the stem, each
block, the final conv), in forward order. `trainable_fraction=f` trains the top round(f·U)
units (at least one when f > 0); the head always trains. Frozen BatchNorm stays in eval mode.
"""

from __future__ import annotations

import math

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import group_parameters
from torch import nn

from brainmri import CLASS_NAMES
from brainmri.config import ModelConfig
from brainmri.model.backbones import create_backbone

GUARD_BLOCKS = 3
"""Backbone blocks whose pooled outputs the input guard scores (the last three: EfficientNet
stages 4-6), besides the last conv stage; docs/RESULTS.md §16 has how this was chosen."""


class TumorClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int = len(CLASS_NAMES), pretrained=True):
        super().__init__()
        weights = cfg.weights if pretrained else "none"
        self.backbone, self.weights_source = create_backbone(
            cfg.backbone, weights, cfg.weights_file
        )
        self.num_features = int(self.backbone.num_features)
        self.pool = SelectAdaptivePool2d(pool_type="catavgmax", flatten=True)
        width = 2 * self.num_features
        self.gated = cfg.head == "gated"
        self.gate_blocks = list(cfg.gate_blocks) if self.gated else []
        if cfg.head == "linear":  # same six slots, so head[:4] / head[4:] keep their meaning
            slots = [nn.Identity() for _ in range(4)]
            self.head = nn.Sequential(nn.BatchNorm1d(width), *slots, nn.Linear(width, num_classes))
        elif self.gated:
            gate_width = self.block_width(self.gate_blocks)
            self.head = GatedHead(mlp_head(cfg, width, num_classes), width, num_classes, gate_width)
        else:
            self.head = mlp_head(cfg, width, num_classes)
        self.l2 = cfg.l2
        self.bn_stats_frozen = False  # set per stage (StageConfig.freeze_bn_stats)

    @property
    def dense(self) -> nn.Module:
        """The Dense layer of an 'mlp' head (an Identity in a linear head)."""
        return self.head.source[2] if self.gated else self.head[2]

    @property
    def penultimate_width(self) -> int:
        """Width of `penultimate` (dense_units; the pooled width for a linear head; for a gated
        one the pooled width plus the gate's block width)."""
        if self.gated:
            return 2 * self.num_features + self.head.gate_width
        return int(self.head[-1].in_features)

    def block_width(self, blocks: list[int]) -> int:
        """Channels of the given blocks' outputs, together (forward_intermediates indices with
        extra_blocks: 0 the stem, i the output of backbone.blocks[i - 1])."""
        stages = [self.backbone.conv_stem, *self.backbone.blocks]
        convs = [[m for m in stages[i].modules() if isinstance(m, nn.Conv2d)] for i in blocks]
        return sum(int(c[-1].out_channels) for c in convs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (avg ‖ max) backbone features, width 2 × num_features; for a gated head with
        gate blocks, followed by those blocks' average-pooled outputs (what the gate reads)."""
        if not self.gate_blocks:
            return self.pool(self.backbone(x))
        pooled, blocks = self.pooled_and_blocks(x, self.gate_blocks)
        return torch.cat([pooled, *blocks], dim=1)

    def pooled_and_blocks(
        self, x: torch.Tensor, blocks: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pooled features and the average-pooled outputs of `blocks`, from one backbone pass."""
        last, inter = self.backbone.forward_intermediates(
            x, indices=sorted(set(blocks)), extra_blocks=True
        )
        means = dict(zip(sorted(set(blocks)), (t.mean(dim=(2, 3)) for t in inter), strict=True))
        return self.pool(last), [means[i] for i in blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Head activations after Dense+SiLU (before the last Dropout/Linear): (N, dense_units);
        for a linear head the standardized pooled features, for a gated head the pooled ones."""
        return self._penultimate(self.features(x))

    def _penultimate(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.gated else self.head[:4](features)

    def classify(self, penultimate: torch.Tensor) -> torch.Tensor:
        """Logits from `penultimate` features: forward(x) == classify(penultimate(x))."""
        return self.head(penultimate) if self.gated else self.head[4:](penultimate)

    def penultimate_and_depths(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Penultimate features and what the input guard reads, from one backbone pass: the
        average-pooled outputs of the last GUARD_BLOCKS blocks and of the last conv stage."""
        n_blocks = len(self.backbone.blocks)
        guard = list(range(n_blocks - GUARD_BLOCKS + 1, n_blocks + 1))
        last, inter = self.backbone.forward_intermediates(
            x, indices=sorted(set(guard + self.gate_blocks)), extra_blocks=True
        )
        means = dict(zip(sorted(set(guard + self.gate_blocks)), inter, strict=True))
        means = {i: t.mean(dim=(2, 3)) for i, t in means.items()}
        depths = [means[i] for i in guard] + [last.mean(dim=(2, 3))]
        features = torch.cat([self.pool(last), *(means[i] for i in self.gate_blocks)], dim=1)
        return self._penultimate(features), depths

    def l2_penalty(self) -> torch.Tensor:
        """Keras-style kernel L2 on the head's Dense layers: l2 · Σ w²."""
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        return self.l2 * sum(m.weight.pow(2).sum() for m in linears)

    # --- freezing -------------------------------------------------------------------------
    def backbone_units(self) -> list[list[str]]:
        """Backbone parameter names grouped into units, bottom (stem) to top."""
        groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=False))
        return [groups[k] for k in sorted(groups)]

    def set_trainable_fraction(self, fraction: float) -> list[str]:
        """Freeze the backbone except its top `fraction` of units; return trainable names."""
        units = self.backbone_units()
        n_train = trainable_unit_count(len(units), fraction)
        trainable = {n for unit in units[len(units) - n_train :] for n in unit}
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in trainable)
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return sorted(trainable)

    def train(self, mode: bool = True) -> TumorClassifier:
        """Like nn.Module.train, but BatchNorm layers whose parameters are frozen stay in eval,
        and with `bn_stats_frozen` every BatchNorm layer does (its statistics stay put)."""
        super().train(mode)
        if mode:
            for m in (self if self.bn_stats_frozen else self.backbone).modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters(recurse=False))
                    frozen = bool(params) and not any(p.requires_grad for p in params)
                    if self.bn_stats_frozen or frozen:
                        m.eval()
        return self


def mlp_head(cfg: ModelConfig, width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm1d(width),
        nn.Dropout(cfg.dropout),
        nn.Linear(width, cfg.dense_units),
        nn.SiLU(),
        nn.Dropout(cfg.head_dropout),
        nn.Linear(cfg.dense_units, num_classes),
    )


class GatedHead(nn.Module):
    """Two heads on the pooled features and a gate between them (docs/RESULTS.md §21):
    log(g·softmax(site) + (1 − g)·softmax(source / T_source)), g = sigmoid(gate), the
    probability that the input is from the site. Its logits are log-probabilities (the
    file's temperature is 1; the source's own is the `source_temperature` buffer).

    Input: the pooled features (width), then gate_width features the gate alone reads (the
    average-pooled outputs of earlier blocks, §21.3); gate_width 0: the gate reads the pooled."""

    def __init__(self, source: nn.Sequential, width: int, num_classes: int, gate_width: int = 0):
        super().__init__()
        self.width, self.gate_width = width, gate_width
        self.source = source
        self.site = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, num_classes))
        gate_in = gate_width or width
        self.gate = nn.Sequential(nn.BatchNorm1d(gate_in), nn.Linear(gate_in, 1))
        self.register_buffer("source_temperature", torch.ones(1))

    def _gate_input(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, self.width :] if self.gate_width else features

    def site_probability(self, features: torch.Tensor) -> torch.Tensor:
        """g: (N,)."""
        return torch.sigmoid(self.gate(self._gate_input(features))[:, 0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.gate(self._gate_input(features))
        pooled = features[:, : self.width]
        site = nn.functional.logsigmoid(z) + torch.log_softmax(self.site(pooled), dim=1)
        source_logits = self.source(pooled) / self.source_temperature
        source = nn.functional.logsigmoid(-z) + torch.log_softmax(source_logits, dim=1)
        return torch.logsumexp(torch.stack([site, source]), dim=0)


def trainable_unit_count(total_units: int, fraction: float) -> int:
    """How many top units `fraction` trains (documented rule, used by tests and docs)."""
    if fraction <= 0:
        return 0
    if fraction >= 1:
        return total_units
    return min(total_units, max(1, math.floor(fraction * total_units + 0.5)))
