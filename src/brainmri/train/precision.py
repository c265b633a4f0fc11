"""Mixed precision: autocast per `train.amp`, and a gradient scaler for fp16.

`auto` is bf16 autocast on CUDA and full fp32 on CPU; `fp16` always runs with a gradient
scaler (fp16 gradients underflow without one); `bf16` needs none (fp32's exponent range).
"""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """An enabled GradScaler for fp16, a disabled (pass-through) one otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
