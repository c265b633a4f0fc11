"""One process or many (torchrun): rank, world size, device, barrier, environment record."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from brainmri import __version__
from brainmri.platform_info import cpu_capability, cpu_model


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str | None) -> Dist:
    """Use torchrun's env (WORLD_SIZE > 1) for DDP (NCCL on GPU, gloo on CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        dev = torch.device(f"cuda:{local}") if want_cuda else torch.device("cpu")
        if want_cuda:
            torch.cuda.set_device(dev)
        return Dist(dist.get_rank(), world, dev)
    if device:
        return Dist(0, 1, torch.device(device))
    return Dist(0, 1, torch.device("cuda" if want_cuda else "cpu"))


def environment(d: Dist) -> dict:
    """What the run ran on: versions, platform, device, world size, threads."""
    import timm

    env = {
        "brainmri": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(d.device),
        "world_size": d.world,
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if d.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(d.device)
    return env
