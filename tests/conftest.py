"""Shared fixtures: where the real data lives (or a clear skip), and small real subsets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from brainmri import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """BRAINMRI_SHARED_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("BRAINMRI_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _need(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.skip(
            f"{what} not found at {path}: put ../shared/data beside the checkout "
            "or set BRAINMRI_SHARED_DATA"
        )
    return path


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """The official split, cropped to 224 (brain-tumor-mri/)."""
    return _need(shared_data_root() / "brain-tumor-mri", "benchmark data brain-tumor-mri/")


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    """Raw originals (brain-tumor-mri-raw/, Training only)."""
    return _need(shared_data_root() / "brain-tumor-mri-raw", "raw data brain-tumor-mri-raw/")


@pytest.fixture(scope="session")
def external_dir() -> Path:
    """The independent collection (external-dev/: glioma, meningioma, notumor), measurement only."""
    return _need(shared_data_root() / "external-dev", "independent collection external-dev/")


def copy_subset(src: Path, dst: Path, per_class: int, splits=("Training", "Testing")) -> Path:
    """Copy the first `per_class` images of each class of each split into a temp dataset."""
    for split in splits:
        for cls in CLASS_NAMES:
            folder = src / split / cls
            if not folder.is_dir():
                continue
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(folder.iterdir())[:per_class]:
                shutil.copy2(f, out / f.name)
    return dst


@pytest.fixture(scope="session")
def small_benchmark(benchmark_dir: Path, tmp_path_factory) -> Path:
    """A small real copy of brain-tumor-mri/: 12 images per class per split."""
    return copy_subset(benchmark_dir, tmp_path_factory.mktemp("bench_small"), 12)


def synthetic_brain(size: int = 256, radius: float = 0.3, seed: int = 0, offset=(0, 0)):
    """A bright textured disc ("brain") in a dark frame, as a uint8 grayscale array."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = size / 2 + offset[0], size / 2 + offset[1]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (radius * size) ** 2
    img = rng.integers(0, 12, (size, size))
    img[disc] = 120 + rng.integers(0, 100, disc.sum())
    return img.astype(np.uint8)


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    """A tiny Kaggle-layout dataset of synthetic discs (3 per class per split)."""
    for split in ("Training", "Testing"):
        for ci, cls in enumerate(CLASS_NAMES):
            out = tmp_path / "synth" / split / cls
            out.mkdir(parents=True)
            for k in range(3):
                arr = synthetic_brain(
                    128, 0.2 + 0.05 * ci, seed=ci * 100 + k + (split == "Testing") * 50
                )
                Image.fromarray(arr).save(out / f"{cls}_{k}.jpg", quality=95)
    return tmp_path / "synth"


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """One ONNX export cache per test session (the export of the shipped model is made once)."""
    root = tmp_path_factory.getbasetemp() / "onnx-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINMRI_CACHE", str(root))
        yield root


def assert_runs_without_torch(code: str) -> None:
    """Run `code` in a fresh Python process on the shipped model's ONNX export and check that
    PyTorch stayed out of `sys.modules` (the code itself asserts what it classified). Skipped
    where a GPU stack may be present: there `auto` asks PyTorch which runtime to use."""
    import subprocess
    import sys

    from brainmri.infer.core import gpu_stack_present
    from brainmri.infer.export import cached_export
    from brainmri.model.shipped import shipped_model_path

    if gpu_stack_present():
        pytest.skip("this machine may have a GPU: auto asks PyTorch which runtime to use")
    cached_export(shipped_model_path())  # exporting needs PyTorch: done here, beforehand
    code += "\nimport sys\nprint('torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
