"""Scan a Kaggle-layout dataset folder, resolve the data path, and split Training stratified."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainmri import CLASS_NAMES
from brainmri.errors import BrainMRIError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
SPLITS = ("Training", "Testing")
ENV_DATA = "BRAINMRI_DATA"
# Relative to the current directory: the layout of a checkout with ../shared beside it.
DEFAULT_DATA_CANDIDATES = (
    Path("../shared/data/brain-tumor-mri"),
    Path("shared/data/brain-tumor-mri"),
)
DATASET_HINT = (
    "get the public Kaggle 'Brain Tumor MRI Dataset' (masoudnickparvar/brain-tumor-mri-dataset), "
    f"unpack it so that it holds Training/ and Testing/, and pass --data DIR or set {ENV_DATA}"
)


@dataclass(frozen=True)
class Sample:
    """One image: its path, its class index (into CLASS_NAMES) and its split."""

    path: Path
    label: int
    split: str

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def resolve_data_dir(data: str | Path | None = None) -> Path:
    """`--data`, then env BRAINMRI_DATA, then ../shared/data/brain-tumor-mri if present."""
    if data is not None:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise BrainMRIError(f"data folder not found: {path} ({DATASET_HINT})")
        return path
    env = os.environ.get(ENV_DATA)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise BrainMRIError(f"{ENV_DATA}={env} is not a folder ({DATASET_HINT})")
        return path
    here = Path(__file__).resolve()
    candidates = list(DEFAULT_DATA_CANDIDATES) + [
        parent / "shared" / "data" / "brain-tumor-mri" for parent in here.parents
    ]
    for cand in candidates:
        if cand.is_dir():
            return cand
    raise BrainMRIError(f"no dataset found: {DATASET_HINT}")


def find_split_dir(root: Path, split: str) -> Path | None:
    """The split folder under root, matched case-insensitively (Training, training, ...)."""
    if not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() == split.lower():
            return child
    return None


def class_dirs(split_dir: Path) -> dict[int, Path]:
    """Class index -> folder, matching folder names case-insensitively; unknown folders fail."""
    found: dict[int, Path] = {}
    for child in sorted(split_dir.iterdir()):
        if not child.is_dir():
            continue
        name = child.name.lower()
        if name not in CLASS_NAMES:
            raise BrainMRIError(
                f"unexpected class folder {child} (expected one of {', '.join(CLASS_NAMES)})"
            )
        found[CLASS_NAMES.index(name)] = child
    return found


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def scan_split(root: Path, split: str, all_files: bool = False) -> list[Sample]:
    """Every image of one split, sorted by class then file name.

    With all_files=True every regular file is listed whatever its extension (clean validates
    them and quarantines what is not an image).
    """
    split_dir = find_split_dir(root, split)
    if split_dir is None:
        return []
    return samples_in(class_dirs(split_dir), split, all_files)


def samples_in(folders: dict[int, Path], split: str, all_files: bool = False) -> list[Sample]:
    """The images of class folders (class_dirs' result), sorted by class then file name, as
    samples of `split`; all_files as scan_split takes it."""
    samples: list[Sample] = []
    for label, folder in sorted(folders.items()):
        for f in sorted(folder.iterdir()):
            if (all_files and f.is_file() and not f.name.startswith(".")) or is_image_file(f):
                samples.append(Sample(f, label, split))
    return samples


def scan_dataset(root: str | Path, all_files: bool = False) -> dict[str, list[Sample]]:
    """Both splits of a Kaggle-layout folder; at least one split must hold images."""
    root = Path(root)
    if not root.is_dir():
        raise BrainMRIError(f"data folder not found: {root} ({DATASET_HINT})")
    out = {split: scan_split(root, split, all_files) for split in SPLITS}
    if not any(out.values()):
        raise BrainMRIError(
            f"{root} holds no Training/<class>/ or Testing/<class>/ images ({DATASET_HINT})"
        )
    return out


def class_counts(samples: list[Sample]) -> list[int]:
    counts = Counter(s.label for s in samples)
    return [counts.get(i, 0) for i in range(len(CLASS_NAMES))]


def stratified_split(
    samples: list[Sample], val_fraction: float = 0.15, seed: int = 42
) -> tuple[list[Sample], list[Sample]]:
    """Seeded stratified split: round(val_fraction * n_class) images of each class go to val.

    Depends only on the sorted file list and the seed, so the same command gives the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BrainMRIError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    ordered = sorted(samples, key=lambda s: (s.label, str(s.path)))
    train: list[Sample] = []
    val: list[Sample] = []
    for label in range(len(CLASS_NAMES)):
        group = [s for s in ordered if s.label == label]
        n_val = int(round(val_fraction * len(group)))
        perm = rng.permutation(len(group))
        val_idx = set(perm[:n_val].tolist())
        for i, s in enumerate(group):
            (val if i in val_idx else train).append(s)
    return train, val


def write_file_list(path: Path, samples: list[Sample], root: Path) -> None:
    """Write `relative/path<TAB>class` lines, relative to root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s.path.relative_to(root).as_posix()}\t{s.class_name}" for s in samples]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def read_file_list(path: Path, root: Path, split: str = "Training") -> list[Sample]:
    """Read a list written by write_file_list (a bare path per line is accepted too)."""
    if not path.is_file():
        raise BrainMRIError(f"file list not found: {path}")
    out: list[Sample] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rel, _, cls = line.partition("\t")
        p = root / rel
        name = cls.strip() or p.parent.name.lower()
        if name not in CLASS_NAMES:
            raise BrainMRIError(f"{path}: unknown class {name!r} for {rel}")
        out.append(Sample(p, CLASS_NAMES.index(name), split))
    return out
