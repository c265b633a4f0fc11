"""An ensemble of classifiers sharing one preprocessing: the mean of the members' logits."""

from __future__ import annotations

import torch
from torch import nn


def members_of(model: nn.Module) -> list[nn.Module]:
    """An ensemble's member classifiers, or [model] for a single one."""
    members = getattr(model, "members", None)
    return list(members) if members is not None else [model]


class EnsembleClassifier(nn.Module):
    """Averages member logits; a model file stores it with keys `members.<k>.<param>`."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Members' penultimate features concatenated: (N, sum of their widths)."""
        return torch.cat([m.penultimate(x) for m in self.members], dim=1)

    def penultimate_and_depths(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Members' penultimate features and guard depths, each concatenated over members."""
        parts = [m.penultimate_and_depths(x) for m in self.members]
        depths = [torch.cat(d, dim=1) for d in zip(*(p[1] for p in parts), strict=True)]
        return torch.cat([p[0] for p in parts], dim=1), depths

    def classify(self, penultimate: torch.Tensor) -> torch.Tensor:
        """Mean of member logits from concatenated features: forward == classify∘penultimate."""
        widths = [m.penultimate_width for m in self.members]
        parts = torch.split(penultimate, widths, dim=1)
        logits = [m.classify(f) for m, f in zip(self.members, parts, strict=True)]
        return torch.stack(logits).mean(dim=0)
