"""Decode images once into an in-memory uint8 tensor (N, 1, S, S): the training/eval cache.

Decoding JPEGs is the slow part of a CPU epoch; doing it once and keeping grayscale uint8
(a twelfth of float32 RGB) lets every epoch index batches straight from memory.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainmri.data.folders import Sample
from brainmri.data.images import load_gray, resize_square
from brainmri.errors import BrainMRIError


def _decode(args: tuple[str, int]) -> np.ndarray | str:
    path, size = args
    try:
        return resize_square(load_gray(path), size)
    except BrainMRIError as exc:
        return str(exc)


def decode_images(
    paths: list[Path], size: int, workers: int | None = None, desc: str = "decode"
) -> torch.Tensor:
    """Decode, gray, resize to size×size; a file that fails to decode is a user error."""
    if not paths:
        return torch.empty((0, 1, size, size), dtype=torch.uint8)
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(str(p), size) for p in paths]
    out = np.empty((len(paths), 1, size, size), dtype=np.uint8)
    progress = tqdm(total=len(jobs), desc=desc, unit="img", leave=False, mininterval=1.0,
                    disable=None)  # fmt: skip
    if workers <= 1 or len(jobs) < 64:
        results = map(_decode, jobs)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_decode, jobs, chunksize=32)
    try:
        for i, res in enumerate(results):
            if isinstance(res, str):
                raise BrainMRIError(f"{res} (run `brainmri clean` to quarantine bad files)")
            out[i, 0] = res
            progress.update(1)
    finally:
        progress.close()
        if workers > 1 and len(jobs) >= 64:
            pool.shutdown(cancel_futures=True)
    return torch.from_numpy(out)


def cache_samples(
    samples: list[Sample], size: int, desc: str = "decode"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N,1,S,S), labels int64 (N,)) for a sample list."""
    images = decode_images([s.path for s in samples], size, desc=desc)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return images, labels
