"""Result files name the CPU they were measured on."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainmri.platform_info import cpu_capability, cpu_model


def test_cpu_model_is_the_kernel_s_model_name():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.lower().startswith("model name")]  # fmt: skip
    if not names:
        pytest.skip("/proc/cpuinfo names no CPU model here")
    assert cpu_model() == names[0] != ""


def test_cpu_capability_is_torch_s():
    import torch

    assert cpu_capability() == str(torch.backends.cpu.get_cpu_capability()) != ""
