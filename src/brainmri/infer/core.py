"""Batched inference over a uint8 image cache, with optional test-time augmentation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from brainmri.data.transforms import normalize_intensity, to_model_input, tta_views


def autocast_context(device: torch.device, amp: str):
    """bf16/fp16 autocast where asked for (auto: bf16 on CUDA, none on CPU)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    amp: str = "auto",
    tta: int = 1,
    progress=None,
    intensity: str = "none",
) -> tuple[list[str], torch.Tensor]:
    """Logits for every view: (view names, tensor (V, N, C)) on CPU, float32."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    names: list[str] = []
    chunks: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True).float() / 255.0
        views = tta_views(normalize_intensity(x, intensity), tta)
        names = [n for n, _ in views]
        with autocast_context(device, amp):
            out = [model(to_model_input(v, channels_last)).float() for _, v in views]
        chunks.append(torch.stack(out).cpu())
        if progress is not None:
            progress.update(len(x))
    model.train(was_training)
    if not chunks:
        return names, torch.empty((tta, 0, 0))
    return names, torch.cat(chunks, dim=1)


def tta_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Average of per-view softmax probabilities (V, N, C) -> (N, C)."""
    return torch.softmax(logits / temperature, dim=-1).mean(dim=0)


@dataclass
class InferenceModel:
    """A loaded model file with the preprocessing its metadata prescribes."""

    model: nn.Module
    meta: dict
    device: torch.device

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    @property
    def intensity(self) -> str:
        return self.meta["recipe"]["data"].get("intensity", "none")

    @property
    def channels_last(self) -> bool:
        return bool(self.meta["recipe"]["model"].get("channels_last", True))

    @property
    def temperature(self) -> float:
        return float(self.meta["info"].get("temperature", 1.0))

    def logits(
        self, images: torch.Tensor, tta: int = 1, batch_size: int = 64, progress=None
    ) -> tuple[list[str], torch.Tensor]:
        """Per-view logits (V, N, C) for a uint8 (N, 1|3, S, S) batch at image_size."""
        return predict_logits(
            self.model, images, batch_size, self.device, self.channels_last, "auto", tta,
            progress, self.intensity,
        )  # fmt: skip

    def probs(self, images: torch.Tensor, tta: int = 1, batch_size: int = 64) -> torch.Tensor:
        """Calibrated probabilities (N, C), TTA views averaged."""
        return tta_probs(self.logits(images, tta, batch_size)[1], self.temperature)


def load_for_inference(
    path: str | Path, device: str | torch.device | None = None
) -> InferenceModel:
    """Load a model file for prediction (eval mode, channels_last when its recipe says so)."""
    from brainmri.model.checkpoint import load_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_model(path, dev)
    loaded = InferenceModel(model, meta, dev)
    if loaded.channels_last:
        loaded.model = model.to(memory_format=torch.channels_last)
    return loaded
